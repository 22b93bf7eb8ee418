"""Kill the main job with SIGKILL mid-stream, then continue it with --resume."""

import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ml.store import METADATA_FILE, ModelStore

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_NAME = "sea-mlp"
# Small windows and many passes per pane publish a version every second or
# so, slow enough to kill the job between two versions.
JOB_ARGS = [
    "--runner=DirectRunner", "--dataset=sea", "--max_events=2000", "--window=fixed:1m",
    "--steps_per_pane=20", "--no_report",
]
KILL_AFTER_VERSION = 2
TIMEOUT_S = 120


def _start(output_dir, *extra):
    command = [sys.executable, "-m", "pipelines.online_train", f"--output_dir={output_dir}", *JOB_ARGS, *extra]
    return subprocess.Popen(
        command, cwd=REPOSITORY, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=REPOSITORY),
    )


def _wait_for_version(process, version_dir):
    deadline = time.monotonic() + TIMEOUT_S
    while not os.path.exists(os.path.join(version_dir, METADATA_FILE)):
        if process.poll() is not None:
            pytest.fail(f"the job exited with {process.returncode} before publishing {version_dir}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {version_dir} after {TIMEOUT_S} s")
        time.sleep(0.05)


def _check_store(store):
    """Check that every listed version is committed, loads and is numbered in order."""
    versions = store.versions(MODEL_NAME)
    assert [entry.version for entry in versions] == list(range(len(versions)))
    for entry in versions:
        assert store.read_version(entry.path) == entry
        assert store.load_model_state(entry.path)
        assert "tmp-" not in entry.path
    model_dir = os.path.join(store.root, MODEL_NAME)
    for path in glob.glob(os.path.join(model_dir, "v*")):
        listed = any(entry.path == path for entry in versions)
        assert listed == os.path.exists(os.path.join(path, METADATA_FILE)), path
    return versions


@pytest.fixture(scope="module")
def crashed_and_resumed(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("crash"))
    store = ModelStore(os.path.join(output_dir, "models"))

    first = _start(output_dir)
    _wait_for_version(first, os.path.join(store.root, MODEL_NAME, f"v{KILL_AFTER_VERSION:06d}"))
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    before = _check_store(store)
    metadata_before = {
        entry.version: open(os.path.join(entry.path, METADATA_FILE), "rb").read() for entry in before
    }

    second = _start(output_dir, "--resume")
    _, stderr = second.communicate(timeout=TIMEOUT_S)
    resumed = (second.returncode, stderr.decode(errors="replace")[-3000:])
    return store, before, metadata_before, first.returncode, resumed


def test_killed_by_sigkill(crashed_and_resumed):
    returncode = crashed_and_resumed[3]
    assert returncode == -signal.SIGKILL


def test_killed_store_is_consistent(crashed_and_resumed):
    before = crashed_and_resumed[1]
    assert before[-1].version >= KILL_AFTER_VERSION


def test_resume_exits_cleanly(crashed_and_resumed):
    returncode, stderr = crashed_and_resumed[4]
    assert returncode == 0, stderr


def test_resume_continues_from_newest(crashed_and_resumed):
    store, before = crashed_and_resumed[:2]

    after = _check_store(store)

    assert len(after) > len(before)
    resumed = after[len(before)]
    assert resumed.metadata["previous_version"] == before[-1].version
    assert resumed.training_watermark > before[-1].training_watermark
    watermarks = [entry.training_watermark for entry in after]
    assert watermarks == sorted(watermarks)


def test_resume_keeps_published_versions(crashed_and_resumed):
    store, before, metadata_before = crashed_and_resumed[:3]
    for entry in before:
        with open(os.path.join(entry.path, METADATA_FILE), "rb") as file:
            assert file.read() == metadata_before[entry.version], entry.version


def test_partial_version_not_listed(tmp_path):
    store = ModelStore(str(tmp_path))
    store.publish(MODEL_NAME, 0, {"w": torch.zeros(2)}, training_watermark=0.0)
    partial = os.path.join(str(tmp_path), MODEL_NAME, "v000001")
    os.makedirs(partial)
    with open(os.path.join(partial, "model.safetensors.tmp-0123"), "wb") as file:
        file.write(b"partial")
    with open(os.path.join(partial, "model.safetensors"), "wb") as file:
        file.write(b"not committed")

    assert [entry.version for entry in _check_store(store)] == [0]
    assert store.latest(MODEL_NAME).version == 0
