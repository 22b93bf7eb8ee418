"""A store of immutable, versioned model checkpoints.

Layout under the store root::

    <model_name>/v000003/model.safetensors      weights and buffers
    <model_name>/v000003/optimizer.safetensors  optimizer and RNG state
    <model_name>/v000003/metadata.json          written last: the commit marker
    <model_name>/manifest.json                  every published version

Each file is written under a temporary name and renamed into place, and a
version counts as published only once its ``metadata.json`` exists, so a
reader never sees a partial checkpoint, even after a crash mid-write.
Nothing is loaded with pickle: tensors use safetensors, the rest JSON.

The store does its I/O through a small filesystem interface. The default
works on local paths; the pipelines pass one backed by Beam's
``FileSystems`` so that GCS and HDFS roots work too.
"""

import dataclasses
import json
import logging
import os
import posixpath
import re
import uuid
from typing import Any, Dict, List, Optional, Tuple

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

_LOGGER = logging.getLogger(__name__)

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION_DIR = re.compile(r"^v(\d{6,})$")
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
METADATA_FILE = "metadata.json"
MANIFEST_FILE = "manifest.json"


class LocalFileSystem:
    """The filesystem interface of :class:`ModelStore`, on local paths."""

    def join(self, base: str, *parts: str) -> str:
        return os.path.join(base, *parts)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as file:
            return file.read()

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)

    def list_dir(self, path: str) -> List[str]:
        if not os.path.isdir(path):
            return []
        return sorted(os.listdir(path))


@dataclasses.dataclass(frozen=True)
class PublishedVersion:
    """A committed checkpoint: what serving needs to find and trust it.

    ``training_watermark`` is the event time (seconds) up to which labels
    were used to train this version. As-of serving gives an event at time t
    only versions whose training watermark is at or before t.
    """

    model_name: str
    version: int
    path: str
    training_watermark: float
    metadata: Dict[str, Any]

    def to_json_dict(self) -> dict:
        return dataclasses.asdict(self)


def validate_model_name(model_name: str) -> str:
    """Reject model names that could escape the store root or its layout."""
    if not isinstance(model_name, str) or not _MODEL_NAME.match(model_name) or ".." in model_name:
        raise ValueError(
            f"model name {model_name!r} is invalid: use 1-128 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit, for example 'phishing-mlp'."
        )
    return model_name


def version_dir_name(version: int) -> str:
    if not isinstance(version, int) or version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version!r}.")
    return f"v{version:06d}"


def optimizer_state_to_tensors(state: dict) -> tuple:
    """Flatten ``optimizer.state_dict()`` into tensors plus JSON metadata."""
    tensors = {}
    scalars = {}
    for param_id, param_state in state["state"].items():
        for key, value in param_state.items():
            name = f"state.{param_id}.{key}"
            if isinstance(value, torch.Tensor):
                tensors[name] = value.detach().cpu().contiguous()
            else:
                scalars[name] = value
    metadata = {"param_groups": json.dumps(state["param_groups"]), "scalars": json.dumps(scalars)}
    return tensors, metadata


def optimizer_state_from_tensors(tensors: dict, metadata: dict) -> dict:
    """Invert :func:`optimizer_state_to_tensors`."""
    state: Dict[int, Dict[str, Any]] = {}
    flat = dict(tensors)
    flat.update(json.loads(metadata["scalars"]))
    for name, value in flat.items():
        _, param_id, key = name.split(".", 2)
        state.setdefault(int(param_id), {})[key] = value
    return {"state": state, "param_groups": json.loads(metadata["param_groups"])}


