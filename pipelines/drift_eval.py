"""Compare drift reactions and forgetting defences on streams with known drift.

Run the default comparison (a few minutes on two CPU cores):

    python -m pipelines.drift_eval

Each stream is cut into panes of ``--pane_size`` events. Every learner
predicts a whole pane and then trains on it (predict-then-train), which is
what ``OnlineTrainer`` does with each pane inside the pipeline, so the
PyTorch variants here run ``IncrementalTrainer`` exactly as the pipeline
does, without Beam. Outputs under ``--output_dir``: ``results.csv`` (one row
per stream and learner), ``recovery.csv`` (one row per known drift),
``detections.csv``, ``summary.md`` and one ``accuracy_<stream>.png`` per
stream.
"""

import argparse
import csv
import dataclasses
import itertools
import logging
import os
import random
import sys
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from river import compose, forest, linear_model, preprocessing, tree
from river.datasets import synth

from ml.drift import DETECTORS
from ml.models import CLASSIFICATION, ModelSpec, build_model
from ml.trainer import BOOST_LR, NO_REACTION, REINIT_HEAD, RESET_OPTIMIZER, IncrementalTrainer, TrainerConfig
from transforms import datasets

_LOGGER = logging.getLogger(__name__)

# Accuracy is "recovered" once the rolling accuracy is back within this many
# points (as a fraction) of its level before the drift.
RECOVERY_TOLERANCE = 0.02

# Synthetic events are one second apart, as in transforms.datasets.
EVENT_STEP_S = 1.0


# Streams ------------------------------------------------------------------


@dataclasses.dataclass
class ForgettingProbe:
    """Held-out examples of a stream's first concept and when to score them.

    ``after_first`` is the position where the first concept ends and
    ``after_second`` where the second one ends (zero-based event indices).
    """

    features: np.ndarray
    labels: np.ndarray
    after_first: int
    after_second: int


@dataclasses.dataclass
class Stream:
    """A labelled stream with its known drifts as (position, width) pairs."""

    name: str
    description: str
    feature_names: tuple
    features: np.ndarray
    labels: np.ndarray
    num_classes: int
    drifts: tuple = ()
    probe: Optional[ForgettingProbe] = None

    def __len__(self) -> int:
        return len(self.labels)


def _to_arrays(samples, feature_names: Optional[tuple] = None) -> tuple:
    rows, labels = [], []
    for features, label in samples:
        if feature_names is None:
            feature_names = tuple(features)
        rows.append([float(features[name]) for name in feature_names])
        labels.append(int(label))
    return feature_names, np.asarray(rows, dtype=np.float32), np.asarray(labels, dtype=np.int64)


def _concept_blocks(make_stream: Callable[[int, int], Iterator], concepts: Sequence, length: int, seed: int):
    """Yield ``length`` samples from each concept in turn, each block freshly seeded."""
    seeds = random.Random(seed)
    for concept in concepts:
        yield from itertools.islice(make_stream(concept, seeds.getrandbits(32)), length)


def _block_stream(name, description, make_stream, concepts, length, seed) -> Stream:
    names, features, labels = _to_arrays(_concept_blocks(make_stream, concepts, length, seed))
    drifts = tuple((length * index, 1) for index in range(1, len(concepts)))
    return Stream(name, description, names, features, labels, 2, drifts)


def sea_stream(length: int, seed: int) -> Stream:
    return _block_stream(
        "sea",
        f"SEA thresholds 8, 9, 7, 9.5; abrupt switch every {length} events",
        lambda variant, stream_seed: synth.SEA(variant=variant, seed=stream_seed),
        (0, 1, 2, 3), length, seed,
    )


def agrawal_stream(length: int, seed: int) -> Stream:
    return _block_stream(
        "agrawal",
        f"Agrawal functions 0, 2, 4, 6; abrupt switch every {length} events",
        lambda function, stream_seed: synth.Agrawal(classification_function=function, seed=stream_seed),
        (0, 2, 4, 6), length, seed,
    )


