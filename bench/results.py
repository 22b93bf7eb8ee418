"""Benchmark result rows and the table they print as."""

import dataclasses
from typing import List, Optional


@dataclasses.dataclass
class Row:
    """One measured (or skipped) benchmark case.

    ``events_per_s`` counts the events of the stream (valid or not) over
    ``seconds`` of wall time. ``vs_plain`` is ``events_per_s`` over the
    plain PyTorch loop's end-to-end rate on the same stream. Accuracies are
    prequential (test-then-train) over the valid events, and
    ``no_change_accuracy`` is that of predicting the previous label on the
    same events. ``peak_rss_mb`` (memory rows only, not a table column) is
    the run's peak resident set size in MiB, the number the plot draws.
    ``detail`` contains the case's other numbers, or why it was skipped.
    """

    section: str
    case: str
    engine: str = "-"
    events: Optional[int] = None
    seconds: Optional[float] = None
    events_per_s: Optional[float] = None
    vs_plain: Optional[float] = None
    accuracy: Optional[float] = None
    no_change_accuracy: Optional[float] = None
    detail: str = ""
    peak_rss_mb: Optional[float] = None

    @property
    def key(self) -> str:
        """The row's stable name, ``section/case/engine``."""
        return f"{self.section}/{self.case}/{self.engine}"


def mode_label(block_size: int) -> str:
    """Name how ``online_train`` carries events: ``per event`` or ``blocks of N``."""
    return "per event" if block_size == 0 else f"blocks of {block_size}"


COLUMNS = (
    ("section", "section"),
    ("case", "case"),
    ("engine", "engine"),
    ("events", "events"),
    ("seconds", "wall s"),
    ("events_per_s", "events/s"),
    ("vs_plain", "vs plain loop"),
    ("accuracy", "accuracy"),
    ("no_change_accuracy", "no-change acc."),
    ("detail", "detail"),
)


def _format(name: str, value) -> str:
    if value is None:
        return ""
    if name in ("accuracy", "no_change_accuracy"):
        return f"{value:.4f}"
    if name == "vs_plain":
        return f"{value:.3f}"
    if name == "seconds":
        return f"{value:.2f}"
    if name == "events_per_s":
        return f"{value:,.0f}"
    if name == "events":
        return f"{value:,}"
    return str(value)


def markdown_table(rows: List[Row]) -> str:
    """Format rows as a GitHub Markdown table."""
    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [_format(name, getattr(row, name)).replace("|", "/") for name, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
