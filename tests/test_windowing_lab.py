"""Tests for the windowing lab: schedule, firing times, measures, grid and CLI.

Hand-built streams use 10-second windows starting at BASE, and watermarks
given as offsets from BASE. Every replay runs on the streaming DirectRunner.
"""

import math
import os
import random

import pyarrow.csv as pa_csv
import pytest

from pipelines import windowing_lab as windowing_lab_cli
from transforms import sources
from transforms.records import Event
from transforms.windowing import WindowingConfig
from transforms.windowing_lab import grid as grid_lib
from transforms.windowing_lab import lab
from transforms.windowing_lab import report
from transforms.windowing_lab.capture import replay_panes
from transforms.windowing_lab.firing import (
    EARLY, LATE, ON_TIME, PHASE_CLOCK, PHASE_ELEMENT, PHASE_WATERMARK,
    check_firing_points, fire_panes)
from transforms.windowing_lab.measures import measure_panes
from transforms.windowing_lab.prequential import ModelConfig, evaluate_prequential
from transforms.windowing_lab.schedule import head_processing_times, make_elements

BASE = 1_700_000_000.0
NO_WATERMARK = -math.inf


def stream(*arrivals):
    """Build elements from ``(id, event offset, watermark offset or None)``."""
    return make_elements(
        ids=[event_id for event_id, _, _ in arrivals],
        event_times=[BASE + offset for _, offset, _ in arrivals],
        watermarks=[
            NO_WATERMARK if watermark is None else BASE + watermark
            for _, _, watermark in arrivals
        ])


def replay(elements, window, trigger, lateness="0s", accumulation="discarding", tmp_path=None):
    """Replay on the DirectRunner; return (fired panes, measures, stalled)."""
    config = WindowingConfig.from_specs(window, trigger, lateness, accumulation)
    capture = replay_panes(elements, config, str(tmp_path))
    accumulating = accumulation == "accumulating"
    fired = fire_panes(capture.panes, elements, config.trigger, accumulating)
    contradictions = check_firing_points(fired, accumulating)
    measures = measure_panes(fired, elements, config, len(contradictions))
    return fired, measures, capture.stalled


# Arrivals e0..e7: e4 arrives late but within 5 s of lateness, e6 and e7
# arrive after the watermark passed their window's end plus 5 s.
LATE_STREAM = (
    ("e0", 1, None),
    ("e1", 2, -2),
    ("e2", 3, -1),
    ("e3", 15, 0),
    ("e4", 5, 12),
    ("e5", 25, 12),
    ("e6", 7, 22),
    ("e7", 8, 22),
)


def test_head_processing_times_known_answer():
    times = head_processing_times([BASE + 1, BASE + 2, BASE + 15, BASE + 5, BASE + 25])

    assert times == [0.0, 1.0, 14.0, 14.0, 24.0]


def test_make_elements_backward_watermark():
    with pytest.raises(ValueError, match="Watermark moves backwards at arrival 1"):
        stream(("a", 1, 5), ("b", 2, 4))


def test_make_elements_small_event_times():
    with pytest.raises(ValueError, match="is not after the last processing time"):
        make_elements(["a", "b"], [5.0, 20.0], [NO_WATERMARK, NO_WATERMARK])


def test_late_events_accepted_and_dropped(tmp_path):
    elements = stream(*LATE_STREAM)

    fired, measures, stalled = replay(
        elements, "fixed:10s", "watermark+late=count:1", "5s", tmp_path=tmp_path)

    timings = [(item.pane.window_start - BASE, item.timing, item.pane.ids) for item in fired]
    assert timings == [
        (0.0, ON_TIME, ("e0", "e1", "e2")),
        (0.0, LATE, ("e4",)),
        (10.0, ON_TIME, ("e3",)),
        (20.0, ON_TIME, ("e5",)),
    ]
    assert measures.late_accepted == 1
    assert measures.late_dropped == 2
    assert measures.unemitted == 0
    assert measures.dropped_mismatches == 0
    assert measures.firing_contradictions == 0
    assert not stalled


