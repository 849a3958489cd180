"""The `dispy-relay` command line.

The options mirror the reference `dispynetrelay.py` (both the documented
underscore spellings such as `--node_port` and dash spellings such as
`--node-port` are accepted). The command is thin: it checks the options, sets up Rich
logging on standard error and runs :class:`dispy_relay.relay.Relay` until SIGINT or SIGTERM.
Bad options, and a relay that cannot start (address, interface, port), give one line on
standard error and exit status 2. Standard input is never read.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from dispy_core.config import NODE_PORT, SCHEDULER_PORT
from dispy_core.secret import SecretError, resolve_secret
from dispy_relay import __version__

PROG = "dispy-relay"
_err = Console(stderr=True)


def _dashes(name: str) -> str:
    """Spell option names with dashes, so the reference's `--node_port` means `--node-port`."""
    return name.replace("_", "-")


app = typer.Typer(
    name=PROG,
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={
        "help_option_names": ["-h", "--help"],
        # Applied by the parser to every option and command name given on the
        # command line (not to values); inherited by the sub-commands.
        "token_normalize_func": _dashes,
    },
)


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Everything `run` was asked to do, as parsed from the command line.

    A stand-in for the service's settings model: `run` only builds it and
    forwards it to `_run`, so tests can patch `_run` and inspect it.
    """

    debug: bool
    ip_addr: str | None
    node_port: int
    listen_port: int
    scheduler_nodes: tuple[str, ...]
    scheduler_port: int
    secret: str
    secret_warnings: tuple[str, ...]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG} {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Show version and exit."
        ),
    ] = False,
) -> None:
    """Relay dispy discovery between networks."""


@app.command()
def run(
    *,
    debug: Annotated[bool, typer.Option("--debug", "-d", help="Log a trace of execution.")] = False,
    ip_addr: Annotated[
        str | None,
        typer.Option(
            "--ip-addr",
            "-i",
            help="This host's address on the network to relay into: the relay listens there "
            "and broadcasts on that interface. Default: the default route's interface.",
            show_default=False,
        ),
    ] = None,
    node_port: Annotated[
        int,
        typer.Option(
            "--node-port",
            min=1,
            max=65535,
            help="Port on which the dispy-node servers of this network listen.",
        ),
    ] = NODE_PORT,
    listen_port: Annotated[
        int | None,
        typer.Option(
            "--listen-port",
            min=1,
            max=65535,
            help="Port to listen on for clients; defaults to --node-port.",
            show_default=False,
        ),
    ] = None,
    scheduler_nodes: Annotated[
        list[str] | None,
        typer.Option(
            "--scheduler-node",
            help="Already-running client or scheduler to announce this relay to, so that it "
            "pings this network (repeatable).",
            show_default=False,
        ),
    ] = None,
    scheduler_port: Annotated[
        int,
        typer.Option(
            "--scheduler-port",
            min=1,
            max=65535,
            help="Port of the scheduler given with --scheduler-node.",
        ),
    ] = SCHEDULER_PORT,
    secret: Annotated[
        str,
        typer.Option(
            "--secret",
            "-s",
            help="Accepted like every role's, but not used: a relay needs no secret (pings "
            "carry none; nodes authenticate whom they connect to).",
            show_default=False,
        ),
    ] = "",
    secret_file: Annotated[
        str | None,
        typer.Option(
            "--secret-file", help="File holding the secret (read, but not used; see --secret)."
        ),
    ] = None,
) -> None:
    """Relay discovery messages until interrupted.

    Pings that clients and schedulers send to this host are sent on, unchanged, as a
    broadcast on this network to --node-port; nodes here that name this host with
    `dispy-node run --relay` then connect to those clients. Options also accept the
    reference's underscore spellings, e.g. --node_port.
    """
    try:
        resolved = resolve_secret(secret, secret_file)
    except SecretError as exc:
        typer.echo(f"{PROG} run: {exc}", err=True)
        raise typer.Exit(code=2) from None
    _run(
        RunOptions(
            debug=debug,
            ip_addr=ip_addr,
            node_port=node_port,
            listen_port=node_port if listen_port is None else listen_port,
            scheduler_nodes=tuple(scheduler_nodes or ()),
            scheduler_port=scheduler_port,
            secret=resolved.value,
            secret_warnings=tuple(resolved.warnings),
        )
    )


def _setup_logging(debug: bool) -> None:
    handler = RichHandler(console=_err, show_path=False, rich_tracebacks=True)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("dispy_relay", "dispy_core"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.DEBUG if debug else logging.INFO)
        logger.propagate = False


def _run(options: RunOptions) -> None:
    # Imported here so that `--help` and option errors stay fast (no asyncio, no pydantic).
    from dispy_relay.relay import Relay, RelayConfig, RelayStartError

    _setup_logging(options.debug)
    log = logging.getLogger("dispy_relay")
    for warning in options.secret_warnings:
        log.warning(warning)
    relay = Relay(
        RelayConfig(
            ip_addr=options.ip_addr,
            node_port=options.node_port,
            listen_port=options.listen_port,
            scheduler_nodes=options.scheduler_nodes,
            scheduler_port=options.scheduler_port,
        )
    )
    try:
        asyncio.run(relay.serve())
    except RelayStartError as exc:
        typer.echo(f"{PROG} run: {exc}", err=True)
        raise typer.Exit(code=2) from None


def main() -> None:
    """Console-script entry point (`dispy-relay`)."""
    app(prog_name=PROG)
