"""Boot a Beam Python SDK harness for a PROCESS environment, without Docker.

With ``--environment_type=PROCESS`` a portable runner (Flink's job server,
Prism) starts the executable named in ``--environment_config`` once per SDK
worker, with ``--id=<worker id> --provision_endpoint=<host:port>``. This file
does the work of the ``boot`` program in Beam's SDK container
(``sdks/python/container/boot.go`` in the Beam repository): it fetches the
provision info, downloads the staged files, sets the environment variables
that ``apache_beam.runners.worker.sdk_worker_main`` reads, and runs one
harness per worker id.

It imports only ``apache_beam``, so it runs under any Python that has the
pipeline's dependencies installed. ``runners/process_boot.sh`` is the
executable to name in the environment config; ``process_environment_config``
builds that config for the current interpreter.
"""

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional

import grpc
from google.protobuf import json_format

from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_artifact_api_pb2
from apache_beam.portability.api import beam_artifact_api_pb2_grpc
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.portability.api import beam_provision_api_pb2_grpc
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.portability.api import endpoints_pb2

_LOGGER = logging.getLogger(__name__)

BOOT_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "process_boot.sh")

# Staged files that the container's boot program would pip-install. Here the
# harness runs in the submitting interpreter's environment, which already
# has them, so they are downloaded but not installed.
_INSTALLABLE_SUFFIXES = (".tar.gz", ".whl", ".zip", "requirements.txt")


def process_environment_config(python: Optional[str] = None) -> str:
    """Return the ``--environment_config`` JSON for a PROCESS environment.

    ``python`` is the interpreter that runs the SDK harness and defaults to
    the current one, so workers see the same installed packages as the
    submitting process. The runner must run on this machine, because the
    config names local paths.
    """
    config = {
        "command": BOOT_SCRIPT,
        "env": {"BEAM_PROCESS_PYTHON": python or sys.executable},
    }
    return json.dumps(config)


def _worker_id(raw_id: str) -> str:
    # Prism 2.77 passes --id='<id>' with the quotes inside the argument.
    return raw_id.strip("'\"")


def fetch_provision_info(
        provision_endpoint: str,
        worker_id: str) -> beam_provision_api_pb2.ProvisionInfo:
    """Fetch the worker's provision info from the runner's provision service."""
    with grpc.insecure_channel(provision_endpoint) as channel:
        stub = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel)
        response = stub.GetProvisionInfo(
            beam_provision_api_pb2.GetProvisionInfoRequest(),
            metadata=[("worker_id", worker_id)])
    return response.info


def _staged_name(artifact: beam_runner_api_pb2.ArtifactInformation) -> str:
    if artifact.role_urn != common_urns.artifact_roles.STAGING_TO.urn:
        return ""
    payload = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
        artifact.role_payload)
    return os.path.basename(payload.staged_name)


def materialize_artifacts(
        artifact_endpoint: str,
        dependencies: List[beam_runner_api_pb2.ArtifactInformation],
        staged_dir: str) -> List[str]:
    """Download the staged dependencies into ``staged_dir``.

    Returns the paths written. ``sdk_worker_main`` loads a pickled main
    session from ``<semi persistent dir>/staged``, so files keep their
    staged names. Dependencies without a staged name are skipped.
    """
    if not dependencies:
        return []
    os.makedirs(staged_dir, exist_ok=True)

    with grpc.insecure_channel(artifact_endpoint) as channel:
        stub = beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceStub(channel)
        resolved = stub.ResolveArtifacts(
            beam_artifact_api_pb2.ResolveArtifactsRequest(
                artifacts=dependencies)).replacements

        paths = []
        for artifact in resolved:
            name = _staged_name(artifact)
            if not name:
                _LOGGER.warning("Skipping artifact with role %s: no staged name",
                                artifact.role_urn)
                continue
            path = os.path.join(staged_dir, name)
            with open(path, "wb") as out:
                for chunk in stub.GetArtifact(
                        beam_artifact_api_pb2.GetArtifactRequest(
                            artifact=artifact)):
                    out.write(chunk.data)
            paths.append(path)
    return paths


