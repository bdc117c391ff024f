"""Where a sweep lives: a local folder, a shared filesystem, or an object-store URI.

A :class:`SweepLocation` wraps a ``pyarrow.fs`` filesystem and a base path. Local folders and
shared filesystems (NFS, Lustre...) are plain paths; ``s3://``, ``gs://``, ``hdfs://`` and other
URIs go through ``pyarrow.fs.FileSystem.from_uri``. Writes are atomic where the filesystem allows
it: a temp file in the same folder, then a rename (local: :mod:`lesionsweep.fileio`; object stores:
a temp key then a move, which readers never see half-written).
"""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from ..fileio import atomic_write_bytes

__all__ = ["SweepLocation", "is_uri"]


def is_uri(path: str) -> bool:
    """``scheme://...`` (other than ``file://``)."""
    return "://" in path and not path.startswith("file://")


@dataclass(frozen=True)
class SweepLocation:
    """A sweep folder: ``root`` is a local absolute path or a URI.

    Attributes:
        root: the sweep folder (``<storage>/<name>``) as given to Ray Tune.
    """

    root: str

    @classmethod
    def of(cls, storage: str, name: str) -> SweepLocation:
        """The folder ``name`` under ``storage`` (a path, made absolute, or a URI)."""
        if is_uri(storage):
            return cls(storage.rstrip("/") + "/" + name)
        if storage.startswith("file://"):
            storage = storage[len("file://") :]
        return cls(str(Path(storage).expanduser().resolve() / name))

    @classmethod
    def parse(cls, path: str | Path) -> SweepLocation:
        """An existing sweep folder given on the command line."""
        s = str(path)
        if is_uri(s):
            return cls(s.rstrip("/"))
        if s.startswith("file://"):
            s = s[len("file://") :]
        return cls(str(Path(s).expanduser().resolve()))

    @property
    def is_local(self) -> bool:
        return not is_uri(self.root)

    @property
    def local_path(self) -> Path | None:
        """The folder as a local :class:`Path` (``None`` for an object store)."""
        return Path(self.root) if self.is_local else None

    @property
    def name(self) -> str:
        return posixpath.basename(self.root.rstrip("/"))

    @property
    def storage(self) -> str:
        """The parent of the sweep folder (Ray Tune's ``storage_path``)."""
        if self.is_local:
            return str(Path(self.root).parent)
        return self.root.rstrip("/").rsplit("/", 1)[0]

    def join(self, *parts: str) -> str:
        if self.is_local:
            return str(Path(self.root, *parts))
        return "/".join([self.root.rstrip("/"), *parts])

    def _fs(self, path: str) -> tuple[pafs.FileSystem, str]:
        if self.is_local:
            return pafs.LocalFileSystem(), path
        return pafs.FileSystem.from_uri(path)

    def exists(self, rel: str) -> bool:
        fs, p = self._fs(self.join(rel))
        return fs.get_file_info(p).type != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        fs, p = self._fs(self.join(rel))
        with fs.open_input_stream(p) as f:
            return f.read()

    def read_buffer(self, rel: str) -> pa.Buffer:
        """The whole file as an Arrow-owned buffer (from Arrow's memory pool), for Parquet
        readers.

        Not Python ``bytes``: Arrow wraps those in a buffer whose release takes the GIL, and
        Arrow's decode threads may drop the last reference while the interpreter exits, which
        aborts the process (seen as a driver exiting with SIGABRT after a sweep). The file is
        opened for random access: on a sequential stream pyarrow's ``read_buffer()`` reads
        Python ``bytes`` and wraps them, which is exactly that."""
        fs, p = self._fs(self.join(rel))
        with fs.open_input_file(p) as f:
            return f.read_buffer()

    def write_bytes(self, rel: str, data: bytes, durable: bool = True) -> None:
        """Write atomically (temp + rename/move); ``durable=False`` skips the fsync of a local
        file (still atomic: never torn for a reader or after a process dies)."""
        target = self.join(rel)
        if self.is_local:
            atomic_write_bytes(Path(target), data, fsync=durable)
            return
        fs, p = self._fs(target)
        parent = posixpath.dirname(p)
        fs.create_dir(parent, recursive=True)
        tmp = posixpath.join(parent, f".{posixpath.basename(p)}.{uuid.uuid4().hex}.tmp")
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, p)

    def list(self, rel: str, suffix: str = "") -> list[str]:
        """Files directly in the folder ``rel`` (paths relative to the root, sorted; [] if the
        folder does not exist). Temp files of atomic writes (``.*``) are skipped."""
        fs, p = self._fs(self.join(rel))
        try:
            infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
        except (FileNotFoundError, NotADirectoryError):
            return []
        names = sorted(
            posixpath.basename(i.path)
            for i in infos
            if i.type == pafs.FileType.File and i.path.endswith(suffix)
        )
        return [f"{rel}/{n}" for n in names if not n.startswith(".")]

    def delete(self, rel: str) -> None:
        """Remove a file (no error if it is already gone)."""
        fs, p = self._fs(self.join(rel))
        try:
            fs.delete_file(p)
        except FileNotFoundError:
            pass

    def makedirs(self) -> None:
        if self.is_local:
            os.makedirs(self.root, exist_ok=True)
        else:
            fs, p = self._fs(self.root)
            fs.create_dir(p, recursive=True)
