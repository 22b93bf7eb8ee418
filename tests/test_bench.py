"""Smoke and known-answer tests of the benchmark suite (``python -m bench``)."""

import logging
import math
import os
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import __main__ as bench_main
from bench import engines as engines_lib
from bench import fit
from bench import memory
from bench import report
from bench.results import Row, markdown_table
from transforms import dead_letter
from transforms import validate
from transforms import windowing

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

QUICK_ROWS = {
    "throughput/plain PyTorch loop/-",
    "throughput/plain PyTorch loop, model only/-",
    "throughput/online_train, per event/fnapi",
    "freshness/version to first prediction, per event/fnapi",
    "throughput/online_train, blocks of 64/fnapi",
    "freshness/version to first prediction, blocks of 64/fnapi",
    "throughput/online_train, per event/flink",
    "throughput/online_train, blocks of 64/flink",
    "throughput/plain PyTorch loop, fixed:1h windows/-",
    "throughput/online_train, blocks of 64, fixed:1h windows/fnapi",
    "freshness/version to first prediction, blocks of 64, fixed:1h windows/fnapi",
    "throughput/online_train, blocks of 64, without per-window costs (fit)/fnapi",
    "peers/River StandardScaler / LogisticRegression/-",
    "peers/River HoeffdingTreeClassifier/-",
    "inference/plain model(x), batches of 256/-",
    "inference/VersionedInference/fnapi",
    "inference/RunInference + PytorchModelHandlerTensor/fnapi",
    "inference/VersionedInference/flink",
    "profile/plain PyTorch loop, self time per event (us)/-",
    "profile/online_train (fnapi, per event), self time per event (us)/fnapi",
    "profile/online_train (fnapi, blocks of 64), self time per event (us)/fnapi",
    "memory/imports only (beam, torch, river)/-",
    "memory/plain PyTorch loop, peak RSS/-",
    "memory/online_train, per event, peak RSS/fnapi",
    "memory/online_train, blocks of 64, peak RSS/fnapi",
    "memory/online_train, blocks of 64, one pipeline, peak RSS/fnapi",
}
# Without Go, Prism cannot be built and its rows contain only the reason.
QUICK_PRISM_SKIPPED_ROWS = {
    "throughput/online_train, per event/prism",
    "throughput/online_train, blocks of 64/prism",
    "inference/VersionedInference/prism",
    "memory/online_train, blocks of 64, peak RSS/prism_streaming",
    "memory/online_train, blocks of 64, replay paced at 1,000 events/s, peak RSS/prism_streaming",
    "memory/replay alone, blocks of 64, peak RSS/prism_streaming",
}
QUICK_PRISM_ROWS = QUICK_PRISM_SKIPPED_ROWS | {
    "freshness/version to first prediction, per event/prism",
    "freshness/version to first prediction, blocks of 64/prism",
    "inference/RunInference + PytorchModelHandlerTensor/prism",
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
def prism_engine():
    """Prism as the benchmark resolves it, building it with Go on first use."""
    return engines_lib.resolve_engines(["prism"])[0]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    docs_dir = tmp_path_factory.mktemp("docs")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--engines=fnapi,prism,flink", "--block_size=64",
         f"--docs_dir={docs_dir}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout, docs_dir


@pytest.mark.timeout(300)
def test_quick_run_has_every_row(quick_run, prism_engine):
    output, _ = quick_run
    rows = _table_rows(output)
    assert set(rows) == QUICK_ROWS | (QUICK_PRISM_SKIPPED_ROWS if prism_engine.unavailable else QUICK_PRISM_ROWS)
    failed = {key: cells["detail"] for key, cells in rows.items() if cells["detail"].startswith("failed")}
    assert failed == {}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["per event", "blocks of 64"])
def test_quick_run_pipeline_matches_plain_loop(quick_run, mode):
    # The same model, seed, windows and TrainerConfig must give the same
    # prequential accuracy inside and outside Beam, per event and in blocks.
    rows = _table_rows(quick_run[0])
    online = rows[f"throughput/online_train, {mode}/fnapi"]
    assert online["accuracy"] == rows["throughput/plain PyTorch loop/-"]["accuracy"]
    assert float(online["events/s"].replace(",", "")) > 0
    assert online["vs plain loop"] != ""


