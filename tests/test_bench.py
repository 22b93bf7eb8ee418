"""Smoke and known-answer tests of the benchmark suite (``python -m bench``)."""

import math
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import engines as engines_lib
from bench.results import Row, markdown_table
from transforms import dead_letter
from transforms import validate
from transforms import windowing

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

QUICK_ROWS = {
    "throughput/plain PyTorch loop/-",
    "throughput/plain PyTorch loop, model only/-",
    "throughput/online_train/fnapi",
    "freshness/version to first prediction/fnapi",
    "throughput/online_train/flink",
    "peers/River StandardScaler / LogisticRegression/-",
    "peers/River HoeffdingTreeClassifier/-",
    "inference/plain model(x), batches of 256/-",
    "inference/VersionedInference/fnapi",
    "inference/RunInference + PytorchModelHandlerTensor/fnapi",
    "inference/VersionedInference/flink",
    "profile/plain PyTorch loop, self time per event (us)/-",
    "profile/online_train (fnapi), self time per event (us)/fnapi",
    "memory/imports only (beam, torch, river)/-",
    "memory/plain PyTorch loop, peak RSS/-",
    "memory/online_train, peak RSS/fnapi",
}


def _table_rows(output: str) -> dict:
    """Parse the printed Markdown table into {section/case/engine: cells}."""
    lines = [line for line in output.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        rows[f"{cells['section']}/{cells['case']}/{cells['engine']}"] = cells
    return rows


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    docs_dir = tmp_path_factory.mktemp("docs")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--engines=fnapi,flink", f"--docs_dir={docs_dir}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout, docs_dir


@pytest.mark.timeout(300)
def test_quick_run_has_every_row(quick_run):
    output, _ = quick_run
    rows = _table_rows(output)
    assert set(rows) == QUICK_ROWS
    failed = {key: cells["detail"] for key, cells in rows.items() if cells["detail"].startswith("failed")}
    assert failed == {}


@pytest.mark.timeout(300)
def test_quick_run_pipeline_matches_plain_loop(quick_run):
    # The same model, seed, windows and TrainerConfig must give the same
    # prequential accuracy inside and outside Beam.
    rows = _table_rows(quick_run[0])
    assert rows["throughput/online_train/fnapi"]["accuracy"] == rows["throughput/plain PyTorch loop/-"]["accuracy"]
    assert float(rows["throughput/online_train/fnapi"]["events/s"].replace(",", "")) > 0


@pytest.mark.timeout(300)
def test_quick_run_reports_flink_skip(quick_run):
    rows = _table_rows(quick_run[0])
    assert rows["throughput/online_train/flink"]["detail"].startswith("skipped: no Beam Flink job server jar")


@pytest.mark.timeout(300)
def test_quick_run_appends_docs(quick_run):
    output, docs_dir = quick_run
    with open(os.path.join(docs_dir, "benchmarks.md")) as file:
        text = file.read()
    assert "Command: `python -m bench --quick --engines=fnapi,flink" in text
    assert "Apache Beam 2.77.0" in text
    assert "| throughput | online_train | fnapi |" in text


def test_no_change_accuracy_known_answer():
    from bench import throughput
    from transforms.records import Event

    labels = [0, 0, 1, 1, 1, 0]
    events = [Event(str(index), float(index), (0.0,), label) for index, label in enumerate(labels)]
    workload = type("Stream", (), {"events": events})()
    # Hits at positions 1, 3 and 4; the first event has no previous label.
    assert throughput.no_change_accuracy(workload) == pytest.approx(3 / 6)


def test_resolve_engines_unknown_name():
    with pytest.raises(ValueError, match=r"--engines has the unknown engine 'spark'"):
        engines_lib.resolve_engines(["fnapi", "spark"])


def test_resolve_engines_flink_skipped():
    (flink,) = engines_lib.resolve_engines(["flink"])
    assert flink.unavailable == engines_lib.FLINK_UNAVAILABLE
    assert flink.pipeline_args == ()


def test_markdown_table_formats_cells():
    table = markdown_table([Row("throughput", "a|b", "fnapi", events=20000, seconds=1.234,
                                events_per_s=16207.5, vs_plain=0.5, accuracy=0.91234)])
    assert table.splitlines()[2] == "| throughput | a/b | fnapi | 20,000 | 1.23 | 16,208 | 0.500 | 0.9123 |  |  |"


_JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**60, max_value=2**60),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
)


@given(st.dictionaries(st.text(max_size=10), _JSON_VALUES, max_size=8))
def test_json_size_bound_covers_dumps(row):
    bound = validate._json_size_bound(row)
    if bound is not None:
        assert len(dead_letter.dumps(row).encode("utf-8")) <= bound


def test_json_size_bound_known_answers():
    assert validate._json_size_bound({"name": "caf\u00e9"}) is None
    assert validate._json_size_bound({"x": math.inf}) is None
    assert validate._json_size_bound({"x": [1, 2]}) is None
    assert validate._json_size_bound({"x": 1.5, "y": "ab"}) == 2 + (6 + 4 + 24) + (6 + 4 + 14)


@given(
    event_time=st.floats(min_value=0, max_value=1e9),
    behind=st.floats(min_value=-1e4, max_value=1e4),
    lateness=st.sampled_from([0.0, 0.5, 60.0]),
    window=st.sampled_from(["fixed:5m", "sliding:10m/1m", "session:30s"]),
)
def test_lateness_shortcut_never_drops(event_time, behind, lateness, window):
    # Whenever the shortcut in RecordValidator._check_lateness skips the full
    # check, the full check must agree that the record is not droppable.
    window_fn = windowing.WindowingConfig.from_specs(window=window).window_fn
    watermark = event_time - behind
    if watermark < event_time + lateness - 1e-3:
        assert not windowing.is_droppable(window_fn, lateness, event_time, watermark)

