"""Progress display for long jobs: a rich bar on a terminal, plain periodic lines in logs."""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def recent_loss(values: list[float], window: int = 50) -> float:
    """Mean of the last `window` values: the figure the progress bar, exports and reports show."""
    recent = values[-window:]
    return sum(recent) / max(1, len(recent))


@contextlib.contextmanager
def loss_progress(description: str, total: int, completed: int = 0, log_every: int = 50, metric: str = "loss"):
    """A rich progress bar with the running mean of `metric` (the loss); yields `advance(step, values)`.

    Where stderr is not a terminal (logs, CI), a plain line is printed every `log_every` steps instead.
    """
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn(metric + " {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task(description, total=total, completed=completed, loss=float("nan"))

        def advance(step: int, losses: list[float]) -> None:
            loss = recent_loss(losses, log_every)
            progress.update(task, completed=step, loss=loss)
            if not console.is_terminal and step % log_every == 0:
                console.print(f"{description} step {step}/{total} {metric} {loss:.4f}", highlight=False)

        yield advance
