"""Atomic file writes: a file appears under its final name complete, or not at all.

The data goes to a temporary file ``.<name>.<random>.part`` in the same
folder (so the final rename stays on one file system), is flushed and
fsync'ed, then ``os.replace`` moves it over the final name in one step. A
crash, a full disk or Ctrl-C leaves the previous file (if any) untouched and
removes the temporary one.

A process killed outright (SIGKILL, out of memory, power loss) cannot remove
its temporary file, so every save first removes the ones earlier saves to
the same path left behind. A writer holds an exclusive ``flock`` on its
temporary file while it writes, so a save running concurrently in another
process is recognised and its file left alone; files younger than a few
seconds are also left alone, to cover the moment between creating a file and
locking it. Without ``fcntl`` (Windows) nothing is cleaned up.

This module deliberately knows nothing of the formats written through it.
"""
import contextlib
import os
import re
import tempfile
import time

try:
    import fcntl
except ImportError:     # Windows
    fcntl = None

STALE_AFTER_S = 5


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _lock(fd):
    """Take an exclusive flock on ``fd``; False if another open file holds one
    (or the file system has no locks: then nothing counts as stale)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def remove_stale_parts(path):
    """Remove the temporary files that interrupted saves to ``path`` left in
    its folder: unlocked and older than STALE_AFTER_S. Returns their paths."""
    if fcntl is None:
        return []
    folder, base = os.path.split(os.path.abspath(path))
    # mkstemp's random part has no dot, so ".f.npz.x.<random>.part" (a save to
    # "f.npz.x") does not match the pattern for "f.npz"
    pattern = re.compile(re.escape("." + base + ".") + r"[^.]+\.part")
    try:
        names = os.listdir(folder)
    except OSError:             # unreadable folder: the save itself will say so, or work
        return []
    removed = []
    for name in names:
        if not pattern.fullmatch(name):
            continue
        part = os.path.join(folder, name)
        try:
            fd = os.open(part, os.O_RDONLY)
        except OSError:         # gone already, or not ours to read
            continue
        try:
            if time.time() - os.fstat(fd).st_mtime > STALE_AFTER_S and _lock(fd):
                os.unlink(part)
                removed.append(part)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Open a temporary file for writing; on a clean exit it replaces ``path``."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    remove_stale_parts(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                               suffix=".part")
    # the lock lives on the open file, which a dup keeps open past the rename
    held = os.dup(fd) if fcntl is not None and _lock(fd) else None
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:  # includes KeyboardInterrupt: never leave the .part file
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        if held is not None:
            os.close(held)


def write_bytes(path, data):
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)
