"""Start and stop a local Flink session cluster bound to 127.0.0.1.

The cluster is one JobManager and one TaskManager, each a JVM started in the
foreground by Flink's own ``bin/jobmanager.sh`` and ``bin/taskmanager.sh``,
plus Beam's Flink job server when its jar is given. Every process writes a
pid file into the work directory, and ``stop_cluster`` signals exactly those
process ids. All ports are free ports picked at start, so several clusters
can run on one machine.

Command line::

    python -m runners.flink.cluster start --work_dir /tmp/flink [--job_server_jar JAR]
    python -m runners.flink.cluster stop --work_dir /tmp/flink

Pipelines then run with ``--runner=FlinkRunner --flink_master=<master>
--flink_version=1.20`` (or ``--runner=PortableRunner
--job_endpoint=<job_endpoint>`` when the job server runs here).
"""

import argparse
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Dict, Optional

import yaml

from runners.flink import assemble

_LOGGER = logging.getLogger(__name__)

HOST = "127.0.0.1"

# Measured on 2 cores: the JobManager serves /overview after about 10 s and
# the TaskManager registers a few seconds later.
_STARTUP_TIMEOUT_S = 120
_STOP_TIMEOUT_S = 30

_STATE_FILE = "cluster.json"

# Memory sizes small enough for a laptop or a CI machine. Flink's defaults
# are 1600m and 1728m; these still pass Flink's own minimum checks.
_JOBMANAGER_MEMORY = "1024m"
_TASKMANAGER_MEMORY = "1536m"
_TASK_SLOTS = 2


@dataclasses.dataclass
class FlinkCluster:
    """A running local cluster, as ``start_cluster`` returns it."""

    flink_home: str
    work_dir: str
    rest_port: int
    pids: Dict[str, int]
    job_server_jar: Optional[str] = None
    job_port: Optional[int] = None

    @property
    def master(self) -> str:
        """Value for ``--flink_master``: the REST endpoint."""
        return f"{HOST}:{self.rest_port}"

    @property
    def job_endpoint(self) -> Optional[str]:
        """Value for ``--job_endpoint`` when the job server runs here."""
        return f"{HOST}:{self.job_port}" if self.job_port else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _deep_update(base: dict, updates: dict) -> dict:
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def write_config(flink_home: str, work_dir: str, rest_port: int) -> str:
    """Write a Flink configuration directory for the local cluster.

    Starts from the distribution's ``conf/`` (its JVM ``--add-opens`` flags
    are needed on Java 17) and binds every endpoint to 127.0.0.1. Checkpoints
    and savepoints go to ``<work_dir>/checkpoints`` and ``.../savepoints``
    with the heap (hashmap) state backend. Returns the directory.
    """
    conf_dir = os.path.join(work_dir, "conf")
    os.makedirs(conf_dir, exist_ok=True)
    for name in os.listdir(os.path.join(flink_home, "conf")):
        if name != "config.yaml":
            with open(os.path.join(flink_home, "conf", name), "rb") as source:
                with open(os.path.join(conf_dir, name), "wb") as target:
                    target.write(source.read())

    with open(os.path.join(flink_home, "conf", "config.yaml")) as source:
        config = yaml.safe_load(source) or {}

    checkpoints = os.path.join(work_dir, "checkpoints")
    savepoints = os.path.join(work_dir, "savepoints")
    tmp_dir = os.path.join(work_dir, "tmp")
    for directory in (checkpoints, savepoints, tmp_dir):
        os.makedirs(directory, exist_ok=True)

    _deep_update(config, {
        "jobmanager": {
            "bind-host": HOST,
            "rpc": {"address": HOST, "port": _free_port()},
            "memory": {"process": {"size": _JOBMANAGER_MEMORY}},
        },
        "taskmanager": {
            "bind-host": HOST,
            "host": HOST,
            "rpc": {"port": str(_free_port())},
            "data": {"port": _free_port()},
            "numberOfTaskSlots": _TASK_SLOTS,
            "memory": {"process": {"size": _TASKMANAGER_MEMORY}},
        },
        "rest": {"address": HOST, "bind-address": HOST, "port": rest_port},
        "blob": {"server": {"port": str(_free_port())}},
        "state": {
            "backend": {"type": "hashmap"},
            "checkpoints": {"dir": f"file://{checkpoints}"},
            "savepoints": {"dir": f"file://{savepoints}"},
        },
        "io": {"tmp": {"dirs": tmp_dir}},
    })
    with open(os.path.join(conf_dir, "config.yaml"), "w") as target:
        yaml.safe_dump(config, target, default_flow_style=False)
    return conf_dir