def harness_environment(
        info: beam_provision_api_pb2.ProvisionInfo,
        control_endpoint: str,
        logging_endpoint: str,
        semi_persistent_dir: str,
        options_file: str) -> Dict[str, str]:
    """Return the variables that ``sdk_worker_main.create_harness`` reads."""
    def descriptor(url):
        return str(endpoints_pb2.ApiServiceDescriptor(url=url))

    env = {
        "SEMI_PERSISTENT_DIRECTORY": semi_persistent_dir,
        "CONTROL_API_SERVICE_DESCRIPTOR": descriptor(control_endpoint),
        "LOGGING_API_SERVICE_DESCRIPTOR": descriptor(logging_endpoint),
        "RUNNER_CAPABILITIES": " ".join(info.runner_capabilities),
        "PIPELINE_OPTIONS_FILE": options_file,
    }
    if info.HasField("status_endpoint"):
        env["STATUS_API_SERVICE_DESCRIPTOR"] = str(info.status_endpoint)
    if "job_name" in info.metadata:
        env["JOB_NAME"] = info.metadata["job_name"]
    if "job_id" in info.metadata:
        env["JOB_ID"] = info.metadata["job_id"]
    return env


def run_harnesses(worker_ids: List[str], env: Dict[str, str]) -> int:
    """Run one SDK harness process per worker id and wait for all of them.

    With one worker id the harness replaces this process (``exec``), because
    runners such as Prism stop a worker by killing the process they started.
    Otherwise returns the first non-zero exit code, or 0, and passes SIGTERM
    and SIGINT on to the harnesses.
    """
    command = [
        sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"
    ]
    if len(worker_ids) == 1:
        _LOGGER.info("Starting SDK harness for worker %s: %s", worker_ids[0],
                     " ".join(command))
        os.execve(sys.executable, command,
                  {**os.environ, **env, "WORKER_ID": worker_ids[0]})

    processes = []
    for worker_id in worker_ids:
        _LOGGER.info("Starting SDK harness for worker %s: %s", worker_id,
                     " ".join(command))
        processes.append(
            subprocess.Popen(
                command, env={**os.environ, **env, "WORKER_ID": worker_id}))

    def forward(signum, unused_frame):
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    exit_code = 0
    for worker_id, process in zip(worker_ids, processes):
        returncode = process.wait()
        if returncode != 0:
            _LOGGER.error("SDK harness for worker %s exited with code %d",
                          worker_id, returncode)
            exit_code = exit_code or returncode
    return exit_code


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Boot a Beam Python SDK harness for a PROCESS environment.")
    parser.add_argument("--id", required=True, help="Worker id from the runner.")
    parser.add_argument(
        "--provision_endpoint", required=True,
        help="host:port of the runner's provision service.")
    # Beam's worker pool passes these endpoints as flags. As in boot.go, the
    # endpoints in the provision info take precedence when they are set.
    parser.add_argument("--control_endpoint", default="")
    parser.add_argument("--logging_endpoint", default="")
    parser.add_argument("--artifact_endpoint", default="")
    parser.add_argument(
        "--semi_persist_dir", default="",
        help="Directory for staged files (default: a new temporary directory).")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _LOGGER.warning("Ignoring unknown boot arguments: %s", unknown)
    return args


def main(argv=None) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s process_boot: %(message)s")
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    worker_id = _worker_id(args.id)

    info = fetch_provision_info(args.provision_endpoint, worker_id)
    control_endpoint = info.control_endpoint.url or args.control_endpoint
    logging_endpoint = info.logging_endpoint.url or args.logging_endpoint
    artifact_endpoint = info.artifact_endpoint.url or args.artifact_endpoint
    if not control_endpoint:
        _LOGGER.error("Worker %s: the runner sent no control endpoint", worker_id)
        return 1

    semi_persistent_dir = args.semi_persist_dir or tempfile.mkdtemp(
        prefix=f"beam-worker-{worker_id}-")
    staged_dir = os.path.join(semi_persistent_dir, "staged")
    if artifact_endpoint:
        staged = materialize_artifacts(artifact_endpoint,
                                       list(info.dependencies), staged_dir)
        not_installed = [
            path for path in staged if path.endswith(_INSTALLABLE_SUFFIXES)
        ]
        if not_installed:
            # TODO: pip-install staged packages as the container boot does.
            _LOGGER.warning(
                "Staged packages are not installed in PROCESS mode; the "
                "harness uses %s as it is: %s", sys.executable, not_installed)

    # A file, not a variable, because the options can exceed the maximum
    # size of one environment variable (boot.go does the same).
    options_file = os.path.join(semi_persistent_dir, "pipeline_options.json")
    with open(options_file, "w") as out:
        out.write(json_format.MessageToJson(info.pipeline_options))

    env = harness_environment(info, control_endpoint, logging_endpoint,
                              semi_persistent_dir, options_file)
    worker_ids = [worker_id] + list(info.sibling_worker_ids)
    return run_harnesses(worker_ids, env)


if __name__ == "__main__":
    sys.exit(main())