class ModelStore:
    """Write and read versioned checkpoints under ``root``."""

    def __init__(self, root: str, filesystem=None):
        if not root:
            raise ValueError("the model store root is empty; pass a directory such as 'output/models'.")
        self.root = root
        self.fs = filesystem or LocalFileSystem()
        # Per model: the manifest bytes this store wrote last and their entries.
        self._manifests: Dict[str, Tuple[bytes, Dict[int, str]]] = {}

    def version_path(self, model_name: str, version: int) -> str:
        return self.fs.join(self.root, validate_model_name(model_name), version_dir_name(version))

    def publish(
        self,
        model_name: str,
        version: int,
        model_state: Dict[str, torch.Tensor],
        training_watermark: float,
        metadata: Optional[Dict[str, Any]] = None,
        optimizer_state: Optional[dict] = None,
        extra_tensors: Optional[Dict[str, torch.Tensor]] = None,
    ) -> PublishedVersion:
        """Commit a new version; raise if that version was already published."""
        path = self.version_path(model_name, version)
        metadata_path = self.fs.join(path, METADATA_FILE)
        if self.fs.exists(metadata_path):
            raise FileExistsError(
                f"version {version} of model {model_name!r} is already published at "
                f"{path}; published versions are immutable."
            )

        tensors = {name: value.detach().cpu().contiguous() for name, value in model_state.items()}
        self.fs.write_bytes_atomic(self.fs.join(path, MODEL_FILE), save_safetensors(tensors))
        if optimizer_state is not None:
            flat, flat_metadata = optimizer_state_to_tensors(optimizer_state)
            flat.update(extra_tensors or {})
            self.fs.write_bytes_atomic(
                self.fs.join(path, OPTIMIZER_FILE), save_safetensors(flat, metadata=flat_metadata)
            )

        published = PublishedVersion(
            model_name=model_name,
            version=version,
            path=path,
            training_watermark=float(training_watermark),
            metadata=dict(metadata or {}),
        )
        self.fs.write_bytes_atomic(
            metadata_path, json.dumps(published.to_json_dict(), sort_keys=True).encode()
        )
        self._append_to_manifest(published)
        _LOGGER.debug("Published version %d of %s at %s.", version, model_name, path)
        return published

    def read_version(self, path: str) -> PublishedVersion:
        """Read the committed metadata of the version at ``path``."""
        metadata_path = self.fs.join(self._checked(path), METADATA_FILE)
        if not self.fs.exists(metadata_path):
            raise FileNotFoundError(
                f"no published version at {path}: {METADATA_FILE} is missing, so the "
                "checkpoint was never committed."
            )
        return PublishedVersion(**json.loads(self.fs.read_bytes(metadata_path)))

    def load_model_state(self, path: str) -> Dict[str, torch.Tensor]:
        return load_safetensors(self.fs.read_bytes(self.fs.join(self._checked(path), MODEL_FILE)))

    def load_optimizer_state(self, path: str) -> tuple:
        """Return ``(optimizer_state_dict, extra_tensors)``, or None if absent."""
        data = self.fs.read_bytes(self.fs.join(self._checked(path), OPTIMIZER_FILE))
        tensors = load_safetensors(data)
        metadata = _safetensors_metadata(data)
        optimizer_tensors = {k: v for k, v in tensors.items() if k.startswith("state.")}
        extra = {k: v for k, v in tensors.items() if not k.startswith("state.")}
        return optimizer_state_from_tensors(optimizer_tensors, metadata), extra

    def versions(self, model_name: str) -> List[PublishedVersion]:
        """Every committed version of ``model_name``, oldest first."""
        model_dir = self.fs.join(self.root, validate_model_name(model_name))
        published = []
        for entry in self.fs.list_dir(model_dir):
            entry = entry.rstrip("/")
            if not _VERSION_DIR.match(posixpath.basename(entry)):
                continue
            metadata_path = self.fs.join(model_dir, posixpath.basename(entry), METADATA_FILE)
            if self.fs.exists(metadata_path):
                published.append(PublishedVersion(**json.loads(self.fs.read_bytes(metadata_path))))
        return sorted(published, key=lambda item: item.version)

    def latest(self, model_name: str) -> Optional[PublishedVersion]:
        versions = self.versions(model_name)
        return versions[-1] if versions else None

    def _checked(self, path: str) -> str:
        """Reject a version path outside the store root (for example '../x')."""
        root = self.root.rstrip("/")
        relative = path[len(root) + 1:] if path.startswith(root + "/") else None
        parts = relative.split("/") if relative else []
        if (
            len(parts) != 2
            or ".." in parts
            or not _MODEL_NAME.match(parts[0])
            or not _VERSION_DIR.match(parts[1])
        ):
            raise ValueError(
                f"checkpoint path {path!r} is not a version directory of the model "
                f"store at {self.root!r}; expected {root}/<model_name>/v000001."
            )
        return path

    def _append_to_manifest(self, published: PublishedVersion) -> None:
        # One trainer (one key) writes each model's manifest, so this
        # read-modify-write has no concurrent writer.
        manifest_path = self.fs.join(self.root, published.model_name, MANIFEST_FILE)
        current = self.fs.read_bytes(manifest_path) if self.fs.exists(manifest_path) else None
        entries = self._manifest_entries(published.model_name, current)
        entries[published.version] = json.dumps(published.to_json_dict(), sort_keys=True)

        # The manifest is assembled from cached per-entry JSON, so a publish
        # costs one write instead of parsing and re-encoding every entry: a
        # long run publishes thousands of versions.
        data = (
            '{"model_name": ' + json.dumps(published.model_name) + ', "versions": [\n'
            + ",\n".join(entries[version] for version in sorted(entries))
            + "\n]}\n"
        ).encode()
        self.fs.write_bytes_atomic(manifest_path, data)
        self._manifests[published.model_name] = (data, entries)

    def _manifest_entries(self, model_name: str, current: Optional[bytes]) -> Dict[int, str]:
        """Return the manifest's entries as JSON text by version, parsing only what this store did not write."""
        if current is None:
            return {}
        cached = self._manifests.get(model_name)
        if cached is not None and cached[0] == current:
            return dict(cached[1])
        entries = json.loads(current)["versions"]
        return {entry["version"]: json.dumps(entry, sort_keys=True) for entry in entries}


def _safetensors_metadata(data: bytes) -> dict:
    # The safetensors header is an 8-byte little-endian length and a JSON
    # object, whose "__metadata__" entry contains the string metadata.
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_length])
    return header.get("__metadata__", {})
