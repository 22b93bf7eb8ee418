"""The model store's filesystem on Beam's ``FileSystems``."""

import uuid
from typing import List

from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems


class BeamFileSystem:
    """The model store's filesystem interface on Beam's ``FileSystems``.

    Local paths, ``gs://`` and ``hdfs://`` work alike. A write goes to a
    temporary name and is renamed into place. On object stores the rename
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
        directory, _ = FileSystems.split(path)
        if not FileSystems.exists(directory):
            FileSystems.mkdirs(directory)
        temporary = f"{path}.tmp-{uuid.uuid4().hex}"
        with FileSystems.create(temporary) as file:
            file.write(data)
        if FileSystems.exists(path):
            FileSystems.delete([path])
        FileSystems.rename([temporary], [path])

    def list_dir(self, path: str) -> List[str]:
        try:
            # Local FileSystems match "*" against files only, so "**" is needed
            # to see the version directories.
            matches = FileSystems.match([FileSystems.join(path, "**")])[0].metadata_list
        except BeamIOError:
            return []
        names = set()
        prefix = path.rstrip("/") + "/"
        for metadata in matches:
            relative = metadata.path[len(prefix):] if metadata.path.startswith(prefix) else metadata.path
            names.add(relative.split("/")[0])
        return sorted(names)