def hyperplane_stream(length: int, seed: int) -> Stream:
    stream = synth.Hyperplane(
        seed=seed, n_features=10, n_drift_features=2, mag_change=0.001, noise_percentage=0.05
    )
    names, features, labels = _to_arrays(itertools.islice(stream, 4 * length))
    description = "Rotating hyperplane, 10 features, incremental drift, 5% noise"
    return Stream("hyperplane", description, names, features, labels, 2)


def sea_concept_drift_stream(name: str, length: int, width: int, seed: int) -> Stream:
    """SEA threshold 8 to threshold 9.5 through River's ConceptDriftStream at event 2 * length."""
    position = 2 * length
    # ConceptDriftStream centres its sigmoid on the 1-based index ``position``;
    # passing position + 1 centres it on the zero-based index ``position``.
    stream = synth.ConceptDriftStream(
        stream=synth.SEA(variant=0, seed=seed),
        drift_stream=synth.SEA(variant=3, seed=seed + 1),
        position=position + 1,
        width=width,
        seed=seed,
    )
    names, features, labels = _to_arrays(itertools.islice(stream, 4 * length))
    description = f"ConceptDriftStream SEA 8 to 9.5 at event {position}, width {width}"
    return Stream(name, description, names, features, labels, 2, ((position, width),))


def recurring_stream(length: int, seed: int, probe_size: int) -> Stream:
    """Sine function 0, then function 2, then function 0 again, ``length`` events each."""
    make = lambda function, stream_seed: synth.Sine(classification_function=function, seed=stream_seed)
    names, features, labels = _to_arrays(_concept_blocks(make, (0, 2, 0), length, seed))
    _, probe_features, probe_labels = _to_arrays(
        itertools.islice(make(0, seed + 10_007), probe_size), names
    )
    probe = ForgettingProbe(probe_features, probe_labels, after_first=length, after_second=2 * length)
    description = f"Sine function 0, 2, 0 (A, B, A); {length} events each"
    drifts = ((length, 1), (2 * length, 1))
    return Stream("recurring", description, names, features, labels, 2, drifts, probe)


def phishing_stream(max_events: Optional[int]) -> Stream:
    spec = datasets.get_dataset("phishing")
    rows = list(spec.rows(max_events=max_events))
    features = np.asarray(
        [[float(row[name]) for name in spec.feature_columns] for row in rows], dtype=np.float32
    )
    labels = np.asarray([int(row[spec.label_column]) for row in rows], dtype=np.int64)
    description = "River's phishing file in file order; no known drift"
    return Stream("phishing", description, spec.feature_columns, features, labels, 2)


def build_streams(concept_length: int, seed: int, phishing_events: Optional[int], names: Sequence[str]) -> List[Stream]:
    builders = {
        "sea": lambda: sea_stream(concept_length, seed),
        "agrawal": lambda: agrawal_stream(concept_length, seed),
        "hyperplane": lambda: hyperplane_stream(concept_length, seed),
        "sea_abrupt": lambda: sea_concept_drift_stream("sea_abrupt", concept_length, 50, seed),
        "sea_gradual": lambda: sea_concept_drift_stream(
            "sea_gradual", concept_length, concept_length // 2, seed
        ),
        "recurring": lambda: recurring_stream(concept_length, seed, probe_size=1000),
        "phishing": lambda: phishing_stream(phishing_events),
    }
    unknown = sorted(set(names) - set(builders))
    if unknown:
        raise ValueError(f"unknown --streams {unknown}; choose from {sorted(builders)}.")
    return [builders[name]() for name in names]


STREAM_NAMES = ("sea", "agrawal", "hyperplane", "sea_abrupt", "sea_gradual", "recurring", "phishing")


# Learners -----------------------------------------------------------------