def test_latency_from_schedule(tmp_path):
    elements = stream(*LATE_STREAM)

    fired, measures, _ = replay(
        elements, "fixed:10s", "watermark+late=count:1", "5s", tmp_path=tmp_path)

    # [0, 10) closes when the watermark reaches 10 at arrival 4 (clock 14).
    # [10, 20) closes at arrival 6 (clock 24) and [20, 30) at the final
    # step (clock 24). The late e4 fires on arrival. So the latencies are
    # 14, 13, 12, 10, 0 and 0.
    points = [(item.step, item.phase, item.processing_time) for item in fired]
    assert points == [
        (4, PHASE_WATERMARK, 14.0),
        (4, PHASE_ELEMENT, 14.0),
        (6, PHASE_WATERMARK, 24.0),
        (8, PHASE_WATERMARK, 24.0),
    ]
    assert measures.latency_p50_s == pytest.approx(11.0)
    assert measures.latency_p95_s == pytest.approx(13.75)


def test_completeness_with_dropped_events(tmp_path):
    elements = stream(*LATE_STREAM)

    _, measures, _ = replay(elements, "fixed:10s", "watermark", tmp_path=tmp_path)

    # Without lateness e4, e6 and e7 are all dropped: 5 of 8 are on time.
    assert measures.on_time_completeness == pytest.approx(5 / 8)
    assert measures.late_dropped == 3
    assert measures.panes_on_time == 3
    assert measures.panes_late == 0


def test_count_trigger_pane_counts(tmp_path):
    elements = stream(
        ("a", 1, None), ("b", 2, None), ("c", 3, None), ("d", 4, None), ("e", 5, None))

    fired, measures, stalled = replay(elements, "fixed:10s", "count:2", tmp_path=tmp_path)

    assert [item.pane.ids for item in fired] == [("a", "b"), ("c", "d")]
    assert [item.step for item in fired] == [1, 3]
    assert measures.panes_early == 2
    assert measures.panes_on_time == 0
    # The last partial pane never fires, and its watermark hold stalls Beam.
    assert measures.unemitted == 1
    assert stalled


def test_early_count_completeness(tmp_path):
    elements = stream(
        ("a", 1, None), ("b", 2, 0), ("c", 3, 1), ("d", 12, 2), ("late", 4, 11))

    fired, measures, _ = replay(
        elements, "fixed:10s", "watermark+early=count:2", tmp_path=tmp_path)

    first_window = [(item.timing, item.pane.ids) for item in fired if item.pane.window_start == BASE]
    assert first_window == [(EARLY, ("a", "b")), (ON_TIME, ("c",))]
    assert measures.on_time_completeness == pytest.approx(4 / 5)
    assert measures.late_dropped == 1


def test_accumulating_duplicates(tmp_path):
    elements = stream(("a", 1, None), ("b", 2, None), ("c", 3, None))

    fired, measures, _ = replay(
        elements, "fixed:10s", "watermark+early=count:1", accumulation="accumulating",
        tmp_path=tmp_path)

    assert [len(item.pane.ids) for item in fired] == [1, 2, 3, 3]
    assert measures.duplicates == 6
    assert measures.panes_early == 3
    assert measures.panes_on_time == 1


def test_early_time_firing_point(tmp_path):
    # The clock follows the largest event time: 0, 2, 4, 6, 8. A 3 s timer
    # set by "a" at clock 0 fires when the clock reaches 4, before "c". The
    # timer set by "e" fires in the final clock advance, before the
    # watermark jumps to infinity.
    elements = stream(("a", 1, None), ("b", 3, None), ("c", 5, None), ("d", 7, None), ("e", 9, None))

    fired, measures, _ = replay(
        elements, "fixed:10s", "watermark+early=time:3s", tmp_path=tmp_path)

    early = [item for item in fired if item.timing == EARLY]
    assert [(item.step, item.phase, item.pane.ids) for item in early] == [
        (2, PHASE_CLOCK, ("a", "b")),
        (4, PHASE_CLOCK, ("c", "d")),
        (5, PHASE_CLOCK, ("e",)),
    ]
    assert measures.firing_contradictions == 0


