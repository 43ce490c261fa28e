"""Reading IDX files (LeCun's format for MNIST), gzip-compressed or not.

    magic (4 bytes, big-endian): 0x00 0x00, type code (0x08 = ubyte), ndim
    ndim dimension sizes (4 bytes each, big-endian), then the data, row-major

The file is read as a stream: the header is checked from its first bytes
before anything else is read, then exactly the number of data bytes the
header announces goes into one buffer of that size, and one byte more is
asked for to catch trailing data. A small .gz that would expand to gigabytes
therefore costs what its header announces and no more, and ``max_bytes``
refuses an absurd announcement before anything is allocated.

Every way a file can be wrong gets its own message naming the file. This
module deliberately knows nothing about MNIST's file names or locations.
"""
import gzip
import zlib

import numpy as np

UBYTE = 0x08
GZIP_MAGIC = b"\x1f\x8b"


class DataError(Exception):
    """A data file is missing, unreadable or not what it should be."""


def _open(path):
    """A binary stream of the file's content, gunzipped when it is gzip data
    (by its magic bytes, not its name)."""
    with open(path, "rb") as f:
        gz = f.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if gz else open(path, "rb")


def _fill(f, buf):
    """Read into ``buf`` until it is full or the stream ends; bytes read."""
    view, n = memoryview(buf), 0
    while n < len(view):
        got = f.readinto(view[n:])
        if not got:
            break
        n += got
    return n


def read(path, ndim, *, max_bytes=None, digest=None):
    """The IDX ubyte array of ``ndim`` dimensions stored in file ``path``.
    ``max_bytes``: refuse a header announcing more data than this.
    ``digest``: a hashlib object fed every (decompressed) byte of the file."""
    try:
        f = _open(path)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    with f:
        try:
            return _read(f, path, ndim, max_bytes, digest)
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise DataError(f"{path} is truncated or corrupt: gzip could not decompress it "
                            f"({e}); delete it and fetch it again") from None
        except OSError as e:
            raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def _read(f, path, ndim, max_bytes, digest):
    expected_magic = (UBYTE << 8) | ndim
    head = f.read(4)
    if len(head) < 4:
        raise DataError(f"{path} is truncated: {len(head)} bytes, not even an IDX header")
    magic = int.from_bytes(head, "big")
    if magic != expected_magic:
        raise DataError(f"{path} has the wrong magic number 0x{magic:08x}; an IDX file of "
                        f"{ndim}-D unsigned bytes starts with 0x{expected_magic:08x}. "
                        f"Is it the right file (images vs labels)?")
    head += f.read(4 * ndim)
    if len(head) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated: {len(head)} bytes, shorter than its "
                        f"{4 + 4 * ndim}-byte header")
    dims = tuple(int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(dims, dtype=object))     # Python ints: no overflow on a bad header
    promise = f"its header promises {' x '.join(map(str, dims))} = {size} bytes of data"
    if max_bytes is not None and size > max_bytes:
        raise DataError(f"{path}: {promise}, more than the {max_bytes} this reader accepts; "
                        f"is it the right file?")
    data = np.empty(size, dtype=np.uint8)
    got = _fill(f, data)
    if got < size:
        raise DataError(f"{path} is truncated: {promise}, the file holds {got}")
    if f.read(1):
        raise DataError(f"{path} is too long: {promise}, the file holds more")
    if digest is not None:
        digest.update(head)
        digest.update(data)
    return data.reshape(dims)


def encode(array):
    """The bytes of a uint8 array as an uncompressed IDX file (for tests and tools)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    head = bytes([0, 0, UBYTE, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return head + array.tobytes()
