"""Build and cache the Prism runner binary from its Go module.

Beam's PrismRunner downloads a prebuilt binary from GitHub releases when
``--prism_location`` is not set. Where only package registries are reachable,
``prism_path`` builds the same binary with ``go install`` from the Go module
proxy instead, once per Beam version, and pipelines pass the result with::

    --runner=PrismRunner --prism_location=$(python -m runners.prism)

Run ``python -m runners.prism`` to print the path, building it on first use.
"""

import argparse
import fcntl
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

import apache_beam

_LOGGER = logging.getLogger(__name__)

PRISM_PACKAGE = "github.com/apache/beam/sdks/v2/go/cmd/prism"

# A release tag exists only for final versions, so a dev or rc build of the
# Python SDK has no matching Go module version to install.
_RELEASE_VERSION = re.compile(r"^\d+\.\d+\.\d+$")

# go install downloads about 60 modules and compiles them. It took 95 s on
# 2 cores with an empty module cache, so 30 minutes leaves room for slow
# networks without hanging a test session forever.
_BUILD_TIMEOUT_S = 1800


class PrismBuildError(RuntimeError):
    """Prism could not be built: Go is missing or ``go install`` failed."""


def cache_root() -> str:
    """Return the directory that holds this project's downloads and builds.

    ``BEAM_ONLINE_DL_CACHE`` overrides the default,
    ``$XDG_CACHE_HOME/beam-online-dl`` (``~/.cache/beam-online-dl``), which
    is also where ``runners/venv.sh`` keeps the virtualenv.
    """
    if os.environ.get("BEAM_ONLINE_DL_CACHE"):
        return os.environ["BEAM_ONLINE_DL_CACHE"]
    xdg_cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(xdg_cache, "beam-online-dl")


def prism_path(version: Optional[str] = None) -> str:
    """Return the path of a Prism binary for ``version``, building it if needed.

    ``version`` defaults to the installed ``apache_beam.__version__``, because
    Prism and the Python SDK harness must speak the same Fn API. The binary
    lives in ``<cache_root()>/prism/v<version>/prism``. A file lock makes
    concurrent callers (for example pytest-xdist workers) wait for one build.

    Raises:
      ValueError: ``version`` is not a release version such as ``2.77.0``.
      PrismBuildError: Go is not installed, or ``go install`` failed.
    """
    version = version or apache_beam.__version__
    if not _RELEASE_VERSION.match(version):
        raise ValueError(
            f"version={version!r} is not a Beam release version; pass one such "
            "as '2.77.0', because only releases are tagged in the Go module.")

    install_dir = os.path.join(cache_root(), "prism", f"v{version}")
    binary = os.path.join(install_dir, "prism")
    if os.access(binary, os.X_OK):
        _LOGGER.debug("Using cached Prism binary %s", binary)
        return binary

    os.makedirs(install_dir, exist_ok=True)
    with open(os.path.join(install_dir, ".lock"), "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        # Another process may have finished the build while this one waited.
        if not os.access(binary, os.X_OK):
            _build_prism(version, install_dir, binary)
    return binary


def _build_prism(version: str, install_dir: str, binary: str) -> None:
    go = shutil.which("go")
    if go is None:
        raise PrismBuildError(
            "Go is not installed (no 'go' on PATH), so Prism cannot be built. "
            "Install Go 1.23 or newer, or pass a prebuilt binary with "
            "--prism_location.")

    module = f"{PRISM_PACKAGE}@v{version}"
    _LOGGER.info("Building Prism with 'go install %s' into %s", module,
                 install_dir)
    started = time.monotonic()

    # Build into a scratch GOBIN and rename, so an interrupted build never
    # leaves a truncated binary where prism_path would reuse it.
    with tempfile.TemporaryDirectory(dir=install_dir) as scratch_bin:
        env = {**os.environ, "GOBIN": scratch_bin}
        try:
            result = subprocess.run(
                [go, "install", module],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=_BUILD_TIMEOUT_S,
                check=False)
        except subprocess.TimeoutExpired as error:
            raise PrismBuildError(
                f"'go install {module}' timed out after {_BUILD_TIMEOUT_S} s"
            ) from error

        if result.returncode != 0:
            raise PrismBuildError(
                f"'go install {module}' failed with exit code "
                f"{result.returncode}:\n{result.stdout[-4000:]}")
        os.replace(os.path.join(scratch_bin, "prism"), binary)

    _LOGGER.info("Built Prism %s in %.0f s: %s", version,
                 time.monotonic() - started, binary)


def prism_pipeline_args(location: Optional[str] = None) -> List[str]:
    """Pipeline flags that run a job on the Prism binary at ``location``.

    Beam shares one Prism job server per process. If an earlier pipeline in
    the process (the DirectRunner tries Prism first) created it without a
    ``--prism_location``, every later PrismRunner job reuses that server and
    tries to download Prism, which fails offline. The experiment below gives
    each job its own server.
    """
    return [
        "--runner=PrismRunner",
        f"--prism_location={location or prism_path()}",
        "--environment_type=LOOPBACK",
        "--experiments=disable_prism_server_singleton",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runners.prism",
        description="Print the path of a Prism binary, building it with "
        "'go install' on first use.")
    parser.add_argument(
        "--version",
        default=None,
        help="Beam release version to build (default: the installed "
        f"apache_beam, {apache_beam.__version__}).")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        print(prism_path(args.version))
    except (ValueError, PrismBuildError) as error:
        _LOGGER.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

