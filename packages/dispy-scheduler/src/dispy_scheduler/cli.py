"""The `dispy-scheduler` command line.

The options mirror the reference `dispyscheduler.py` (both the documented
underscore spellings such as `--ip_addr` and dash spellings such as `--ip-addr`
are accepted). `serve` validates its options (a bad one: one line, exit status 2) and
runs the service (:mod:`dispy_scheduler.service`) until SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from dispy_core.config import CLIENT_PORT, NODE_PORT, SCHEDULER_PORT, parse_size
from dispy_core.secret import SECRET_ENV, Secret, SecretError, resolve_secret
from dispy_core.security import TLSConfig, TLSConfigError
from dispy_scheduler import __version__
from dispy_scheduler._state import default_root

if TYPE_CHECKING:
    from dispy_scheduler.service import Settings

PROG = "dispy-scheduler"


def _dashes(name: str) -> str:
    """Spell option names with dashes, so the reference's `--ip_addr` means `--ip-addr`."""
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
class ServeOptions:
    """Everything `serve` was asked to do, as parsed from the command line.

    A stand-in for the service's settings model: `serve` only builds it and
    forwards it to `_run`, so tests can patch `_run` and inspect it.
    """

    debug: bool
    nodes: tuple[str, ...]
    ip_addrs: tuple[str, ...]
    ext_ip_addrs: tuple[str, ...]
    port: int
    scheduler_port: int
    node_port: int
    node_secret: str
    cluster_secret: str
    secret_warnings: tuple[str, ...]
    node_keyfile: Path | None
    node_certfile: Path | None
    cluster_keyfile: Path | None
    cluster_certfile: Path | None
    httpd: bool
    pulse_interval: float | None
    ping_interval: float | None
    max_file_size: str
    clean: bool
    dest_path_prefix: Path | None
    msg_timeout: float


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
    """Share dispy nodes among many clients (SharedJobCluster)."""


