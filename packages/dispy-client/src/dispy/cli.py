"""``dispy``: find nodes and recover jobs from the command line."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from dispy import __version__
from dispy_core.config import NODE_PORT
from dispy_core.secret import SecretError, no_secret_warning, resolve_secret

app = typer.Typer(
    name="dispy",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
_out = Console()
_err = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"dispy {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Show version."),
    ] = False,
) -> None:
    """Tools for users of dispy clusters."""


def _fail(command: str, message: str) -> NoReturn:
    _err.print(f"[bold red]{command}:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _warn(message: str) -> None:
    _err.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def _log_to_stderr() -> None:
    """Show the library's warnings (a missing secret, a readable recover file) on stderr."""
    log = logging.getLogger("dispy")
    if not log.handlers:
        handler = RichHandler(console=_err, show_path=False, show_time=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(min(log.getEffectiveLevel(), logging.WARNING))


def _host_port(spec: str) -> str | tuple[str, int]:
    """``host:port`` as a tuple; anything else (a host, a pattern) as it is."""
    host, sep, port = spec.rpartition(":")
    if sep and host and port.isdigit() and ":" not in host:
        return (host, int(port))
    return spec


@app.command()
def nodes(
    hosts: Annotated[
        list[str] | None,
        typer.Argument(help="Node addresses (host or host:port) or patterns (default '*')."),
    ] = None,
    ip_addr: Annotated[
        str, typer.Option("-i", "--ip_addr", "--ip-addr", help="This host's address to use.")
    ] = "127.0.0.1",
    node_port: Annotated[int, typer.Option("--node_port", "--node-port")] = NODE_PORT,
    secret: Annotated[
        str,
        typer.Option(
            "-s", "--secret", help="The nodes' secret (else --secret-file, else DISPY_SECRET)."
        ),
    ] = "",
    secret_file: Annotated[
        str | None,
        typer.Option("--secret-file", "--secret_file", help="File holding the nodes' secret."),
    ] = None,
    certfile: Annotated[str | None, typer.Option("--certfile")] = None,
    keyfile: Annotated[str | None, typer.Option("--keyfile")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1)] = 2.0,
) -> None:
    """List the nodes that answer (they are left free)."""
    from dispy.discovery import discover

    try:
        resolved = resolve_secret(secret, secret_file)
    except SecretError as exc:
        _fail("dispy nodes", str(exc))
    for warning in resolved.warnings:
        _warn(warning)
    if resolved.missing:
        _warn(
            no_secret_warning(
                "dispy nodes",
                f"{ip_addr} (on a port chosen for this run)",
                "answer as a node; only nodes without a secret answer",
            )
        )
    found = asyncio.run(
        discover(
            [_host_port(h) for h in hosts or ["*"]],
            ip_addr=ip_addr,
            node_port=node_port,
            secret=resolved.value,
            certfile=certfile,
            keyfile=keyfile,
            timeout=timeout,
        )
    )
    table = Table(title=f"dispy nodes answering on port {node_port}", title_justify="left")
    for col in ("Node", "Name", "CPUs", "Version", "Platform / problem"):
        table.add_column(col)
    for node in found:
        table.add_row(
            f"{node.ip_addr}:{node.port}" if node.port else node.ip_addr,
            node.name,
            str(node.cpus) if node.cpus else "",
            node.version,
            node.error or node.platform,
        )
    _out.print(table if found else "no node answered")
    if not found:
        raise typer.Exit(1)


@app.command()
def recover(
    recover_file: Annotated[str, typer.Argument(help="The cluster's recover file.")],
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Seconds to wait for running jobs.")
    ] = None,
    terminate_pending: Annotated[
        bool, typer.Option("--terminate-pending", "--terminate_pending")
    ] = False,
) -> None:
    """Collect the jobs of a client that stopped (see dispy.recover_jobs)."""
    from dispy import DispyJob, recover_jobs

    _log_to_stderr()
    try:
        jobs = recover_jobs(recover_file, timeout=timeout, terminate_pending=terminate_pending)
    except (FileNotFoundError, ValueError) as exc:
        _fail("dispy recover", str(exc))
    names = {v: k for k, v in vars(DispyJob).items() if isinstance(v, int) and k[0].isupper()}
    table = Table(title=f"{len(jobs)} job(s) from {recover_file}", title_justify="left")
    for col in ("id", "status", "node", "result / exception"):
        table.add_column(col)
    for job in jobs:
        if job.exception is None:
            detail = repr(job.result)
        else:
            detail = job.exception.strip().splitlines()[-1]
        status = names.get(job.status, str(job.status))
        table.add_row(str(job.id), status, job.ip_addr or "", detail)
    _out.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
    sys.exit(0)
