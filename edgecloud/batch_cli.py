"""``edgecloud agent batch``: the batch routing run with a progress bar and a summary."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from edgecloud.edge_agent.app import build_service
from edgecloud.edge_agent.batch import run_batch
from edgecloud.edge_agent.settings import AgentSettings


async def run_batch_command(settings: AgentSettings, input_path: Path, output_path: Path,
                            chunk_rows: int) -> int:
    """Route the file and print where the rows were answered."""
    console = Console(stderr=True)
    service = build_service(settings)
    service.set_ready(True)
    task_name = next(iter(settings.models))
    try:
        await service.start()  # a cloud model that does not fit is refused before any row
        with Progress("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                      transient=True) as progress:
            bar = progress.add_task("routing rows", total=None)

            def update(done: int, total: int) -> None:
                progress.update(bar, completed=done, total=total)

            summary = await run_batch(service, task_name, input_path, output_path,
                                      chunk_rows=chunk_rows, progress=update)
    finally:
        await service.aclose()
    table = Table(title=f"{task_name}: {summary.rows} rows -> {output_path}")
    for column in ("edge", "cloud", "edge_fallback", "escalation rate", "accuracy"):
        table.add_column(column, justify="right")
    table.add_row(
        str(summary.edge), str(summary.cloud), str(summary.fallback),
        f"{summary.escalation_rate:.1%}",
        "-" if summary.accuracy is None else f"{summary.accuracy:.2%}",
    )
    Console().print(table)
    return 0