@pytest.mark.timeout(300)
def test_quick_run_reports_flink_skip(quick_run):
    rows = _table_rows(quick_run[0])
    for mode in ("per event", "blocks of 64"):
        detail = rows[f"throughput/online_train, {mode}/flink"]["detail"]
        assert detail.startswith("skipped: no Beam Flink job server jar")


@pytest.mark.timeout(300)
def test_quick_run_memory_rows(quick_run):
    rows = _table_rows(quick_run[0])
    for mode in ("per event", "blocks of 64"):
        cells = rows[f"memory/online_train, {mode}, peak RSS/fnapi"]
        assert cells["events"] == "600"
        assert cells["detail"].startswith("peak RSS ")


@pytest.mark.timeout(300)
def test_quick_run_memory_prism_streaming(quick_run, prism_engine):
    if prism_engine.unavailable:
        pytest.skip(f"Prism's memory scan did not run: {prism_engine.unavailable}")
    rows = _table_rows(quick_run[0])
    for case in ("online_train", "online_train, blocks of 64, replay paced at 1,000 events/s", "replay alone"):
        label = case if "blocks of" in case else f"{case}, blocks of 64"
        cells = rows[f"memory/{label}, peak RSS/prism_streaming"]
        assert cells["events"] == "600"
        assert "; job peak " in cells["detail"]
        assert "up to 2 processes" in cells["detail"]
        assert "sampled every 100 ms" in cells["detail"]
        assert "Prism's live Go heap after garbage collection peaked at " in cells["detail"]
        assert "the child's C heap in use (mallinfo2) was " in cells["detail"]
    paced = rows["memory/online_train, blocks of 64, replay paced at 1,000 events/s, peak RSS/prism_streaming"]
    assert "; replay paced at 1,000 events/s, which alone takes 1 s" in paced["detail"]


@pytest.mark.timeout(300)
def test_quick_run_appends_docs(quick_run):
    output, docs_dir = quick_run
    with open(os.path.join(docs_dir, "benchmarks.md")) as file:
        text = file.read()
    assert "Command: `python -m bench --quick --engines=fnapi,prism,flink" in text
    assert "Apache Beam 2.77.0" in text
    assert "| throughput | online_train, blocks of 64 | fnapi | 600 |" in text
    assert "**online_train (fnapi, blocks of 64)**: 600 events" in text


def _parse(*flags):
    return bench_main.build_parser().parse_args(list(flags))


def _timed(case, engine, seconds, events=1_000):
    return Row("throughput", case, engine, events=events, seconds=seconds, events_per_s=events / seconds)


def test_fit_costs_known_answer():
    # 1,000 events at 100 us each, plus 10 ms per window, over 10 and 2 windows.
    costs = fit.fit_costs(1_000, short_s=0.2, short_windows=10, long_s=0.12, long_windows=2)

    assert costs.per_event_s == pytest.approx(1e-4)
    assert costs.per_window_s == pytest.approx(0.01)


def test_fit_costs_rejects_equal_windows():
    with pytest.raises(ValueError, match=r"both runs have 4 serving windows; use a --long_window longer"):
        fit.fit_costs(1_000, 0.2, 4, 0.1, 4)


def test_per_event_floor_row_known_answer():
    # Plain loop: 20 us per event and 1 ms per window. Job: 50 us and 20 ms.
    plain_short, plain_long = _timed("plain", "-", 0.02 + 0.010), _timed("plain", "-", 0.02 + 0.002)
    job_short, job_long = _timed("job", "fnapi", 0.05 + 0.2), _timed("job", "fnapi", 0.05 + 0.04)

    row = fit.per_event_floor_row("job, fit", plain_short, job_short, plain_long, job_long, 10, 2)

    assert row.events_per_s == pytest.approx(20_000)
    assert row.vs_plain == pytest.approx(0.4)
    assert "20.0 ms per serving window and 50.0 us per event, the plain loop 1.00 ms and 20.0 us" in row.detail