def test_late_processing_time_relabelled(tmp_path):
    # A repeated processing-time trigger fires "late" after the watermark
    # passed its window; Beam 2.77 labels that pane EARLY.
    elements = stream(("a", 1, None), ("b", 12, 10), ("late", 5, 10), ("c", 20, 11))

    fired, measures, _ = replay(elements, "fixed:10s", "time:2s", "30s", tmp_path=tmp_path)

    late_pane = next(item for item in fired if "late" in item.pane.ids)
    assert late_pane.pane.timing == EARLY
    assert late_pane.timing == LATE
    assert measures.relabelled_panes >= 1
    assert measures.late_accepted == 1


def test_sessions_merge_and_measure(tmp_path):
    elements = stream(
        ("a", 1, None), ("b", 2, None), ("c", 20, 0), ("d", 21, 15), ("e", 40, 16))

    fired, measures, _ = replay(elements, "session:5s", "watermark", tmp_path=tmp_path)

    sessions = [(item.pane.window_start - BASE, item.pane.window_end - BASE) for item in fired]
    assert sessions == [(1.0, 7.0), (20.0, 26.0), (40.0, 45.0)]
    assert measures.assignments == 5
    assert measures.on_time_completeness == pytest.approx(1.0)


@pytest.mark.parametrize("window,trigger,lateness,accumulation", [
    ("fixed:10s", "watermark+early=count:3", "0s", "accumulating"),
    ("fixed:10s", "watermark+early=time:4s+late=count:1", "30s", "discarding"),
    ("sliding:20s/5s", "watermark+late=count:1", "20s", "accumulating"),
    ("fixed:10s", "time:5s", "10s", "discarding"),
])
def test_firing_points_match_contents(window, trigger, lateness, accumulation, tmp_path):
    rng = random.Random(7)
    delays = [rng.uniform(0, 20) if rng.random() < 0.3 else 0.0 for _ in range(80)]
    order = sorted(range(80), key=lambda index: index + delays[index])
    watermarks, head = [], -math.inf
    for index in order:
        watermarks.append(head - 5 if head > -math.inf else None)
        head = max(head, float(index))
    elements = stream(*[(f"e{index}", index, mark) for index, mark in zip(order, watermarks)])

    _, measures, _ = replay(elements, window, trigger, lateness, accumulation, tmp_path=tmp_path)

    assert measures.firing_contradictions == 0
    assert measures.dropped_mismatches == 0


def test_prequential_scores_each_event_once(tmp_path):
    elements = stream(("a", 1, None), ("b", 2, None), ("c", 3, None))
    fired, _, _ = replay(
        elements, "fixed:10s", "watermark+early=count:1", accumulation="accumulating",
        tmp_path=tmp_path)
    events = {
        event_id: Event(id=event_id, event_time=BASE + offset, features=(float(offset),), label=offset % 2)
        for event_id, offset in (("a", 1), ("b", 2), ("c", 3))
    }

    result = evaluate_prequential(
        fired, events, ModelConfig(task="classification", num_inputs=1, num_outputs=2))

    assert [item.event_time - BASE for item in result.scored] == [1.0, 2.0, 3.0]
    assert result.trained_examples == 9
    assert 0.0 <= result.metrics["accuracy"] <= 1.0


