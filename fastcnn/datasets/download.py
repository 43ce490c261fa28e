"""Fetch one file from a list of mirrors, checksum it, write it atomically.

Mirrors are tried in turn; a mirror that fails (no connection, HTTP error,
wrong size or checksum) hands over to the next one, and the final error lists
what each mirror said. The MD5 is checked on the *decompressed* bytes, because
mirrors re-compress the files and the published checksums are of the raw
IDX data; neither the download nor its decompression may exceed what the
expected size allows. The file is written under its final name only once
verified and complete (``fastcnn._atomic``), so an interrupted download leaves
nothing.

This module deliberately has no retries, no resume and no progress output.
"""
import gzip
import hashlib
import io
import os
import socket
import urllib.error
import urllib.request
import zlib

from fastcnn import _atomic
from fastcnn.datasets.idx import GZIP_MAGIC, DataError

# seconds a mirror may stay silent (connecting or mid-transfer) before the next
# one is tried: short, because with no network the bundled sample is waiting
TIMEOUT = 5


class DownloadError(DataError):
    """No mirror delivered a good copy of the file. ``offline``: no mirror
    could even be reached; ``failures``: what each mirror said."""

    def __init__(self, message, *, offline=False, failures=()):
        super().__init__(message)
        self.offline, self.failures = offline, list(failures)


def _content(raw, size):
    """MD5 hex digest and length of ``raw``'s content (gunzipped if gzip data),
    decompressing at most ``size + 1`` bytes: a bomb is caught, not expanded."""
    stream = gzip.GzipFile(fileobj=io.BytesIO(raw)) if raw[:2] == GZIP_MAGIC else io.BytesIO(raw)
    digest, n = hashlib.md5(), 0
    while n <= size:
        chunk = stream.read(min(1 << 20, size + 1 - n))
        if not chunk:
            break
        digest.update(chunk)
        n += len(chunk)
    return digest.hexdigest(), n


def fetch(filename, md5, size, folder, mirrors, *, timeout=TIMEOUT, opener=None):
    """Download ``filename + '.gz'`` from the first mirror that serves a copy
    whose decompressed content is ``size`` bytes with MD5 ``md5``; store it as
    ``folder/filename.gz``. Returns the stored path. ``opener`` defaults to
    ``urllib.request.urlopen``."""
    opener = opener or urllib.request.urlopen
    failures, offline = [], True
    # gzip never grows data by more than a few bytes per 16 KB block plus its header
    max_download = size + size // 1000 + (1 << 16)
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename + ".gz"
        try:
            with opener(url, timeout=timeout) as response:
                raw = response.read(max_download + 1)
        except urllib.error.HTTPError as e:          # the server answered: not offline
            failures.append(f"{url}: HTTP {e.code} {e.reason}")
            offline = False
            continue
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            failures.append(f"{url}: {reason}")
            continue
        offline = False
        if len(raw) > max_download:
            failures.append(f"{url}: the download is larger than the {max_download} bytes "
                            f"a gzip copy of this file can take")
            continue
        try:
            got, n = _content(raw, size)
        except (EOFError, OSError, zlib.error) as e:
            failures.append(f"{url}: the download is truncated or not gzip data ({e})")
            continue
        if n > size:
            failures.append(f"{url}: the download decompresses to more than the {size} "
                            f"bytes of the original file")
            continue
        if n != size or got != md5:
            failures.append(f"{url}: checksum mismatch (the decompressed data is {n} bytes "
                            f"with md5 {got}, expected {size} bytes with md5 {md5})")
            continue
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, filename + ".gz")
        _atomic.write_bytes(path, raw)
        return path
    hint = ("no network connection? " if offline else "") + (
        "Download the files on a machine with internet access and pass their folder "
        "with --data-dir (or $FASTCNN_DATA)")
    raise DownloadError(f"could not download {filename}: {hint}. Tried: "
                        + "; ".join(failures), offline=offline, failures=failures)
