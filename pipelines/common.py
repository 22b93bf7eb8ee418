"""Helpers shared by the runnable pipelines."""

import logging
import re
from typing import List, Optional

from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import StandardOptions

_LOGGER = logging.getLogger(__name__)


class BeamFileSystem:
    """The model store's filesystem interface on Beam's ``FileSystems``.

    Local paths, ``gs://`` and ``hdfs://`` work alike. A write goes to a
    temporary name and is renamed into place; on object stores the rename
    is a copy then a delete, which still never exposes a partial object
    under the final name.
    """

    def join(self, base: str, *parts: str) -> str:
        return FileSystems.join(base, *parts)

    def exists(self, path: str) -> bool:
        return FileSystems.exists(path)

    def read_bytes(self, path: str) -> bytes:
        with FileSystems.open(path) as file:
            return file.read()

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        import uuid

        directory, _ = FileSystems.split(path)
        FileSystems.mkdirs(directory) if not FileSystems.exists(directory) else None
        temporary = f"{path}.tmp-{uuid.uuid4().hex}"
        with FileSystems.create(temporary) as file:
            file.write(data)
        if FileSystems.exists(path):
            FileSystems.delete([path])
        FileSystems.rename([temporary], [path])

    def list_dir(self, path: str) -> List[str]:
        try:
            matches = FileSystems.match([FileSystems.join(path, "*")])[0].metadata_list
        except BeamIOError:
            return []
        names = set()
        prefix = path.rstrip("/") + "/"
        for metadata in matches:
            relative = metadata.path[len(prefix):] if metadata.path.startswith(prefix) else metadata.path
            names.add(relative.split("/")[0])
        return sorted(names)


def parse_duration(text: str) -> float:
    """Parse '90s', '5m', '1h', '250ms' or a bare number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(text))
    if not match:
        raise ValueError(f"duration {text!r} is invalid; use a number with a unit, for example 90s, 5m or 1h.")
    value = float(match.group(1))
    scale = {"ms": 1e-3, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}[match.group(2)]
    return value * scale


def serving_window_seconds(serving_window: Optional[str], windowing_config) -> float:
    """The serving window length: given, or the training window's size or period."""
    if serving_window:
        seconds = parse_duration(serving_window)
    else:
        seconds = windowing_config.serving_window_seconds()
    if seconds <= 0:
        raise ValueError(f"--serving_window must be positive, got {serving_window!r}.")
    return seconds


def describe_engine(result, options) -> str:
    """Name the engine that actually ran: DirectRunner picks one at run time."""
    module = type(result).__module__
    name = type(result).__name__
    if "fn_api_runner" in module:
        return "FnApiRunner (DirectRunner batch engine)"
    if "direct" in module:
        return "BundleBasedDirectRunner (legacy DirectRunner, streaming engine)"
    if "prism" in module:
        return "PrismRunner"
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    return f"{runner} ({name})"


def log_counters(result) -> None:
    """Log every user counter of a finished pipeline, one line each."""
    try:
        counters = result.metrics().query()["counters"]
    except (NotImplementedError, AttributeError, KeyError):
        _LOGGER.info("This runner does not report metrics to the driver.")
        return
    totals = {}
    for counter in counters:
        key = f"{counter.key.metric.namespace}.{counter.key.metric.name}"
        totals[key] = totals.get(key, 0) + (counter.committed if counter.committed is not None else counter.attempted)
    for key in sorted(totals):
        _LOGGER.info("Counter %s = %d", key, totals[key])


def is_local_path(path: str) -> bool:
    return "://" not in path