def test_per_event_floor_row_noisy_and_failed():
    plain = _timed("plain", "-", 0.02)
    # The time fell by more than the windows explain: the fitted per-event cost is negative.
    row = fit.per_event_floor_row("job, fit", plain, _timed("job", "fnapi", 1.0), plain,
                                  _timed("job", "fnapi", 0.1), 10, 2)
    assert row.events_per_s is None
    assert row.detail.startswith("no estimate: a fitted cost per event is not positive")

    failed = Row("throughput", "job", "fnapi", detail="failed: RuntimeError")
    assert fit.per_event_floor_row("job, fit", plain, failed, plain, _timed("job", "fnapi", 0.3), 10, 2) is None


def test_sizes_memory_scans_large():
    sizes = bench_main._sizes(_parse("--large"), ["fnapi", "streaming", "prism"])
    assert sizes.memory_scans == (
        memory.MemoryScan("fnapi", 0, (10_000, 30_000, 100_000)),
        memory.MemoryScan("fnapi", 256, (10_000, 100_000, 400_000, 1_000_000, 10_000_000)),
        memory.MemoryScan("fnapi", 256, (1_000_000,), segment_events=0),
        memory.MemoryScan("streaming", 256, (10_000, 100_000)),
        memory.MemoryScan("prism_streaming", 256, (10_000, 100_000)),
        memory.MemoryScan("prism_streaming", 256, (10_000, 100_000, 1_000_000), replay_rate=1_000),
        memory.MemoryScan("prism_streaming", 256, (10_000, 100_000, 1_000_000), case="replay"),
    )


def test_sizes_quick_and_skipped_scans():
    sizes = bench_main._sizes(_parse("--quick", "--block_size=64"), ["fnapi"])
    assert (sizes.events, sizes.block_events, sizes.streaming_block_events) == (600, 600, 600)
    assert sizes.memory_scans == (memory.MemoryScan("fnapi", 0, (600,)), memory.MemoryScan("fnapi", 64, (600,)),
                                  memory.MemoryScan("fnapi", 64, (600,), segment_events=0))

    sizes = bench_main._sizes(_parse("--quick", "--block_size=64"), ["prism"])
    assert sizes.memory_scans == (memory.MemoryScan("prism_streaming", 64, (600,)),
                                  memory.MemoryScan("prism_streaming", 64, (600,), replay_rate=1_000),
                                  memory.MemoryScan("prism_streaming", 64, (600,), case="replay"))

    sizes = bench_main._sizes(_parse("--memory_sizes=", "--one_pipeline_memory_sizes=",
                                     "--streaming_block_memory_sizes=5000"), ["fnapi", "streaming"])
    assert [(scan.engine, scan.block_size) for scan in sizes.memory_scans] == [("fnapi", 256), ("streaming", 256)]
    assert sizes.memory_scans[1].sizes == (5_000,)

    sizes = bench_main._sizes(_parse("--prism_streaming_memory_sizes=", "--replay_memory_sizes=",
                                     "--paced_memory_sizes=20000", "--prism_replay_rate=500"), ["prism"])
    assert sizes.memory_scans == (memory.MemoryScan("prism_streaming", 256, (20_000,), replay_rate=500),)


def test_sizes_events_for_engine_and_mode():
    sizes = bench_main._sizes(_parse(), ["fnapi"])
    fnapi, streaming = engines_lib.resolve_engines(["fnapi", "streaming"])
    assert sizes.events_for(fnapi, 0) == 20_000
    assert sizes.events_for(fnapi, 256) == 200_000
    assert sizes.events_for(streaming, 0) == 5_000
    assert sizes.events_for(streaming, 256) == 50_000


def test_sizes_rejects_bad_flags():
    with pytest.raises(ValueError, match=r"--block_size must be at least 1 event per element, got 0"):
        bench_main._sizes(_parse("--block_size=0"), ["fnapi"])
    with pytest.raises(ValueError, match=r"--block_memory_sizes '10k' is not a comma-separated list"):
        bench_main._sizes(_parse("--block_memory_sizes=10k"), ["fnapi"])
    with pytest.raises(ValueError, match=r"--block_max_events must be at least 100 events to measure anything, "
                                         r"got 50"):
        bench_main._sizes(_parse("--block_max_events=50"), ["fnapi"])
    with pytest.raises(ValueError, match=r"--memory_sizes must list positive stream lengths, got 0"):
        bench_main._sizes(_parse("--memory_sizes=0,10000"), ["fnapi"])
    with pytest.raises(ValueError, match=r"--prism_replay_rate must be a positive, finite number of events per "
                                         r"second, got 0.0\. To skip the paced scan, pass --paced_memory_sizes="):
        bench_main._sizes(_parse("--prism_replay_rate=0"), ["prism"])


