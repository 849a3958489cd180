"""Human-readable cluster status (Rich tables)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from dispy.nodes import DispyNode


def status_table(name: str, nodes: Sequence[DispyNode], wall_time: float) -> Table:
    table = Table(title=f"dispy cluster {name!r}", title_justify="left")
    table.add_column("Node")
    table.add_column("CPUs", justify="right")
    table.add_column("Jobs", justify="right")
    table.add_column("Sec/Job", justify="right")
    table.add_column("Node Time Sec", justify="right")
    total_jobs = 0
    total_time = 0.0
    for node in sorted(nodes, key=lambda n: (n.ip_addr, n.port)):
        per_job = node.cpu_time / node.jobs_done if node.jobs_done else 0.0
        table.add_row(
            f"{node.ip_addr}:{node.port} ({node.name})",
            str(node.cpus),
            str(node.jobs_done),
            f"{per_job:.3f}",
            f"{node.cpu_time:.3f}",
        )
        total_jobs += node.jobs_done
        total_time += node.cpu_time
    table.caption = (
        f"{total_jobs} job(s), {total_time:.3f} s of job time in {wall_time:.3f} s wall time"
        + (f" (speedup {total_time / wall_time:.2f})" if wall_time > 0 else "")
    )
    return table


def print_status(
    name: str, nodes: Sequence[DispyNode], wall_time: float, console: Console | None = None
) -> None:
    (console or Console()).print(status_table(name, nodes, wall_time))
