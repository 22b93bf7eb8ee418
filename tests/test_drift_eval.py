import csv

import numpy as np
import pytest

from pipelines import drift_eval


def test_rolling_mean_known_values():
    values = np.array([1.0, 0.0, 1.0, 1.0])

    np.testing.assert_allclose(drift_eval.rolling_mean(values, 2), [1.0, 0.5, 0.5, 1.0])


def test_recovery_known_values():
    # 90% accurate before the drift at 100, wrong for 30 events, then always
    # right. A window of 20 events that starts 28 events after the drift has
    # 2 errors: 90% accuracy, within 2 points of the level before the drift.
    correct = np.concatenate([np.tile([1.0] * 9 + [0.0], 10), np.zeros(30), np.ones(100)])

    recovery = drift_eval.recovery_events(correct, ((100, 1),), 0, window=20)

    assert recovery["pre_accuracy"] == pytest.approx(0.9)
    assert recovery["recovery_events"] == 28


def test_recovery_none_when_never_back():
    correct = np.concatenate([np.ones(100), np.zeros(100)])

    recovery = drift_eval.recovery_events(correct, ((100, 1),), 0, window=20)

    assert recovery["recovery_events"] is None


def test_recovery_stops_at_next_drift():
    correct = np.concatenate([np.ones(100), np.zeros(50), np.ones(100)])

    first = drift_eval.recovery_events(correct, ((100, 1), (150, 1)), 0, window=20)

    assert first["recovery_events"] is None


def test_small_run_writes_outputs(tmp_path):
    output_dir = tmp_path / "drift"

    code = drift_eval.main(["--small", "--streams", "sea_abrupt,recurring", "--output_dir", str(output_dir)])

    assert code == 0
    with open(output_dir / "results.csv") as file:
        rows = list(csv.DictReader(file))
    learners = {row["learner"] for row in rows}
    assert len(rows) == 2 * len(learners)
    assert {"frozen", "online", "boost_lr", "replay", "ewc", "river_arf", "no_change"} <= learners
    recurring = {row["learner"]: row for row in rows if row["stream"] == "recurring"}
    assert recurring["frozen"]["forgetting"] == "0.0"
    assert float(recurring["online"]["old_concept_accuracy"]) > 0.5
    with open(output_dir / "recovery.csv") as file:
        assert len(list(csv.DictReader(file))) == len(learners) * 3
    assert (output_dir / "accuracy_sea_abrupt.png").stat().st_size > 10_000
    assert (output_dir / "accuracy_recurring.png").stat().st_size > 10_000
    assert "| learner | accuracy |" in (output_dir / "summary.md").read_text()


def test_unknown_stream_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown --streams \\['sae'\\]"):
        drift_eval.main(["--small", "--streams", "sae", "--output_dir", str(tmp_path)])