def _start_process(name: str, command, env, work_dir: str) -> int:
    log_path = os.path.join(work_dir, "log", f"{name}.out")
    with open(log_path, "ab") as log:
        # A new session keeps Ctrl-C in the caller's terminal from reaching
        # the JVMs, so only stop_cluster stops them.
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
    with open(os.path.join(work_dir, f"{name}.pid"), "w") as pid_file:
        pid_file.write(str(process.pid))
    _LOGGER.info("Started %s (pid %d), log in %s", name, process.pid, log_path)
    return process.pid


def _is_running(pid: int) -> bool:
    try:
        # waitpid reaps a child that exited, so it does not linger as a zombie.
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _log_tail(work_dir: str, name: str, chars: int = 3000) -> str:
    path = os.path.join(work_dir, "log", f"{name}.out")
    try:
        with open(path, errors="replace") as log:
            return log.read()[-chars:]
    except FileNotFoundError:
        return "(no log)"


def _fetch_overview(rest_port: int) -> Optional[dict]:
    url = f"http://{HOST}:{rest_port}/overview"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.load(response)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _wait_until_ready(cluster: FlinkCluster, deadline: float) -> None:
    while time.monotonic() < deadline:
        for name, pid in cluster.pids.items():
            if not _is_running(pid):
                raise RuntimeError(
                    f"Flink {name} (pid {pid}) exited during startup:\n"
                    f"{_log_tail(cluster.work_dir, name)}")
        overview = _fetch_overview(cluster.rest_port)
        # A TaskManager can be listed a moment before its slots are, and a
        # job submitted then waits for slots.
        if overview and overview.get("taskmanagers", 0) >= 1 and overview.get("slots-total", 0) >= 1:
            return
        time.sleep(0.5)
    raise TimeoutError(
        f"Flink at {cluster.master} had no registered TaskManager after "
        f"{_STARTUP_TIMEOUT_S} s; see the logs in {cluster.work_dir}/log")


def _wait_for_port(port: int, pid: int, name: str, work_dir: str,
                   deadline: float) -> None:
    while time.monotonic() < deadline:
        if not _is_running(pid):
            raise RuntimeError(f"{name} (pid {pid}) exited during startup:\n"
                               f"{_log_tail(work_dir, name)}")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{name} did not listen on {HOST}:{port} after "
                       f"{_STARTUP_TIMEOUT_S} s")


