"""One rich progress bar over a count (windows, images), or nothing when disabled: for drivers of long jobs."""

from __future__ import annotations


class CountBar:
    """``with CountBar(on, total, "embedding windows") as bar: bar.advance(n)``; ``fields`` add counters shown beside
    the bar (e.g. ``failed=0``), updated through ``advance(n, failed=…)``."""

    def __init__(self, enabled: bool, total: int, description: str, **fields: int):
        self.bar = self.task = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            extra = [TextColumn(f"{{task.fields[{k}]}} {k}") for k in fields]
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *extra, TimeElapsedColumn()
            )
            self.task = self.bar.add_task(description, total=total, **fields)

    def __enter__(self) -> CountBar:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False

    def advance(self, n: int, **fields: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=n, **fields)
