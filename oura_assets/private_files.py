"""Files only their owner may read (mode 0600), written so no reader ever sees half of one.

Demo secrets, the demo JWT signing key, the encrypted token journal and the simulator's grants all go
through `write_private`: the content is written to a temporary file beside the target, created 0600 from
the start (no moment where it is world-readable, whatever the umask), flushed to disk, and only then moved
into place. A few lines of our own: the standard library has the parts but no one call, and the
`atomicwrites` package is archived.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_private(path: Path | str, content: str | bytes, *, overwrite: bool = True) -> None:
    """Write `content` (text as UTF-8) to `path` atomically with mode 0600; create the parent directory.

    `overwrite=False` creates `path` only if it does not exist yet and raises `FileExistsError` otherwise,
    still atomically: when several processes race to create the same secret, exactly one wins and the
    others read a complete file (the winner's), never a partly written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode("utf-8") if isinstance(content, str) else content
    # mkstemp creates the file with mode 0600 and a name no other process uses.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails with FileExistsError if `path` exists; never replaces it
        fsync_directory(path.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)


def fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; skipped where directories cannot be opened (not POSIX)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
