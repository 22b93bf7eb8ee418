"""The run report of ``online_train``: summary table, freshness and plots.

Reads what the pipeline wrote under the output directory, so it works the
same whichever runner produced it, as long as the driver can read the
output directory.
"""

import glob
import json
import logging
import math
import os
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from transforms.dead_letter import read_dead_letters

_LOGGER = logging.getLogger(__name__)


def read_parquet_dir(directory: str) -> Optional[pa.Table]:
    files = sorted(glob.glob(os.path.join(directory, "*.parquet")))
    if not files:
        return None
    return pa.concat_tables([pq.read_table(path) for path in files])


def read_manifest(models_dir: str, model_name: str) -> List[dict]:
    path = os.path.join(models_dir, model_name, "manifest.json")
    if not os.path.exists(path):
        return []
    with open(path) as file:
        return json.load(file)["versions"]


def read_drift_events(directory: str) -> List[dict]:
    events = []
    for path in sorted(glob.glob(os.path.join(directory, "*.jsonl"))):
        with open(path) as file:
            events += [json.loads(line) for line in file if line.strip()]
    return sorted(events, key=lambda event: event["event_time"])


def count_dead_letters(output_dir: str) -> Dict[str, int]:
    """Count the dead letters under ``output_dir`` by reason code."""
    counts: Dict[str, int] = {}
    for letter in read_dead_letters(output_dir):
        reason = letter.get("reason_code", "unknown")
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def version_freshness(predictions: pa.Table, versions: List[dict]) -> List[dict]:
    """Lag from each version's training watermark to its first prediction.

    Event-time lag is the first served event's time minus the training
    watermark (seconds); processing-time lag is the wall time from publishing
    to that first prediction. Versions that never served are listed with
    None lags.
    """
    served_versions = predictions.column("model_version").to_numpy()
    event_times = predictions.column("event_time").to_numpy()
    processing_times = predictions.column("processing_time").to_numpy()

    rows = []
    for version in versions:
        number = version["version"]
        mask = served_versions == number
        row = {
            "version": number,
            "training_watermark": version["training_watermark"],
            "events_served": int(mask.sum()),
            "event_time_lag_s": None,
            "processing_time_lag_s": None,
        }
        if mask.any() and math.isfinite(version["training_watermark"]):
            first = int(np.argmin(np.where(mask, event_times, np.inf)))
            row["event_time_lag_s"] = float(event_times[first] - version["training_watermark"])
            published_at = version["metadata"].get("published_at")
            if published_at is not None:
                row["processing_time_lag_s"] = float(processing_times[mask].min() - published_at)
        rows.append(row)
    return rows


def overall_metrics(predictions: pa.Table, task: str) -> Dict[str, Optional[float]]:
    from ml.metrics import PrequentialAccumulator

    labels = predictions.column("label").to_pylist()
    online = PrequentialAccumulator(task)
    baseline = PrequentialAccumulator(task)
    for label, output, frozen in zip(
        labels,
        predictions.column("prediction").to_pylist(),
        predictions.column("baseline_prediction").to_pylist(),
    ):
        if label is None:
            continue
        if task == "classification":
            label = int(label)
        online.add(label, output if task == "classification" else output[0])
        if frozen is not None:
            baseline.add(label, frozen if task == "classification" else frozen[0])
    result = {f"online_{key}": value for key, value in online.result().items()}
    result.update({f"baseline_{key}": value for key, value in baseline.result().items()})
    result["labelled_events"] = online.count
    return result


def _percentile(values: List[float], q: float) -> Optional[float]:
    values = [value for value in values if value is not None]
    return float(np.percentile(values, q)) if values else None


