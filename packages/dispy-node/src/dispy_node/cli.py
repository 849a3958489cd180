"""``dispy-node``: run a compute node."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler

from dispy_core.config import CLIENT_PORT, MAX_FILE_SIZE, MSG_TIMEOUT, NODE_PORT, parse_size
from dispy_core.secret import resolve_secret
from dispy_core.security import TLSConfigError
from dispy_node import __version__
from dispy_node.config import NodeConfig, default_dest_path_prefix

app = typer.Typer(
    name="dispy-node",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
_err = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"dispy-node {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Show version."),
    ] = False,
) -> None:
    """Run a dispy compute node."""


def _setup_logging(debug: bool) -> None:
    handler = RichHandler(console=_err, show_path=False, rich_tracebacks=True)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("dispy_node", "dispy_core"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.DEBUG if debug else logging.INFO)
        logger.propagate = False


def _fail(message: str) -> typer.Exit:
    _err.print(f"[bold red]dispy-node:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


@app.command()
def run(
    debug: Annotated[bool, typer.Option("-d", "--debug", help="Log every message.")] = False,
    daemon: Annotated[
        bool,
        typer.Option(
            "--daemon", help="Accepted as dispy 4.15 had it: this node never reads its input."
        ),
    ] = False,
    cpus: Annotated[
        int,
        typer.Option("-c", "--cpus", help="CPUs to use: 0 = all, n > 0 = n, n < 0 = all but |n|."),
    ] = 0,
    ip_addr: Annotated[
        str | None,
        typer.Option("-i", "--ip_addr", "--ip-addr", "--host", help="Address to listen on."),
    ] = None,
    ext_ip_addr: Annotated[
        str | None,
        typer.Option(
            "--ext_ip_addr", "--ext-ip-addr", "--ext_host", help="Address to announce (NAT)."
        ),
    ] = None,
    node_port: Annotated[
        int, typer.Option("-p", "--node_port", "--node-port", help="TCP and UDP port.")
    ] = NODE_PORT,
    name: Annotated[str | None, typer.Option("--name", help="Name of this node.")] = None,
    secret: Annotated[
        str,
        typer.Option(
            "-s",
            "--secret",
            help="Shared secret of clients (visible in ps: prefer DISPY_SECRET or --secret-file).",
            show_default=False,
        ),
    ] = "",
    secret_file: Annotated[
        str | None,
        typer.Option(
            "--secret-file",
            "--secret_file",
            help="File holding the shared secret (one trailing newline is ignored).",
        ),
    ] = None,
    dest_path_prefix: Annotated[
        str,
        typer.Option(
            "--dest_path_prefix", "--dest-path-prefix", help="Directory for clients' files."
        ),
    ] = default_dest_path_prefix(),
    keyfile: Annotated[str | None, typer.Option("--keyfile", help="TLS private key (PEM).")] = None,
    certfile: Annotated[
        str | None, typer.Option("--certfile", help="TLS certificate (PEM), may hold the key.")
    ] = None,
    clean: Annotated[
        bool, typer.Option("--clean", help="Remove files saved by earlier runs first.")
    ] = False,
    msg_timeout: Annotated[
        float, typer.Option("--msg_timeout", "--msg-timeout", help="Network timeout, seconds.")
    ] = MSG_TIMEOUT,
    max_file_size: Annotated[
        str,
        typer.Option(
            "--max_file_size",
            "--max-file-size",
            help="Largest file to transfer (k/m/g/t; 0 = any).",
        ),
    ] = str(MAX_FILE_SIZE),
    max_job_output: Annotated[
        str,
        typer.Option(
            "--max_job_output",
            "--max-job-output",
            help="Output kept per stream of a job, its tail (k/m/g/t; 0 = all).",
        ),
    ] = "64m",
    max_stored_results: Annotated[
        str,
        typer.Option(
            "--max_stored_results",
            "--max-stored-results",
            help="Disk for undelivered results; oldest removed first (k/m/g/t; 0 = any).",
        ),
    ] = "1g",
    stored_results_age: Annotated[
        float,
        typer.Option(
            "--stored_results_age",
            "--stored-results-age",
            help="Hours an undelivered result is kept (0 = forever).",
        ),
    ] = 168.0,
    zombie_interval: Annotated[
        float,
        typer.Option(
            "--zombie_interval",
            "--zombie-interval",
            help="Minutes before a silent client is dropped.",
        ),
    ] = 60.0,
    scheduler_node: Annotated[
        str | None,
        typer.Option(
            "--scheduler_node",
            "--scheduler-node",
            "--scheduler_host",
            help="Client or scheduler to announce this node to while it is free (through NAT).",
        ),
    ] = None,
    scheduler_port: Annotated[
        int,
        typer.Option(
            "--scheduler_port",
            "--scheduler-port",
            help="Its port: a JobCluster's port, or dispy-scheduler serve's --port.",
        ),
    ] = CLIENT_PORT,
    relay: Annotated[
        list[str] | None,
        typer.Option(
            "--relay",
            help="Address whose pings may name another reply address (a dispy-relay, or a "
            "NAT gateway); repeat for several. Other pings are answered only at their "
            "source address (or a loopback one).",
        ),
    ] = None,
) -> None:
    """Serve jobs to dispy clients until interrupted (SIGINT or SIGTERM).

    The secret comes from -s/--secret, else --secret-file, else the DISPY_SECRET
    environment variable; with none, the node serves anyone (and says so).
    """
    try:
        resolved = resolve_secret(secret, secret_file)
        size = parse_size(max_file_size)
        values = {
            "cpus": cpus,
            "ip_addr": ip_addr,
            "ext_ip_addr": ext_ip_addr,
            "node_port": node_port,
            "secret": resolved.value,
            "dest_path_prefix": dest_path_prefix,
            "keyfile": keyfile,
            "certfile": certfile,
            "clean": clean,
            "msg_timeout": msg_timeout,
            "max_file_size": size,
            "max_job_output": parse_size(max_job_output),
            "max_stored_results": parse_size(max_stored_results),
            "stored_results_age": stored_results_age * 3600.0,
            "zombie_interval": zombie_interval * 60.0,
            "scheduler_node": scheduler_node,
            "scheduler_port": scheduler_port,
            "relays": tuple(relay or ()),
        }
        if name:
            values["name"] = name
        config = NodeConfig.model_validate(values)
    except ValueError as exc:
        if isinstance(exc, ValidationError):
            err = exc.errors()[0]
            raise _fail(f"invalid --{err['loc'][0]}: {err['msg']}") from None
        raise _fail(str(exc)) from None
    _setup_logging(debug)
    for warning in resolved.warnings:
        logging.getLogger("dispy_node").warning(warning)
    _run(config)


def _run(config: NodeConfig) -> None:
    from dispy_node.node import Node, NodeStartError

    async def main() -> None:
        node = Node(config)
        await node.serve()

    try:
        asyncio.run(main())
    except ValueError as exc:  # --cpus out of range
        raise _fail(str(exc)) from None
    except TLSConfigError as exc:
        raise _fail(str(exc)) from None
    except NodeStartError as exc:
        raise _fail(str(exc)) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
    sys.exit(0)