def start_cluster(
        flink_home: str,
        work_dir: str,
        job_server_jar: Optional[str] = None) -> FlinkCluster:
    """Start a JobManager, a TaskManager and optionally Beam's job server.

    Blocks until ``/overview`` reports a registered TaskManager (and the job
    server accepts connections), then writes ``<work_dir>/cluster.json`` for
    ``python -m runners.flink.cluster stop``. On failure every process that
    was started is stopped again.

    Raises:
      RuntimeError: a process exited during startup (its log tail is shown).
      TimeoutError: the cluster was not ready within 120 s.
    """
    work_dir = os.path.abspath(work_dir)
    os.makedirs(os.path.join(work_dir, "log"), exist_ok=True)
    rest_port = _free_port()
    conf_dir = write_config(flink_home, work_dir, rest_port)

    env = {
        **os.environ,
        "FLINK_HOME": flink_home,
        "FLINK_CONF_DIR": conf_dir,
        "FLINK_LOG_DIR": os.path.join(work_dir, "log"),
        "FLINK_PID_DIR": work_dir,
    }
    cluster = FlinkCluster(
        flink_home=flink_home, work_dir=work_dir, rest_port=rest_port,
        pids={}, job_server_jar=job_server_jar)
    started = time.monotonic()
    deadline = started + _STARTUP_TIMEOUT_S

    try:
        bin_dir = os.path.join(flink_home, "bin")
        cluster.pids["jobmanager"] = _start_process(
            "jobmanager", [os.path.join(bin_dir, "jobmanager.sh"),
                           "start-foreground"], env, work_dir)
        cluster.pids["taskmanager"] = _start_process(
            "taskmanager", [os.path.join(bin_dir, "taskmanager.sh"),
                            "start-foreground"], env, work_dir)
        _wait_until_ready(cluster, deadline)

        if job_server_jar:
            cluster.job_port = _free_port()
            cluster.pids["jobserver"] = _start_process(
                "jobserver", [
                    "java", "-jar", job_server_jar,
                    f"--flink-master={cluster.master}",
                    f"--flink-conf-dir={conf_dir}",
                    f"--job-host={HOST}",
                    f"--job-port={cluster.job_port}",
                    f"--artifact-port={_free_port()}",
                    f"--expansion-port={_free_port()}",
                ], env, work_dir)
            _wait_for_port(cluster.job_port, cluster.pids["jobserver"],
                           "jobserver", work_dir, deadline)
    except BaseException:
        stop_cluster(cluster)
        raise

    _LOGGER.info("Flink cluster ready at %s in %.1f s", cluster.master,
                 time.monotonic() - started)
    with open(os.path.join(work_dir, _STATE_FILE), "w") as state:
        json.dump(dataclasses.asdict(cluster), state, indent=2)
    return cluster


def load_cluster(work_dir: str) -> FlinkCluster:
    """Read the cluster that ``start_cluster`` recorded in ``work_dir``."""
    path = os.path.join(os.path.abspath(work_dir), _STATE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No Flink cluster state in {path}; pass the --work_dir that "
            "'start' used.")
    with open(path) as state:
        return FlinkCluster(**json.load(state))


def resident_memory_mb(cluster: FlinkCluster) -> Dict[str, float]:
    """Return each cluster process's resident memory (VmRSS) in MiB."""
    memory = {}
    for name, pid in cluster.pids.items():
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        memory[name] = int(line.split()[1]) / 1024
        except FileNotFoundError:
            continue
    return memory


def _stop_process(name: str, pid: int) -> None:
    if not _is_running(pid):
        return
    _LOGGER.info("Stopping %s (pid %d)", name, pid)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not _is_running(pid):
            return
        time.sleep(0.2)
    _LOGGER.warning("%s (pid %d) ignored SIGTERM for %d s; sending SIGKILL",
                    name, pid, _STOP_TIMEOUT_S)
    os.kill(pid, signal.SIGKILL)


def stop_cluster(cluster: FlinkCluster) -> None:
    """Stop the cluster's processes by their recorded pids, job server first.

    Processes that already exited are skipped. The pid files are removed.
    """
    for name in ("jobserver", "taskmanager", "jobmanager"):
        pid = cluster.pids.get(name)
        if pid is None:
            continue
        try:
            _stop_process(name, pid)
        except ProcessLookupError:
            pass
        pid_file = os.path.join(cluster.work_dir, f"{name}.pid")
        if os.path.exists(pid_file):
            os.remove(pid_file)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runners.flink.cluster",
        description="Start or stop a local Flink session cluster on 127.0.0.1.")
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--work_dir", required=True,
                        help="Directory for config, logs, pid files and "
                        "checkpoints; 'stop' reads the pids from it.")
    parser.add_argument("--flink_version",
                        default=assemble.DEFAULT_FLINK_VERSION,
                        help="Flink release to assemble (default: %(default)s).")
    parser.add_argument("--job_server_jar", default=None,
                        help="Beam Flink job server jar to start as well.")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    if args.action == "stop":
        stop_cluster(load_cluster(args.work_dir))
        return 0

    flink_home = assemble.assemble_flink(args.flink_version)
    cluster = start_cluster(flink_home, args.work_dir, args.job_server_jar)
    print(json.dumps({
        "flink_master": cluster.master,
        "job_endpoint": cluster.job_endpoint,
        "rest_url": f"http://{cluster.master}",
        "resident_memory_mb": resident_memory_mb(cluster),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
