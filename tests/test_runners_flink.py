"""Local Flink cluster: configuration, startup, and pipelines on FlinkRunner."""

import json
import os
import urllib.request

import pytest
import yaml

from runners import process_boot
from runners.flink import assemble
from runners.flink import cluster
from tests import runner_fixtures


def _fake_flink_home(tmp_path):
    conf = tmp_path / "flink" / "conf"
    conf.mkdir(parents=True)
    (conf / "config.yaml").write_text(
        "jobmanager:\n  bind-host: localhost\n  rpc:\n    address: localhost\n"
        "env:\n  java:\n    opts:\n      all: --add-opens=java.base/java.lang=ALL-UNNAMED\n")
    (conf / "log4j-console.properties").write_text("rootLogger.level = INFO\n")
    return str(tmp_path / "flink")


def test_config_binds_loopback(tmp_path):
    conf_dir = cluster.write_config(_fake_flink_home(tmp_path),
                                    str(tmp_path / "work"), rest_port=18081)

    with open(os.path.join(conf_dir, "config.yaml")) as source:
        config = yaml.safe_load(source)
    assert config["rest"] == {"address": "127.0.0.1",
                              "bind-address": "127.0.0.1", "port": 18081}
    assert config["jobmanager"]["bind-host"] == "127.0.0.1"
    assert config["jobmanager"]["rpc"]["address"] == "127.0.0.1"
    assert config["taskmanager"]["bind-host"] == "127.0.0.1"
    assert config["taskmanager"]["host"] == "127.0.0.1"


def test_config_keeps_java_opts_and_logging(tmp_path):
    conf_dir = cluster.write_config(_fake_flink_home(tmp_path),
                                    str(tmp_path / "work"), rest_port=18081)

    with open(os.path.join(conf_dir, "config.yaml")) as source:
        config = yaml.safe_load(source)
    assert config["env"]["java"]["opts"]["all"].startswith("--add-opens")
    assert os.path.isfile(os.path.join(conf_dir, "log4j-console.properties"))


def test_config_sets_checkpoint_dirs(tmp_path):
    work_dir = tmp_path / "work"
    conf_dir = cluster.write_config(_fake_flink_home(tmp_path), str(work_dir),
                                    rest_port=18081)

    with open(os.path.join(conf_dir, "config.yaml")) as source:
        state = yaml.safe_load(source)["state"]
    assert state["backend"]["type"] == "hashmap"
    assert state["checkpoints"]["dir"] == f"file://{work_dir}/checkpoints"
    assert (work_dir / "checkpoints").is_dir()


def test_job_server_artifact_coordinates():
    assert assemble.job_server_artifact("1.20", "2.77.0") == (
        "org.apache.beam:beam-runners-flink-1.20-job-server:2.77.0:jar")


def test_job_server_override_missing(tmp_path, monkeypatch):
    missing = str(tmp_path / "missing.jar")
    monkeypatch.setenv(assemble.JOB_SERVER_JAR_ENV, missing)

    with pytest.raises(assemble.DownloadError, match="is not a file"):
        assemble.fetch_job_server_jar()


def test_load_cluster_without_state(tmp_path):
    with pytest.raises(FileNotFoundError, match="No Flink cluster state"):
        cluster.load_cluster(str(tmp_path))


def test_cluster_overview_ready(flink_cluster):
    url = f"http://{flink_cluster.master}/overview"
    with urllib.request.urlopen(url, timeout=5) as response:
        overview = json.load(response)

    assert overview["taskmanagers"] == 1
    assert overview["slots-total"] == 2
    assert overview["flink-version"] == assemble.DEFAULT_FLINK_VERSION


def test_cluster_state_file_matches(flink_cluster):
    loaded = cluster.load_cluster(flink_cluster.work_dir)

    assert loaded.master == flink_cluster.master
    assert loaded.pids == flink_cluster.pids
    for name, pid in flink_cluster.pids.items():
        with open(os.path.join(flink_cluster.work_dir, f"{name}.pid")) as pid_file:
            assert int(pid_file.read()) == pid


@pytest.mark.parametrize(
    "extra_args",
    [
        pytest.param([], id="batch"),
        pytest.param(["--streaming", "--checkpointing_interval=1000"],
                     id="streaming_checkpointed"),
        pytest.param(["--environment_type=PROCESS"], id="process"),
    ])
def test_flink_state_and_side_input(flink_cluster, extra_args):
    if flink_cluster.job_server_jar is None:
        pytest.skip("Beam's Flink job server jar is not available; set "
                    f"{assemble.JOB_SERVER_JAR_ENV} to run pipelines on Flink")
    args = [
        "--runner=FlinkRunner",
        f"--flink_master={flink_cluster.master}",
        "--flink_version=1.20",
        f"--flink_job_server_jar={flink_cluster.job_server_jar}",
        "--parallelism=1",
    ] + extra_args
    if "--environment_type=PROCESS" in extra_args:
        args.append("--environment_config=" +
                    process_boot.process_environment_config())
    else:
        args.append("--environment_type=LOOPBACK")

    runner_fixtures.run_check_pipeline(args)
