"""Assemble a Flink distribution from PyPI and fetch Beam's Flink job server.

Flink's binary tarball is not on a package registry, but PyFlink's two PyPI
packages hold all of it: the ``apache-flink-libraries`` sdist has the jars
(``deps/lib``, ``deps/opt``, ``deps/plugins``, ``deps/bin``) and the ``apache-flink``
wheel has ``bin/`` and ``conf/``. Both are downloaded with
``pip download --no-deps``, never installed, because ``apache-flink`` pins
an older apache-beam than this project needs.

The Beam Flink job server jar comes from Maven Central through ``mvn``.

Command line::

    python -m runners.flink.assemble            # prints FLINK_HOME
    python -m runners.flink.assemble --job-server  # also fetches the jar
"""

import argparse
import fcntl
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from typing import Optional

import apache_beam

from runners.prism import cache_root

_LOGGER = logging.getLogger(__name__)

# The newest 1.20 patch release that PyPI serves for both packages. Beam
# 2.77 publishes job servers for Flink 1.19, 1.20, 2.0, 2.1 and 2.2.
DEFAULT_FLINK_VERSION = "1.20.3"

JOB_SERVER_JAR_ENV = "BEAM_FLINK_JOB_SERVER_JAR"

# Beam's JavaJarServer caches downloaded jars here under their Maven file
# name, so a jar placed here is also found by FlinkRunner without
# --flink_job_server_jar.
BEAM_JAR_CACHE = os.path.expanduser("~/.apache_beam/cache/jars")

_DOWNLOAD_TIMEOUT_S = 900

_SDIST_DIRS = ("bin", "lib", "opt", "plugins")


class DownloadError(RuntimeError):
    """A package could not be downloaded from its registry."""


def _flink_cache_dir() -> str:
    return os.path.join(cache_root(), "flink")


def _run_download(command, what: str) -> None:
    _LOGGER.info("Downloading %s: %s", what, " ".join(command))
    try:
        result = subprocess.run(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=_DOWNLOAD_TIMEOUT_S,
            check=False)
    except FileNotFoundError as error:
        raise DownloadError(
            f"Cannot download {what}: {command[0]} is not installed") from error
    except subprocess.TimeoutExpired as error:
        raise DownloadError(
            f"Downloading {what} timed out after {_DOWNLOAD_TIMEOUT_S} s"
        ) from error
    if result.returncode != 0:
        raise DownloadError(
            f"Downloading {what} failed with exit code {result.returncode}:\n"
            f"{result.stdout[-3000:]}")


def _download_flink_packages(flink_version: str, download_dir: str):
    """Download the two PyFlink packages and return their paths."""
    os.makedirs(download_dir, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
           "--dest", download_dir]

    # bin/ and conf/ are the same in every wheel, so pin one platform and
    # Python version instead of depending on the interpreter running this.
    _run_download(
        pip + [
            "--only-binary=:all:", "--python-version", "3.11",
            "--implementation", "cp", "--platform", "manylinux2014_x86_64",
            f"apache-flink=={flink_version}"
        ], f"apache-flink {flink_version} wheel")
    # pip prepares the sdist's metadata; build isolation would fetch
    # setuptools again for that, so it is turned off.
    _run_download(
        pip + [
            "--no-binary=:all:", "--no-build-isolation",
            f"apache-flink-libraries=={flink_version}"
        ], f"apache-flink-libraries {flink_version} sdist")

    wheel = _find_one(download_dir, f"apache_flink-{flink_version}-", ".whl")
    sdist = _find_one(download_dir, f"apache-flink-libraries-{flink_version}",
                      ".tar.gz")
    return wheel, sdist


def _find_one(directory: str, prefix: str, suffix: str) -> str:
    for name in sorted(os.listdir(directory)):
        if name.startswith(prefix) and name.endswith(suffix):
            return os.path.join(directory, name)
    raise DownloadError(
        f"pip reported success but no {prefix}*{suffix} is in {directory}")


def _extract_jars(sdist: str, flink_home: str) -> None:
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            parts = member.name.split("/")
            # <name>-<version>/deps/<bin|lib|opt|plugins>/... where bin/ holds
            # only bash-java-utils.jar, which Flink's scripts need to start.
            if len(parts) < 4 or parts[1] != "deps":
                continue
            if parts[2] not in _SDIST_DIRS or not member.isfile():
                continue
            target = os.path.join(flink_home, *parts[2:])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with archive.extractfile(member) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
            os.chmod(target, 0o755 if target.endswith(".sh") else 0o644)