class TorchLearner:
    """``IncrementalTrainer`` on a fresh seeded MLP; frozen after ``freeze_after_panes`` if set."""

    def __init__(self, name: str, num_inputs: int, num_classes: int, config: TrainerConfig,
                 hidden: tuple, freeze_after_panes: Optional[int] = None):
        self.name = name
        spec = ModelSpec(CLASSIFICATION, num_inputs=num_inputs, num_outputs=num_classes, hidden=hidden)
        self.trainer = IncrementalTrainer(build_model(spec, seed=config.seed), CLASSIFICATION, config)
        self.freeze_after_panes = freeze_after_panes
        self.panes_trained = 0

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.argmax(self.trainer.predict_many(features), axis=1)

    def learn(self, features: np.ndarray, labels: np.ndarray, first_position: int) -> List[int]:
        """Train on a pane and return the stream positions of drift detections."""
        if self.freeze_after_panes is not None and self.panes_trained >= self.freeze_after_panes:
            return []
        positions = np.arange(first_position, first_position + len(labels), dtype=np.float64)
        result = self.trainer.learn_many(features, labels, event_times=positions * EVENT_STEP_S)
        self.panes_trained += 1
        return [event.position for event in result.drift_events]


class RiverLearner:
    """A River classifier fed one pane at a time: predict all, then learn each."""

    def __init__(self, name: str, model, feature_names: tuple):
        self.name = name
        self.model = model
        self.feature_names = feature_names

    def _rows(self, features: np.ndarray) -> List[dict]:
        return [dict(zip(self.feature_names, map(float, row))) for row in features]

    def predict(self, features: np.ndarray) -> np.ndarray:
        predictions = [self.model.predict_one(row) for row in self._rows(features)]
        return np.asarray([-1 if label is None else int(label) for label in predictions])

    def learn(self, features: np.ndarray, labels: np.ndarray, first_position: int) -> List[int]:
        for row, label in zip(self._rows(features), labels):
            self.model.learn_one(row, int(label))
        return []


class NoChangeLearner:
    """Predict each event's label as the previous event's label.

    NOTE: unlike the other learners, this classic no-change baseline uses
    each label one event later rather than one pane later.
    """

    name = "no_change"

    def __init__(self):
        self.previous_label = 0

    def predict_and_learn(self, labels: np.ndarray) -> np.ndarray:
        predictions = np.concatenate([[self.previous_label], labels[:-1]])
        self.previous_label = int(labels[-1])
        return predictions


def torch_learners(stream: Stream, args) -> List[TorchLearner]:
    base = dict(
        learning_rate=args.learning_rate, steps_per_pane=args.steps_per_pane,
        batch_size=args.batch_size, seed=args.seed,
    )
    detect = dict(
        drift_detector=args.detector, lr_boost_factor=args.lr_boost_factor,
        lr_boost_panes=args.lr_boost_panes,
    )
    configs = {
        "frozen": TrainerConfig(**base),
        "online": TrainerConfig(**base),
        "reset_optimizer": TrainerConfig(**base, **detect, drift_reaction=RESET_OPTIMIZER),
        "boost_lr": TrainerConfig(**base, **detect, drift_reaction=BOOST_LR),
        "reinit_head": TrainerConfig(**base, **detect, drift_reaction=REINIT_HEAD),
        "replay": TrainerConfig(**base, replay_size=args.replay_size, replay_ratio=args.replay_ratio),
        "ewc": TrainerConfig(**base, **detect, drift_reaction=NO_REACTION, ewc_lambda=args.ewc_lambda),
    }
    hidden = tuple(int(width) for width in args.hidden.split(",") if width)
    num_inputs = stream.features.shape[1]
    return [
        TorchLearner(
            name, num_inputs, stream.num_classes, config, hidden,
            freeze_after_panes=args.warmup_panes if name == "frozen" else None,
        )
        for name, config in configs.items()
    ]


def river_learners(stream: Stream, args) -> List[RiverLearner]:
    names = stream.feature_names
    return [
        RiverLearner(
            "river_logistic",
            compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression()),
            names,
        ),
        RiverLearner("river_hat", tree.HoeffdingAdaptiveTreeClassifier(seed=args.seed), names),
        RiverLearner("river_arf", forest.ARFClassifier(n_models=args.arf_models, seed=args.seed), names),
    ]


