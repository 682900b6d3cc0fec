"""Reading style files that anyone with write access to the styles folder (or the Blob `loras`
container it mirrors) may have put there: only regular files, links only when they lead somewhere inside
the folder, and never more bytes than a style file can sensibly hold.

A FIFO named `x.toml` would block `open()` forever and take a worker thread with it; a link to
`/etc/passwd` named `preview.png` would serve that file to clients. So the path is resolved first, its
target checked with `stat` (which never blocks), and the file opened non-blocking and without following
links, then checked again on the open descriptor, so that a file swapped in between is caught too.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

from noisett_mcp.errors import UnsafeFile

MAX_MANIFEST_BYTES = 64 * 1024  # a manifest is a few hundred bytes; this leaves room for long descriptions
MAX_PREVIEW_BYTES = 8 * 1024 * 1024  # a preview is shown small; the whole file goes to the client
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
_OPEN_FLAGS |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)

FileKey = tuple[str, int, int, int]  # real path, mtime, size, inode: what a cache entry depends on


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "folder"),
        (stat.S_ISFIFO, "named pipe (FIFO)"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


def regular_file(path: Path, root: Path | None) -> tuple[Path, FileKey]:
    """The real path of `path` and its cache key; raise UnsafeFile unless it is a regular file and, when
    `root` is given, resolves inside `root` (a link within the folder is fine, one out of it is not).
    Raise FileNotFoundError when it is missing."""
    try:
        real = path.resolve(strict=True)
    except RuntimeError:  # a link loop (Python 3.11 raises RuntimeError for it)
        raise UnsafeFile("it is a link loop") from None
    if root is not None and not real.is_relative_to(root.resolve()):
        raise UnsafeFile("it is a link that leads outside the styles folder; only files inside it are read")
    st = os.stat(real)  # stat never blocks, whatever the file is
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(f"it is a {_kind(st.st_mode)}, not a regular file")
    return real, (str(real), st.st_mtime_ns, st.st_size, st.st_ino)


def _open_regular(real: Path) -> int:
    """A descriptor for the regular file `real`; non-blocking, not following a link swapped in."""
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link: it was swapped in after the check
            raise UnsafeFile("it changed into a link while being read") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnsafeFile(f"it is a {_kind(mode)}, not a regular file")
    return fd


def read_capped(real: Path, limit: int, what: str) -> bytes:
    """The bytes of the regular file `real`; raise UnsafeFile if it holds more than `limit`."""
    fd = _open_regular(real)
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(limit + 1)
        except BlockingIOError:  # a kernel file that has nothing yet (`/proc/kmsg`): never wait for it
            data = None
    if data is None:
        raise UnsafeFile("it has no data to read without waiting")
    if len(data) > limit:
        raise UnsafeFile(f"the {what} is larger than {limit // 1024} KiB, the most a {what} may be")
    return data


def sha256_regular(real: Path) -> str:
    """The SHA-256 of the regular file `real` (opened as `read_capped` does)."""
    fd = _open_regular(real)
    with os.fdopen(fd, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