def test_grid_file_settings_and_product(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(
        "defaults:\n"
        "  window: fixed:30m\n"
        "  max_out_of_orderness: 5m\n"
        "settings:\n"
        "  - name: base\n"
        "  - name: early\n"
        "    trigger: watermark+early=count:10\n"
        "    allowed_lateness: 90\n"
        "product:\n"
        "  accumulation: [discarding, accumulating]\n")

    settings = grid_lib.read_grid(str(path))

    assert [setting.name for setting in settings] == [
        "base", "early", "accumulation=discarding", "accumulation=accumulating"]
    assert settings[0].max_out_of_orderness == 300.0
    assert settings[1].allowed_lateness == 90.0
    assert settings[3].window == "fixed:30m"


def test_grid_json_file(tmp_path):
    path = tmp_path / "grid.json"
    path.write_text('{"settings": [{"name": "w", "window": "sliding:1h/15m"}]}')

    settings = grid_lib.read_grid(str(path))

    assert settings[0].window == "sliding:1h/15m"


@pytest.mark.parametrize("document,message", [
    ({"setings": []}, "Unknown grid key 'setings'"),
    ({"settings": [{"name": "a", "windw": "fixed:1m"}]}, "Unknown setting field 'windw'"),
    ({"settings": [{"trigger": "watermark"}]}, "A setting has no name"),
    ({"settings": [{"name": "a"}, {"name": "a"}]}, "Duplicate setting name 'a'"),
    ({"settings": [{"name": "a", "window": "fixed:soon"}]}, "Setting 'a': Invalid window spec"),
    ({"settings": [{"name": "a", "allowed_lateness": "5 minutes"}]}, "Invalid allowed_lateness"),
    ({"settings": [{"name": "a", "late_fraction": "many"}]}, "Invalid late_fraction 'many'"),
    ({"product": {"trigger": []}}, "the list of values is empty"),
    ({"defaults": {"window": "fixed:1m"}}, "it needs 'settings', 'product' or both"),
    ([1, 2], "expected a mapping"),
])
def test_grid_rejects_bad_input(document, message):
    with pytest.raises(ValueError, match=message):
        grid_lib.parse_grid(document)


def test_grid_rejects_late_processing_time():
    with pytest.raises(ValueError, match="late processing-time firings"):
        grid_lib.make_setting({
            "name": "t", "trigger": "watermark+late=time:30s", "allowed_lateness": 60})


def test_grid_rejects_unparseable_file(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("settings: [unclosed\n")

    with pytest.raises(ValueError, match="not YAML or JSON"):
        grid_lib.read_grid(str(path))


def test_default_grid_scales_with_spacing():
    minutes = grid_lib.default_grid(60.0)
    seconds = grid_lib.default_grid(1.0)

    assert minutes[0].window == "fixed:30m"
    assert seconds[0].window == "fixed:30s"
    assert 6 <= len(minutes) <= 10


def test_cli_rejects_grid_file_with_flags(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("settings: [{name: a}]\n")
    args = windowing_lab_cli.build_parser().parse_args(
        ["--grid", str(path), "--window", "fixed:1m"])

    with pytest.raises(ValueError, match="both define the grid"):
        windowing_lab_cli.choose_settings(args, 60.0)


def test_grid_run_is_deterministic(tmp_path):
    stream_data = lab.load_stream(sources.SourceConfig(dataset="sea", max_events=80))
    settings = grid_lib.settings_from_values({
        "trigger": ["watermark+early=count:10", "count:20"],
        "max_out_of_orderness": ["3"],
        "disorder_fraction": [0.3],
        "max_disorder": ["8"],
    })

    tables = []
    for attempt in range(2):
        results = lab.run_grid(stream_data, settings, seed=3)
        output_dir = tmp_path / f"run{attempt}"
        report.write_outputs(results, stream_data, 3, str(output_dir))
        tables.append((output_dir / report.TABLE_FILE).read_bytes())

    assert tables[0] == tables[1]


def test_cli_default_grid_small(tmp_path, capsys):
    output_dir = tmp_path / "lab"

    text = windowing_lab_cli.run(["--max_events", "100", "--output_dir", str(output_dir)])

    table = pa_csv.read_csv(str(output_dir / report.TABLE_FILE))
    assert table.num_rows == len(grid_lib.default_grid(60.0))
    assert "early-count" in text
    assert "early-count" in capsys.readouterr().out
    for name in (report.PARQUET_FILE, report.LATENCY_PLOT_FILE,
                 report.ACCURACY_PLOT_FILE, report.REPORT_FILE):
        assert os.path.getsize(output_dir / name) > 0
    assert all(value is not None for value in table.column("accuracy").to_pylist())