def test_memory_scan_rejects_bad_values():
    with pytest.raises(ValueError, match=r"Invalid memory scan engine 'prism': expected one of fnapi, streaming, "
                                         r"prism_streaming"):
        memory.MemoryScan("prism", 256, (10_000,))
    with pytest.raises(ValueError, match=r"Invalid memory scan engine 'flink'"):
        memory.scan_engine("flink")
    with pytest.raises(ValueError, match=r"Invalid memory scan block size -1"):
        memory.MemoryScan("fnapi", -1, (10_000,))
    with pytest.raises(ValueError, match=r"Invalid memory scan case 'plain': expected one of online_train, replay"):
        memory.MemoryScan("fnapi", 256, (10_000,), case="plain")
    with pytest.raises(ValueError, match=r"Invalid memory scan replay rate -5"):
        memory.MemoryScan("prism_streaming", 256, (10_000,), replay_rate=-5)
    with pytest.raises(ValueError, match=r"A memory scan on fnapi cannot pace its replay, because only the "
                                         r"streaming replay on prism_streaming follows a replay rate"):
        memory.MemoryScan("fnapi", 256, (10_000,), replay_rate=1_000)
    with pytest.raises(ValueError, match=r"A memory scan of online_train on prism_streaming cannot set "
                                         r"segment_events: only online_train on fnapi or streaming runs in "
                                         r"segments"):
        memory.MemoryScan("prism_streaming", 256, (10_000,), segment_events=0)


@pytest.mark.timeout(60)
def test_memory_child_streaming_blocks():
    child = memory.run_child("online_train", "sea", 300, torch_threads=1, engine="streaming", block_size=64)
    assert (child["engine"], child["block_size"], child["max_events"]) == ("streaming", 64, 300)
    assert child["peak_rss_mb"] >= child["start_rss_mb"] > 0
    assert child["seconds"] > 0


def test_memory_rows_skip_unavailable_prism(monkeypatch):
    def unavailable_engine(name):
        return engines_lib.Engine(name, "PrismRunner (LOOPBACK), --streaming", unavailable="Go is not installed")

    monkeypatch.setattr(memory, "scan_engine", unavailable_engine)
    rows = memory.memory_rows("sea", [memory.MemoryScan("prism_streaming", 256, (10_000,))], torch_threads=1)
    assert [(row.key, row.events, row.detail) for row in rows] == [
        ("memory/online_train, blocks of 256, peak RSS/prism_streaming", None, "skipped: Go is not installed"),
    ]


def test_scan_engine_prism_streaming_flags(prism_engine):
    engine = memory.scan_engine("prism_streaming")
    assert engine.unavailable == prism_engine.unavailable
    if engine.unavailable:
        assert engine.pipeline_args == ()
        return
    assert engine.pipeline_args[:len(prism_engine.pipeline_args)] == prism_engine.pipeline_args
    assert engine.pipeline_args[len(prism_engine.pipeline_args):] == ("--streaming",)


_ALLOCATE_AND_WAIT = (
    "import sys, time\n"
    "block = bytearray(200 * 1024 * 1024)\n"
    "for offset in range(0, len(block), 4096): block[offset] = 1\n"
    "print('ready', flush=True)\n"
    "time.sleep(30)\n"
)


