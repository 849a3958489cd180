"""The `dispy-relay` command line.

The options mirror the reference `dispynetrelay.py` (both the documented
underscore spellings such as `--node_port` and dash spellings such as
`--node-port` are accepted). The relay itself is not implemented yet: `run`
validates its options and then exits with status 2 and a one-line message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, NoReturn

import typer

from dispy_core.config import NODE_PORT, SCHEDULER_PORT
from dispy_core.secret import SecretError, resolve_secret
from dispy_core.secret import no_secret_warning as secret_warning
from dispy_relay import __version__

PROG = "dispy-relay"


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
    node_port: Annotated[
        int,
        typer.Option(
            "--node-port",
            min=0,
            max=65535,
            help="Port on which the dispy-node servers of this network listen.",
        ),
    ] = NODE_PORT,
    listen_port: Annotated[
        int | None,
        typer.Option(
            "--listen-port",
            min=0,
            max=65535,
            help="Port to listen on for clients; defaults to --node-port.",
            show_default=False,
        ),
    ] = None,
    scheduler_nodes: Annotated[
        list[str] | None,
        typer.Option(
            "--scheduler-node",
            help="Already-running scheduler to announce this network to (repeatable).",
            show_default=False,
        ),
    ] = None,
    scheduler_port: Annotated[
        int,
        typer.Option(
            "--scheduler-port",
            min=0,
            max=65535,
            help="Port of the scheduler given with --scheduler-node.",
        ),
    ] = SCHEDULER_PORT,
    secret: Annotated[
        str,
        typer.Option(
            "--secret",
            "-s",
            help="Secret shared with nodes and schedulers (visible in ps: prefer "
            "DISPY_SECRET or --secret-file).",
            show_default=False,
        ),
    ] = "",
    secret_file: Annotated[
        str | None,
        typer.Option(
            "--secret-file", help="File holding the secret (one trailing newline is ignored)."
        ),
    ] = None,
) -> None:
    """Relay discovery messages until interrupted.

    Options also accept the reference's underscore spellings, e.g. --node_port. The secret
    comes from --secret, else --secret-file, else the DISPY_SECRET environment variable.
    """
    try:
        resolved = resolve_secret(secret, secret_file)
    except SecretError as exc:
        typer.echo(f"{PROG} run: {exc}", err=True)
        raise typer.Exit(code=2) from None
    _run(
        RunOptions(
            debug=debug,
            node_port=node_port,
            listen_port=node_port if listen_port is None else listen_port,
            scheduler_nodes=tuple(scheduler_nodes or ()),
            scheduler_port=scheduler_port,
            secret=resolved.value,
            secret_warnings=tuple(resolved.warnings),
        )
    )


def no_secret_warning(options: RunOptions) -> str | None:
    """The one warning for a relay started without a secret."""
    if options.secret:
        return None
    return secret_warning(
        PROG,
        f"any address of this host port {options.listen_port} (UDP)",
        "have the relay pass their discovery messages to the nodes of this network "
        f"(port {options.node_port}) and to schedulers",
    )


def _run(options: RunOptions) -> NoReturn:
    # The relay will start here: warn first, as every role does.
    for warning in options.secret_warnings:
        typer.echo(f"{PROG}: warning: {warning}", err=True)
    exposure = no_secret_warning(options)
    if exposure:
        typer.echo(f"{PROG}: warning: {exposure}", err=True)
    typer.echo(f"{PROG} run: not implemented yet (the relay lands in a later release)", err=True)
    raise typer.Exit(code=2)


def main() -> None:
    """Console-script entry point (`dispy-relay`)."""
    app(prog_name=PROG)
