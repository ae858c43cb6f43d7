"""Where a path or URL lives: a pyarrow filesystem and the path inside it.

pyarrow understands local paths and its own schemes (file://, s3://, gs://, hdfs://, abfs://);
any other URL goes to fsspec (memory://, http://, az://, ...) when fsspec is installed, wrapped
so that the rest of the package sees one pyarrow filesystem either way.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.fs as pafs


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """`(filesystem, path)` for a local path or a URL, passed through to pyarrow or fsspec."""
    text = os.fspath(uri)
    if "://" not in text:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text))
    try:
        return pafs.FileSystem.from_uri(text)
    except pa.ArrowInvalid:  # a scheme pyarrow does not know
        pass
    try:
        import fsspec
    except ImportError:
        raise ValueError(f"{text}: pyarrow does not know this URL scheme; install fsspec (and its "
                         f"driver for the scheme) to read it.") from None
    filesystem, path = fsspec.core.url_to_fs(text)
    return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem)), path


def join(folder: str, name: str) -> str:
    """`folder/name` for pyarrow filesystems, which always use '/' (also on Windows)."""
    return f"{folder.rstrip('/')}/{name}"


def is_local(filesystem: pafs.FileSystem) -> bool:
    """Whether `filesystem` is this machine's disk, where a rename is atomic."""
    return isinstance(filesystem, pafs.LocalFileSystem)
