"""Writing a file so that readers see either the old file or the whole new one, never a part."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    """The process umask. Linux reports it in /proc; elsewhere it can only be read by setting it,
    which briefly changes it for every thread of the process."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: str | Path, mode: str = "w", encoding: str | None = "utf-8", **open_args: Any) -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; on a normal exit it replaces `path`.

    On an error or Ctrl-C the temporary file is removed and `path` is left as it was. The file
    gets the mode a plain `open()` would give it (0666 less the umask), not mkstemp's 0600.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes whole files: mode must be 'w' or 'wb', not {mode!r}.")
    path = Path(path)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        os.chmod(temp, 0o666 & ~_umask())
        with open(handle, mode, encoding=None if "b" in mode else encoding, **open_args) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_atomically(path: str | Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to `path` through `atomic_file`, creating its folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as file:
        file.write(data.encode("utf-8") if isinstance(data, str) else data)
