"""Prism: building the binary, and state, timers and side inputs on it."""

import os

import pytest

from runners import prism
from runners import process_boot
from tests import runner_fixtures


def test_prism_path_rejects_dev_version():
    with pytest.raises(ValueError, match=r"version='2\.78\.0\.dev' is not a Beam release"):
        prism.prism_path("2.78.0.dev")


def test_prism_path_without_go(tmp_path, monkeypatch):
    monkeypatch.setenv("BEAM_ONLINE_DL_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))

    with pytest.raises(prism.PrismBuildError, match="Go is not installed"):
        prism.prism_path("2.77.0")

    assert not os.path.exists(tmp_path / "prism" / "v2.77.0" / "prism")


def test_prism_path_reuses_cache(prism_location):
    assert prism.prism_path() == prism_location
    assert os.access(prism_location, os.X_OK)


def test_prism_cli_prints_path(prism_location, capsys):
    assert prism.main([]) == 0
    assert capsys.readouterr().out.strip() == prism_location


@pytest.mark.parametrize(
    "extra_args",
    [
        pytest.param([], id="batch"),
        pytest.param(["--streaming"], id="streaming"),
        pytest.param(["--environment_type=PROCESS"], id="process"),
    ])
def test_prism_state_and_side_input(prism_location, extra_args):
    args = prism.prism_pipeline_args(prism_location) + extra_args
    if "--environment_type=PROCESS" in extra_args:
        args.remove("--environment_type=LOOPBACK")
        args.append("--environment_config=" +
                    process_boot.process_environment_config())

    runner_fixtures.run_check_pipeline(args)
