"""Fetch one file from a list of mirrors, checksum it, write it atomically.

Mirrors are tried in turn; a mirror that fails (no connection, HTTP error,
wrong checksum) hands over to the next one, and the final error lists what
each mirror said. The MD5 is checked on the *decompressed* bytes, because
mirrors re-compress the files and the published checksums are of the raw
IDX data. The file is written under its final name only once verified and
complete (``fastcnn._atomic``), so an interrupted download leaves nothing.

This module deliberately has no retries, no resume and no progress output.
"""
import gzip
import hashlib
import os
import socket
import urllib.error
import urllib.request
import zlib

from fastcnn import _atomic
from fastcnn.datasets.idx import DataError


class DownloadError(DataError):
    """No mirror delivered a good copy of the file."""


def _decompress(raw):
    if raw[:2] != b"\x1f\x8b":
        return raw
    return gzip.decompress(raw)


def fetch(filename, md5, folder, mirrors, *, timeout=30, opener=None):
    """Download ``filename + '.gz'`` from the first mirror that serves a copy
    whose decompressed MD5 is ``md5``; store it as ``folder/filename.gz``.
    Returns the stored path. ``opener`` defaults to ``urllib.request.urlopen``."""
    opener = opener or urllib.request.urlopen
    failures, offline = [], True
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename + ".gz"
        try:
            with opener(url, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:          # the server answered: not offline
            failures.append(f"{url}: HTTP {e.code} {e.reason}")
            offline = False
            continue
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            failures.append(f"{url}: {reason}")
            continue
        offline = False
        try:
            data = _decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            failures.append(f"{url}: the download is truncated or not gzip data ({e})")
            continue
        got = hashlib.md5(data).hexdigest()
        if got != md5:
            failures.append(f"{url}: checksum mismatch (md5 of the decompressed data is "
                            f"{got}, expected {md5})")
            continue
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, filename + ".gz")
        _atomic.write_bytes(path, raw)
        return path
    hint = ("no network connection? " if offline else "") + (
        "Download the files on a machine with internet access and pass their folder "
        "with --data-dir (or $FASTCNN_DATA)")
    raise DownloadError(f"could not download {filename}: {hint}. Tried: "
                        + "; ".join(failures))
