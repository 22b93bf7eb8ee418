"""Split measured wall time into a cost per event and a cost per serving window.

The throughput section runs the plain loop and block-mode ``online_train``
on the same events twice: in the job's windows and in longer ones. A run
over ``n`` events and ``w`` serving windows takes about
``n * per_event + w * per_window`` seconds, so the two runs give both
costs. The ratio of the per-event costs is what ``online_train`` would
reach against the plain loop if every per-window cost (timer rounds,
state, publishing and loading versions, output files) were gone.
"""

import dataclasses
from typing import Optional

from bench.results import Row


@dataclasses.dataclass(frozen=True)
class CostFit:
    """A case's fitted costs: seconds per event and seconds per serving window."""

    per_event_s: float
    per_window_s: float


def fit_costs(events: int, short_s: float, short_windows: int, long_s: float, long_windows: int) -> CostFit:
    """Solve ``seconds = events * per_event + windows * per_window`` from two runs over the same events."""
    if short_windows == long_windows:
        raise ValueError(f"Cannot split the cost per window: both runs have {short_windows} serving windows; "
                         "use a --long_window longer than the job's window.")
    per_window_s = (short_s - long_s) / (short_windows - long_windows)
    per_event_s = (long_s - long_windows * per_window_s) / events
    return CostFit(per_event_s, per_window_s)


def per_event_floor_row(case: str, plain_short: Row, job_short: Row, plain_long: Row, job_long: Row,
                        short_windows: int, long_windows: int) -> Optional[Row]:
    """Return the row of ``online_train`` without its per-window costs, or None when a run failed.

    The four rows are the plain loop and ``online_train`` in the job's
    windows (``short``) and in the longer windows, all over the same events.
    """
    runs = (plain_short, job_short, plain_long, job_long)
    if any(row.seconds is None for row in runs) or len({row.events for row in runs}) != 1:
        return None

    events = plain_short.events
    plain = fit_costs(events, plain_short.seconds, short_windows, plain_long.seconds, long_windows)
    job = fit_costs(events, job_short.seconds, short_windows, job_long.seconds, long_windows)
    if job.per_event_s <= 0 or plain.per_event_s <= 0:
        return Row("throughput", case, job_short.engine,
                   detail="no estimate: a fitted cost per event is not positive, so the runs are too short or "
                          "too noisy to split")
    detail = (
        f"fitted from {short_windows} and {long_windows} serving windows over the same events: "
        f"online_train {job.per_window_s * 1e3:.1f} ms per serving window and {job.per_event_s * 1e6:.1f} us "
        f"per event, the plain loop {plain.per_window_s * 1e3:.2f} ms and {plain.per_event_s * 1e6:.1f} us"
    )
    return Row("throughput", case, job_short.engine, events_per_s=1 / job.per_event_s,
               vs_plain=plain.per_event_s / job.per_event_s, detail=detail)