# Evaluation ---------------------------------------------------------------


@dataclasses.dataclass
class RunResult:
    """Per-event correctness, timing, detections and probe scores of one learner on one stream."""

    stream: str
    learner: str
    correct: np.ndarray
    seconds: float
    detections: List[int]
    probe_accuracy: Dict[str, float]

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def events_per_s(self) -> float:
        return len(self.correct) / self.seconds if self.seconds > 0 else float("inf")


def _probe_accuracy(learner, probe: ForgettingProbe) -> float:
    return float((learner.predict(probe.features) == probe.labels).mean())


def run_learner(learner, stream: Stream, pane_size: int) -> RunResult:
    """Run the prequential loop: per pane, predict every event, then train."""
    correct = np.zeros(len(stream), dtype=np.float64)
    detections: List[int] = []
    probe_accuracy: Dict[str, float] = {}
    probe_points = {}
    if stream.probe is not None:
        probe_points = {stream.probe.after_first: "after_first", stream.probe.after_second: "after_second"}
    elapsed = 0.0

    for start in range(0, len(stream), pane_size):
        end = min(start + pane_size, len(stream))
        features, labels = stream.features[start:end], stream.labels[start:end]

        started = time.perf_counter()
        if isinstance(learner, NoChangeLearner):
            predictions = learner.predict_and_learn(labels)
        else:
            predictions = learner.predict(features)
            detections += learner.learn(features, labels, start)
        elapsed += time.perf_counter() - started
        correct[start:end] = predictions == labels

        # Probes are scored outside the timed section so that they do not
        # count against throughput.
        for point, label in probe_points.items():
            if start < point <= end and not isinstance(learner, NoChangeLearner):
                probe_accuracy[label] = _probe_accuracy(learner, stream.probe)

    return RunResult(stream.name, learner.name, correct, elapsed, detections, probe_accuracy)


def rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the ``window`` values ending at each index (fewer at the start)."""
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def recovery_events(correct: np.ndarray, drifts: tuple, index: int, window: int) -> dict:
    """Measure how long accuracy takes to come back after drift number ``index``.

    The pre-drift level is the accuracy over the ``window`` events before the
    transition starts (``position - width // 2``). Recovery is the number of
    events from the end of the transition (``position + width // 2``) to the
    first window of ``window`` events whose accuracy is within
    ``RECOVERY_TOLERANCE`` of that level. The window must end before the
    next drift's transition starts, and ``recovery_events`` is None when no
    such window exists.
    """
    position, width = drifts[index]
    transition_start = max(position - width // 2, 0)
    transition_end = position + width // 2
    horizon = len(correct)
    if index + 1 < len(drifts):
        next_position, next_width = drifts[index + 1]
        horizon = max(next_position - next_width // 2, transition_end)

    pre_level = float(correct[max(transition_start - window, 0):transition_start].mean())
    sums = np.cumsum(np.concatenate([[0.0], correct]))
    starts = np.arange(transition_end, horizon - window + 1)
    recovery = None
    if len(starts):
        window_accuracy = (sums[starts + window] - sums[starts]) / window
        recovered = np.flatnonzero(window_accuracy >= pre_level - RECOVERY_TOLERANCE)
        if len(recovered):
            recovery = int(recovered[0])
    return {"position": position, "width": width, "pre_accuracy": pre_level, "recovery_events": recovery}


def evaluate_stream(stream: Stream, args) -> List[RunResult]:
    learners = torch_learners(stream, args) + river_learners(stream, args) + [NoChangeLearner()]
    results = []
    for learner in learners:
        result = run_learner(learner, stream, args.pane_size)
        _LOGGER.info(
            "%s / %s: accuracy %.4f, %.0f events/s, %d detections.",
            stream.name, learner.name, result.accuracy, result.events_per_s, len(result.detections),
        )
        results.append(result)
    return results


# Reporting ----------------------------------------------------------------


def summary_row(stream: Stream, result: RunResult, window: int) -> dict:
    recoveries = [recovery_events(result.correct, stream.drifts, index, window) for index in range(len(stream.drifts))]
    recovered = [item["recovery_events"] for item in recoveries if item["recovery_events"] is not None]
    before = result.probe_accuracy.get("after_first")
    after = result.probe_accuracy.get("after_second")
    return {
        "stream": stream.name,
        "learner": result.learner,
        "events": len(result.correct),
        "accuracy": round(result.accuracy, 4),
        "mean_recovery_events": round(float(np.mean(recovered)), 1) if recovered else None,
        "drifts": len(recoveries),
        "unrecovered_drifts": len(recoveries) - len(recovered),
        "old_concept_accuracy": None if after is None else round(after, 4),
        "forgetting": None if before is None or after is None else round(before - after, 4),
        "detections": len(result.detections),
        "events_per_s": round(result.events_per_s, 1),
    }


def write_csv(path: str, rows: List[dict]) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:,.1f}".rstrip("0").rstrip(".")
    return str(value)


def markdown_table(rows: List[dict], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[column]) for column in columns) + " |")
    return "\n".join(lines)


TABLE_COLUMNS = (
    "learner", "accuracy", "mean_recovery_events", "unrecovered_drifts",
    "old_concept_accuracy", "forgetting", "detections", "events_per_s",
)


def text_table(rows: List[dict], columns: Sequence[str]) -> str:
    cells = [[column for column in columns]] + [[_cell(row[column]) for column in columns] for row in rows]
    widths = [max(len(line[index]) for line in cells) for index in range(len(columns))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in cells)


def plot_stream(stream: Stream, results: List[RunResult], window: int, path: str) -> None:
    """Plot rolling accuracy per learner, known drifts and detections."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    torch_names = {"frozen", "online", "reset_optimizer", "boost_lr", "reinit_head", "replay", "ewc"}
    colors = dict(zip(
        [result.learner for result in results],
        itertools.cycle(plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors),
    ))
    for axis, in_torch in ((axes[0], True), (axes[1], False)):
        for result in results:
            if (result.learner in torch_names) != in_torch and result.learner != "online":
                continue
            axis.plot(rolling_mean(result.correct, window), label=result.learner,
                      color=colors[result.learner], linewidth=1.2)
            if result.detections:
                axis.plot(result.detections, [0.02] * len(result.detections), "|",
                          color=colors[result.learner], markersize=10, transform=axis.get_xaxis_transform())
        for position, width in stream.drifts:
            axis.axvline(position, color="black", linestyle="--", linewidth=1)
            if width > 1:
                axis.axvspan(position - width / 2, position + width / 2, color="grey", alpha=0.15)
        axis.set_ylabel(f"accuracy, rolling {window} events")
        axis.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
        axis.grid(alpha=0.3)
    axes[0].set_title(f"{stream.name}: {stream.description}\n(dashed: known drift; ticks at the bottom: detections)")
    axes[1].set_xlabel("event index")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


# Command line -------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.drift_eval",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output_dir", default="output/drift_eval", help="Directory for CSV, Markdown and PNG outputs.")
    parser.add_argument("--small", action="store_true",
                        help="Short streams and fewer learners' trees, for a check in seconds.")
    parser.add_argument("--streams", default=",".join(STREAM_NAMES), help="Comma-separated streams to run.")
    parser.add_argument("--concept_length", type=int, default=2500,
                        help="Events per concept in the synthetic streams (--small: 300).")
    parser.add_argument("--pane_size", type=int, default=100, help="Events per pane (--small: 50).")
    parser.add_argument("--window", type=int, default=500,
                        help="Events in the rolling accuracy window, for plots and recovery (--small: 100).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the streams and all learners.")
    parser.add_argument("--hidden", default="32", help="Hidden layer widths of the MLP, comma-separated.")
    parser.add_argument("--learning_rate", type=float, default=1e-2, help="Adam learning rate.")
    parser.add_argument("--steps_per_pane", type=int, default=2, help="Passes over each pane.")
    parser.add_argument("--batch_size", type=int, default=32, help="Mini-batch size within a pass.")
    parser.add_argument("--warmup_panes", type=int, default=10, help="Panes the frozen model trains on before freezing.")
    parser.add_argument("--detector", default="adwin", choices=DETECTORS, help="Drift detector of the reacting learners.")
    parser.add_argument("--lr_boost_factor", type=float, default=5.0, help="Learning-rate multiplier of boost_lr.")
    parser.add_argument("--lr_boost_panes", type=int, default=5, help="Panes that boost_lr lasts.")
    parser.add_argument("--replay_size", type=int, default=1000, help="Examples in the replay buffer.")
    parser.add_argument("--replay_ratio", type=float, default=1.0, help="Replayed examples per new example.")
    parser.add_argument("--ewc_lambda", type=float, default=100.0, help="EWC penalty strength.")
    parser.add_argument("--arf_models", type=int, default=5, help="Trees in River's ARFClassifier (--small: 3).")
    return parser


def _apply_small(args) -> None:
    defaults = build_parser().parse_args([])
    small = {"concept_length": 300, "pane_size": 50, "window": 100, "warmup_panes": 4, "arf_models": 3}
    for name, value in small.items():
        if getattr(args, name) == getattr(defaults, name):
            setattr(args, name, value)


def run(args) -> List[dict]:
    """Evaluate every stream, write the outputs and return the summary rows."""
    if args.small:
        _apply_small(args)
    os.makedirs(args.output_dir, exist_ok=True)
    names = [name for name in args.streams.split(",") if name]
    phishing_events = 4 * args.concept_length if args.small else None
    streams = build_streams(args.concept_length, args.seed, phishing_events, names)

    summary, recoveries, detections = [], [], []
    for stream in streams:
        results = evaluate_stream(stream, args)
        for result in results:
            summary.append(summary_row(stream, result, args.window))
            for index in range(len(stream.drifts)):
                recoveries.append({"stream": stream.name, "learner": result.learner,
                                   **recovery_events(result.correct, stream.drifts, index, args.window)})
            detections += [{"stream": stream.name, "learner": result.learner, "position": position}
                           for position in result.detections]
        plot_stream(stream, results, args.window, os.path.join(args.output_dir, f"accuracy_{stream.name}.png"))

    write_csv(os.path.join(args.output_dir, "results.csv"), summary)
    write_csv(os.path.join(args.output_dir, "recovery.csv"), recoveries)
    write_csv(os.path.join(args.output_dir, "detections.csv"), detections)
    _write_summary(args, streams, summary)
    return summary


def _write_summary(args, streams: List[Stream], summary: List[dict]) -> None:
    sections = []
    for stream in streams:
        rows = [row for row in summary if row["stream"] == stream.name]
        drifts = ", ".join(f"{position} (width {width})" for position, width in stream.drifts) or "none known"
        print(f"\n{stream.name}: {stream.description}; {len(stream)} events; drifts: {drifts}")
        print(text_table(rows, TABLE_COLUMNS))
        sections.append(f"### {stream.name}\n\n{stream.description}; {len(stream)} events; "
                        f"drifts at {drifts}.\n\n{markdown_table(rows, TABLE_COLUMNS)}\n")
    command = "python -m pipelines.drift_eval" + (" --small" if args.small else "")
    with open(os.path.join(args.output_dir, "summary.md"), "w") as file:
        file.write(f"Output of `{command}` (seed {args.seed}, pane size {args.pane_size}, "
                   f"rolling window {args.window}).\n\n" + "\n".join(sections))


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)

    # The MLPs here are tiny, so splitting each matrix product across threads
    # costs more than it saves: one thread ran the sea stream 10 times faster
    # than two on a shared two-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    try:
        run(args)
    finally:
        torch.set_num_threads(threads)
    print(f"\nWrote {args.output_dir} in {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