@app.command()
def serve(
    *,
    debug: Annotated[bool, typer.Option("--debug", "-d", help="Log a trace of execution.")] = False,
    daemon: Annotated[
        bool,
        typer.Option(
            "--daemon", help="Accepted as dispy 4.15 had it: the scheduler never reads its input."
        ),
    ] = False,
    nodes: Annotated[
        list[str] | None,
        typer.Option(
            "--nodes",
            "-n",
            "--node",
            help="Node to contact at start-up (repeatable).",
            show_default=False,
        ),
    ] = None,
    ip_addrs: Annotated[
        list[str] | None,
        typer.Option(
            "--ip-addr",
            "-i",
            "--host",
            help="Local address to use instead of the host name's (repeatable).",
            show_default=False,
        ),
    ] = None,
    ext_ip_addrs: Annotated[
        list[str] | None,
        typer.Option(
            "--ext-ip-addr",
            "--ext-host",
            help="Address to announce when behind NAT (repeatable, pairs with --ip-addr).",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int,
        typer.Option("--port", "-p", min=0, max=65535, help="UDP/TCP port for job results."),
    ] = CLIENT_PORT,
    scheduler_port: Annotated[
        int,
        typer.Option(
            "--scheduler-port",
            min=0,
            max=65535,
            help="Port on which clients reach the scheduler.",
        ),
    ] = SCHEDULER_PORT,
    node_port: Annotated[
        int,
        typer.Option(
            "--node-port",
            min=0,
            max=65535,
            help="Port on which dispy-node servers listen.",
        ),
    ] = NODE_PORT,
    node_secret: Annotated[
        str,
        typer.Option(
            "--node-secret",
            help="Secret shared with the nodes (else --node-secret-file, --secret-file, "
            "DISPY_NODE_SECRET, DISPY_SECRET).",
            show_default=False,
        ),
    ] = "",
    cluster_secret: Annotated[
        str,
        typer.Option(
            "--cluster-secret",
            help="Secret shared with SharedJobCluster clients (else --cluster-secret-file, "
            "--secret-file, DISPY_CLUSTER_SECRET, DISPY_SECRET).",
            show_default=False,
        ),
    ] = "",
    secret_file: Annotated[
        str | None,
        typer.Option(
            "--secret-file",
            help="File holding the secret for both nodes and clients (one trailing newline "
            "is ignored).",
        ),
    ] = None,
    node_secret_file: Annotated[
        str | None,
        typer.Option("--node-secret-file", help="File holding the nodes' secret."),
    ] = None,
    cluster_secret_file: Annotated[
        str | None,
        typer.Option("--cluster-secret-file", help="File holding the clients' secret."),
    ] = None,
    node_keyfile: Annotated[
        Path | None,
        typer.Option(
            "--node-keyfile",
            help="TLS private key for nodes.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    node_certfile: Annotated[
        Path | None,
        typer.Option(
            "--node-certfile",
            help="TLS certificate for nodes.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    cluster_keyfile: Annotated[
        Path | None,
        typer.Option(
            "--cluster-keyfile",
            help="TLS private key for clients.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    cluster_certfile: Annotated[
        Path | None,
        typer.Option(
            "--cluster-certfile",
            help="TLS certificate for clients.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    httpd: Annotated[
        bool, typer.Option("--httpd", help="Serve the web monitor for all clusters.")
    ] = False,
    pulse_interval: Annotated[
        float | None,
        typer.Option(
            "--pulse-interval",
            min=1,
            max=600,
            help="Seconds between node pulses; a node silent for 5x this is dead.",
        ),
    ] = None,
    ping_interval: Annotated[
        float | None,
        typer.Option(
            "--ping-interval",
            min=0,
            help="Seconds between repeated discovery pings.",
        ),
    ] = None,
    max_file_size: Annotated[
        str,
        typer.Option(
            "--max-file-size",
            help="Largest file accepted from clients, e.g. 10m; suffix k/m/g/t; 0 = no limit.",
        ),
    ] = "0",
    clean: Annotated[
        bool, typer.Option("--clean", help="Remove files saved by previous runs first.")
    ] = False,
    msg_timeout: Annotated[
        float,
        typer.Option(
            "--msg-timeout",
            min=0,
            help="Timeout in seconds for socket I/O with clients and nodes.",
        ),
    ] = 5.0,
    dest_path_prefix: Annotated[
        Path | None,
        typer.Option(
            "--dest-path-prefix",
            help="Directory for the files clients send and the results kept for them "
            "[default: <tmp>/dispy-<user>/scheduler].",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the shared scheduler until interrupted.

    Options also accept the reference's underscore spellings, e.g. --ip_addr.
    """
    try:
        node = _secret("node", node_secret, node_secret_file, secret_file)
        cluster = _secret("cluster", cluster_secret, cluster_secret_file, secret_file)
    except SecretError as exc:
        typer.echo(f"{PROG} serve: {exc}", err=True)
        raise typer.Exit(code=2) from None
    _run(
        ServeOptions(
            debug=debug,
            nodes=tuple(nodes or ()),
            ip_addrs=tuple(ip_addrs or ()),
            ext_ip_addrs=tuple(ext_ip_addrs or ()),
            port=port,
            scheduler_port=scheduler_port,
            node_port=node_port,
            node_secret=node.value,
            cluster_secret=cluster.value,
            secret_warnings=tuple(dict.fromkeys(node.warnings + cluster.warnings)),
            node_keyfile=node_keyfile,
            node_certfile=node_certfile,
            cluster_keyfile=cluster_keyfile,
            cluster_certfile=cluster_certfile,
            httpd=httpd,
            pulse_interval=pulse_interval,
            ping_interval=ping_interval,
            max_file_size=max_file_size,
            clean=clean,
            dest_path_prefix=dest_path_prefix,
            msg_timeout=msg_timeout,
        )
    )


def _secret(peer: str, option: str, own_file: str | None, shared_file: str | None) -> Secret:
    """The secret for ``peer`` ("node" or "cluster"): its own option or file, else the
    shared --secret-file, else DISPY_<PEER>_SECRET, else DISPY_SECRET."""
    own = own_file is not None or bool(option)
    return resolve_secret(
        option,
        own_file if own else shared_file,
        env_vars=(f"DISPY_{peer.upper()}_SECRET", SECRET_ENV),
        option_name=f"--{peer}-secret",
        file_option=f"--{peer}-secret-file" if own else "--secret-file",
    )


def no_secret_warning(options: ServeOptions) -> str | None:
    """The one warning for a scheduler started without a node or a cluster secret."""
    hosts = ", ".join(options.ip_addrs) or "any address of this host"
    exposures = []
    if not options.cluster_secret:
        exposures.append(
            f"reach {hosts} port {options.scheduler_port} can submit computations, which run "
            "any code as the nodes' users on every node it uses"
        )
    if not options.node_secret:
        exposures.append(
            f"reach {hosts} port {options.port} can pose as a node: receive the clients' "
            "computations and arguments and send back forged results"
        )
    if not exposures:
        return None
    missing = " or ".join(
        name
        for name, value in (("cluster", options.cluster_secret), ("node", options.node_secret))
        if not value
    )
    return (
        f"{PROG} has no {missing} secret: anyone who can {'; anyone who can '.join(exposures)}. "
        f"Set the secrets with {SECRET_ENV} (or DISPY_CLUSTER_SECRET / DISPY_NODE_SECRET), "
        "--secret-file PATH, or --cluster-secret / --node-secret."
    )


def _run(options: ServeOptions) -> None:
    """Check what the parser cannot, warn, then serve until SIGINT or SIGTERM."""
    from dispy_scheduler.service import Settings

    try:
        max_file_size = parse_size(options.max_file_size)
        node_tls = _tls("node", options.node_certfile, options.node_keyfile)
        cluster_tls = _tls("cluster", options.cluster_certfile, options.cluster_keyfile)
    except (ValueError, TLSConfigError) as exc:
        typer.echo(f"{PROG} serve: {exc}", err=True)
        raise typer.Exit(code=2) from None
    for warning in options.secret_warnings:
        typer.echo(f"{PROG}: warning: {warning}", err=True)
    exposure = no_secret_warning(options)
    if exposure:
        typer.echo(f"{PROG}: warning: {exposure}", err=True)
    settings = Settings(
        nodes=options.nodes,
        ip_addrs=options.ip_addrs,
        ext_ip_addrs=options.ext_ip_addrs,
        port=options.port,
        scheduler_port=options.scheduler_port,
        node_port=options.node_port,
        node_secret=options.node_secret,
        cluster_secret=options.cluster_secret,
        node_tls=node_tls,
        cluster_tls=cluster_tls,
        httpd=options.httpd,
        pulse_interval=options.pulse_interval,
        ping_interval=options.ping_interval,
        max_file_size=max_file_size,
        clean=options.clean,
        msg_timeout=options.msg_timeout,
        store_root=(options.dest_path_prefix or default_root()).absolute(),
    )
    _setup_logging(options.debug)
    _serve(settings)


def _tls(peer: str, certfile: Path | None, keyfile: Path | None) -> TLSConfig:
    if certfile is None and keyfile is not None:
        raise TLSConfigError(f"--{peer}_keyfile given without --{peer}_certfile")
    return TLSConfig(str(certfile) if certfile else None, str(keyfile) if keyfile else None)


def _setup_logging(debug: bool) -> None:
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=True)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("dispy_scheduler", "dispy_core"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.DEBUG if debug else logging.INFO)
        logger.propagate = False


def _serve(settings: Settings) -> None:
    from dispy_scheduler.service import run

    try:
        asyncio.run(run(settings))
    except OSError as exc:
        # A port taken, an address not of this host: one line, status 2.
        typer.echo(f"{PROG} serve: cannot listen: {exc}", err=True)
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt:
        pass


def main() -> None:
    """Console-script entry point (`dispy-scheduler`)."""
    app(prog_name=PROG)