def test_descendant_pids_grandchild():
    # A shell whose child is a sleep: both are below this process.
    shell = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 10
        while len(memory.descendant_pids(os.getpid())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        found = memory.descendant_pids(os.getpid())
        assert found[0] == shell.pid
        assert len(found) == 2
    finally:
        shell.kill()
        shell.wait()


@pytest.mark.timeout(60)
def test_process_tree_sampler_child_allocation():
    sampler = memory.ProcessTreeSampler(period_s=0.05).start()
    child = subprocess.Popen([sys.executable, "-c", _ALLOCATE_AND_WAIT], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        time.sleep(0.3)
        sampler.stop()
    finally:
        child.kill()
        child.wait()

    # The child touched every page of 200 MiB, on top of an interpreter of
    # about 10 MiB, and this process allocated nothing large meanwhile.
    growth_mb = sampler.peak_mb - sampler.start_mb
    assert 200 <= growth_mb < 260
    assert sampler.max_processes == 2
    assert sampler.samples >= 4
    if memory.malloc_in_use_mb() is not None:
        # The C heap sampled is this process's own, which allocated nothing large.
        assert sampler.heap_peak_mb - sampler.heap_start_mb < 50


def test_pace_detail_flags_a_job_behind():
    assert memory._pace_detail(100_000, 1_000, 106.5) == "; replay paced at 1,000 events/s, which alone takes 100 s"
    assert memory._pace_detail(100_000, 1_000, 150.0).endswith("fell behind its replay and Prism held a backlog: "
                                                                "lower --prism_replay_rate)")


def test_malloc_in_use_follows_allocation():
    import ctypes

    before_mb = memory.malloc_in_use_mb()
    if before_mb is None:
        pytest.skip("the C library has no mallinfo2 (glibc 2.33 or later)")
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    block = libc.malloc(64 * 2**20)
    try:
        during_mb = memory.malloc_in_use_mb()
    finally:
        libc.free(ctypes.c_void_p(block))

    assert 64 <= during_mb - before_mb < 70
    assert memory.malloc_in_use_mb() - before_mb < 6


def test_go_heap_trace_reads_gctrace(monkeypatch):
    monkeypatch.setenv("GODEBUG", "madvdontneed=1")
    logger = logging.getLogger("test_bench.go_process")
    trace = memory.GoHeapTrace().install(logger.name)
    passed = []
    logger.addHandler(_ListHandler(passed))
    try:
        logger.info("gc 1 @0.007s 3%: 0.015+3.7+0.005 ms clock, 0.03+0.2/0.4/3.0+0.01 ms cpu, 3->4->2 MB, "
                    "4 MB goal, 0 MB stacks, 0 MB globals, 2 P")
        logger.info('{"level":"INFO","msg":"Serving JobManagement"}')
        logger.info("gc 2 @12.5s 0%: 0.05+2.1+0.004 ms clock, 0.1+0.2/0.8/1.2+0.009 ms cpu, 47->48->23 MB, "
                    "48 MB goal, 0 MB stacks, 0 MB globals, 2 P")
        logger.info("gc 3 @20.1s 0%: 0.03+7.4+0.05 ms clock, 0.07+2.0/2.7/0.3+0.1 ms cpu, 30->31->16 MB, "
                    "32 MB goal, 0 MB stacks, 0 MB globals, 2 P")
    finally:
        logger.removeFilter(trace)
        logger.handlers.clear()

    assert os.environ["GODEBUG"] == "madvdontneed=1,gctrace=1"
    assert trace.collections == 3
    assert trace.peak_mb == 23
    assert trace.last_mb == 16
    assert [record.getMessage() for record in passed] == ['{"level":"INFO","msg":"Serving JobManagement"}']


class _ListHandler(logging.Handler):
    def __init__(self, records):
        super().__init__()
        self.records = records

    def emit(self, record):
        self.records.append(record)


def test_process_tree_sampler_rejects_bad_period():
    with pytest.raises(ValueError, match=r"Invalid period_s 0: expected a positive number of seconds"):
        memory.ProcessTreeSampler(period_s=0)


def test_plot_scaling_series(tmp_path):
    rows = [Row("memory", "imports only (beam, torch, river)", events=0, peak_rss_mb=900.0)]
    for size, rate in ((1_000, 500.0), (10_000, 2_000.0)):
        rows.append(Row("memory", "plain PyTorch loop, peak RSS", events=size, events_per_s=rate * 10,
                        peak_rss_mb=950.0))
        rows.append(Row("memory", "online_train, blocks of 256, peak RSS", "fnapi", events=size,
                        events_per_s=rate, peak_rss_mb=1_000.0))
    path = tmp_path / "img" / "plot.png"
    assert report.plot_scaling(rows, str(path))
    assert path.read_bytes().startswith(b"\x89PNG")


def test_plot_scaling_needs_two_sizes(tmp_path):
    rows = [Row("memory", "online_train, per event, peak RSS", "fnapi", events=600, events_per_s=100.0,
                peak_rss_mb=950.0)]
    path = tmp_path / "plot.png"
    assert not report.plot_scaling(rows, str(path))
    assert not path.exists()


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