def plot_metrics(metrics: pa.Table, versions: List[dict], task: str, path: str,
                 drift_events: Optional[List[dict]] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(metrics.to_pylist(), key=lambda row: row["window_start"])
    key = "accuracy" if task == "classification" else "mae"
    starts = [row["window_start"] for row in rows]
    hours = [(start - starts[0]) / 3600 for start in starts]

    figure, axis = plt.subplots(figsize=(9, 4))
    axis.plot(hours, [row[f"online_{key}"] for row in rows], marker=".", label="online model")
    axis.plot(hours, [row[f"baseline_{key}"] for row in rows], marker=".", label="frozen initial model")
    for version in versions[1:]:
        watermark = version["training_watermark"]
        axis.axvline((watermark - starts[0]) / 3600, color="grey", alpha=0.15, linewidth=0.8)
    for index, event in enumerate(drift_events or []):
        axis.axvline((event["event_time"] - starts[0]) / 3600, color="red", linestyle="--", linewidth=1,
                     label="detected drift" if index == 0 else None)
    axis.set_xlabel("event time since the first window (hours); grey lines: new model versions")
    axis.set_ylabel(key.upper() if key == "mae" else key)
    axis.set_title(f"Prequential {key} per event-time window")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def plot_freshness(freshness: List[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    served = [row for row in freshness if row["event_time_lag_s"] is not None]
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].bar([row["version"] for row in served], [row["event_time_lag_s"] for row in served])
    axes[0].set_xlabel("model version")
    axes[0].set_ylabel("event-time lag (s)")
    axes[1].bar([row["version"] for row in served], [row["processing_time_lag_s"] or 0 for row in served])
    axes[1].set_xlabel("model version")
    axes[1].set_ylabel("processing-time lag (s)")
    figure.suptitle("Model freshness: training watermark to first prediction")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def build_report(output_dir: str, model_name: str, task: str, engine: str, command: str,
                 counters: Optional[dict] = None) -> dict:
    """Write ``report.md`` and its plots; return the summary numbers.

    ``counters`` (such as records read, valid and invalid) join the summary.
    """
    predictions = read_parquet_dir(os.path.join(output_dir, "predictions"))
    metrics = read_parquet_dir(os.path.join(output_dir, "metrics"))
    versions = read_manifest(os.path.join(output_dir, "models"), model_name)
    dead_letters = count_dead_letters(output_dir)
    drift_events = read_drift_events(os.path.join(output_dir, "drift"))
    if predictions is None:
        raise RuntimeError(f"no predictions were written under {output_dir}/predictions; nothing to report.")

    summary = overall_metrics(predictions, task)
    freshness = version_freshness(predictions, versions)
    summary.update({
        "engine": engine,
        "events_served": predictions.num_rows,
        "versions_published": max((v["version"] for v in versions), default=0),
        "dead_letters": sum(dead_letters.values()),
        "drift_events": len(drift_events),
        "freshness_event_time_lag_p50_s": _percentile([r["event_time_lag_s"] for r in freshness], 50),
        "freshness_event_time_lag_p95_s": _percentile([r["event_time_lag_s"] for r in freshness], 95),
        "freshness_processing_time_lag_p50_s": _percentile([r["processing_time_lag_s"] for r in freshness], 50),
        "freshness_processing_time_lag_p95_s": _percentile([r["processing_time_lag_s"] for r in freshness], 95),
    })
    summary.update(counters or {})

    plots_dir = os.path.join(output_dir, "plots")
    os.makedirs(plots_dir, exist_ok=True)
    if metrics is not None and metrics.num_rows:
        plot_metrics(metrics, versions, task, os.path.join(plots_dir, "metrics_over_event_time.png"),
                     drift_events)
    plot_freshness(freshness, os.path.join(plots_dir, "freshness.png"))

    with open(os.path.join(output_dir, "freshness.json"), "w") as file:
        json.dump(freshness, file, indent=1)
    with open(os.path.join(output_dir, "summary.json"), "w") as file:
        json.dump(summary, file, indent=1, sort_keys=True)
    with open(os.path.join(output_dir, "report.md"), "w") as file:
        file.write(render_markdown(summary, dead_letters, freshness, model_name, command, drift_events))
    return summary


def format_summary_table(summary: dict) -> str:
    """Format the headline numbers as a fixed-width two-column table."""
    lines = []
    for key in sorted(summary):
        value = summary[key]
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<40} {text}")
    return "\n".join(lines)


def render_markdown(summary: dict, dead_letters: Dict[str, int], freshness: List[dict],
                    model_name: str, command: str, drift_events: Optional[List[dict]] = None) -> str:
    lines = [
        f"# Online training report: {model_name}",
        "",
        f"Command: `{command}`",
        "",
        "## Summary",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in sorted(summary):
        value = summary[key]
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {text} |")
    lines += [
        "",
        "Every event is predicted by the version serving at its event time, then trained on",
        "(prequential evaluation). The baseline is the frozen initial model on the same events.",
        "",
        "![metrics over event time](plots/metrics_over_event_time.png)",
        "",
        "## Model freshness",
        "",
        "![freshness](plots/freshness.png)",
        "",
        "| version | training watermark | events served | event-time lag (s) | processing-time lag (s) |",
        "|---|---|---|---|---|",
    ]
    for row in freshness:
        lines.append(
            f"| {row['version']} | {row['training_watermark']} | {row['events_served']} | "
            f"{_fmt(row['event_time_lag_s'])} | {_fmt(row['processing_time_lag_s'])} |"
        )
    lines += ["", "## Detected drift", ""]
    if drift_events:
        lines += ["| event time | detector | model version | error rate |", "|---|---|---|---|"]
        lines += [
            f"| {event['event_time']} | {event['detector']} | {event['model_version']} | "
            f"{_fmt(event.get('error_rate'))} |"
            for event in drift_events
        ]
    else:
        lines.append("No drift was detected (or no detector was set with --drift_detector).")
    lines += ["", "## Dead letters", ""]
    if dead_letters:
        lines += ["| reason | records |", "|---|---|"]
        lines += [f"| {reason} | {count} |" for reason, count in sorted(dead_letters.items())]
    else:
        lines.append("No record was rejected.")
    lines.append("")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "" if value is None else f"{value:.3f}"