def _extract_scripts_and_conf(wheel: str, flink_home: str) -> None:
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            parts = name.split("/")
            if len(parts) < 3 or parts[0] != "pyflink":
                continue
            if parts[1] not in ("bin", "conf") or name.endswith("/"):
                continue
            target = os.path.join(flink_home, *parts[1:])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with archive.open(name) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
            os.chmod(target, 0o755 if parts[1] == "bin" else 0o644)


def assemble_flink(flink_version: str = DEFAULT_FLINK_VERSION) -> str:
    """Return a Flink home directory for ``flink_version``, assembling it once.

    The distribution is cached in ``<cache_root()>/flink/flink-<version>``;
    the downloads (about 235 MB for 1.20.3) stay in ``.../flink/downloads``.

    Raises:
      DownloadError: pip could not download one of the two packages.
    """
    flink_home = os.path.join(_flink_cache_dir(), f"flink-{flink_version}")
    if os.path.isdir(flink_home):
        return flink_home

    os.makedirs(_flink_cache_dir(), exist_ok=True)
    with open(os.path.join(_flink_cache_dir(), ".lock"), "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if os.path.isdir(flink_home):
            return flink_home

        wheel, sdist = _download_flink_packages(
            flink_version, os.path.join(_flink_cache_dir(), "downloads"))
        # Assemble in a scratch directory and rename, so an interrupted run
        # never leaves a partial distribution that later calls would reuse.
        scratch = tempfile.mkdtemp(dir=_flink_cache_dir(), prefix=".assemble-")
        _extract_jars(sdist, scratch)
        _extract_scripts_and_conf(wheel, scratch)
        os.makedirs(os.path.join(scratch, "log"), exist_ok=True)
        os.rename(scratch, flink_home)

    _LOGGER.info("Assembled Flink %s in %s", flink_version, flink_home)
    return flink_home


def job_server_artifact(flink_minor: str, beam_version: str) -> str:
    """Return the Maven coordinates of Beam's Flink job server jar."""
    return (f"org.apache.beam:beam-runners-flink-{flink_minor}-job-server:"
            f"{beam_version}:jar")


def fetch_job_server_jar(
        flink_minor: str = "1.20",
        beam_version: Optional[str] = None) -> str:
    """Return the path of Beam's Flink job server jar, downloading it once.

    ``BEAM_FLINK_JOB_SERVER_JAR`` names a jar to use as it is. Otherwise the
    jar is copied from Maven Central with ``mvn dependency:copy`` into
    Beam's jar cache (``~/.apache_beam/cache/jars``).

    Raises:
      DownloadError: mvn is missing, or Maven Central did not serve the jar.
    """
    override = os.environ.get(JOB_SERVER_JAR_ENV)
    if override:
        if not os.path.isfile(override):
            raise DownloadError(
                f"{JOB_SERVER_JAR_ENV}={override!r} is not a file; point it "
                "at a beam-runners-flink-*-job-server jar or unset it.")
        return override

    beam_version = beam_version or apache_beam.__version__
    jar_name = f"beam-runners-flink-{flink_minor}-job-server-{beam_version}.jar"
    jar = os.path.join(BEAM_JAR_CACHE, jar_name)
    if os.path.isfile(jar):
        return jar

    os.makedirs(BEAM_JAR_CACHE, exist_ok=True)
    artifact = job_server_artifact(flink_minor, beam_version)
    try:
        _run_download([
            "mvn", "--batch-mode", "--quiet",
            "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy",
            f"-Dartifact={artifact}", f"-DoutputDirectory={BEAM_JAR_CACHE}"
        ], artifact)
    except DownloadError as error:
        raise DownloadError(
            f"{error}\nDownload {jar_name} by other means and set "
            f"{JOB_SERVER_JAR_ENV} to its path.") from error
    return jar


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runners.flink.assemble",
        description="Assemble a Flink distribution from PyPI and print its "
        "directory (FLINK_HOME).")
    parser.add_argument("--flink_version", default=DEFAULT_FLINK_VERSION,
                        help="Flink release to assemble (default: %(default)s).")
    parser.add_argument(
        "--job_server", action="store_true",
        help="Also fetch Beam's Flink job server jar and print its path.")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        print(assemble_flink(args.flink_version))
        if args.job_server:
            flink_minor = ".".join(args.flink_version.split(".")[:2])
            print(fetch_job_server_jar(flink_minor))
    except DownloadError as error:
        _LOGGER.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
