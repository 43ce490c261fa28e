"""Reading IDX files (LeCun's format for MNIST), gzip-compressed or not.

    magic (4 bytes, big-endian): 0x00 0x00, type code (0x08 = ubyte), ndim
    ndim dimension sizes (4 bytes each, big-endian), then the data, row-major

Every way a file can be wrong gets its own message naming the file. This
module deliberately knows nothing about MNIST's file names or locations.
"""
import gzip
import zlib

import numpy as np

UBYTE = 0x08


class DataError(Exception):
    """A data file is missing, unreadable or not what it should be."""


def read_bytes(path):
    """The file's content, decompressed when it is gzip data (by its magic
    bytes, not its name)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path} is truncated or corrupt: gzip could not decompress it "
                        f"({e}); delete it and fetch it again") from None


def parse(data, path, ndim):
    """An IDX ubyte array of ``ndim`` dimensions from ``data`` (bytes)."""
    header = 4 + 4 * ndim
    expected_magic = (UBYTE << 8) | ndim
    if len(data) < 4:
        raise DataError(f"{path} is truncated: {len(data)} bytes, not even an IDX header")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise DataError(f"{path} has the wrong magic number 0x{magic:08x}; an IDX file of "
                        f"{ndim}-D unsigned bytes starts with 0x{expected_magic:08x}. "
                        f"Is it the right file (images vs labels)?")
    if len(data) < header:
        raise DataError(f"{path} is truncated: {len(data)} bytes, shorter than its "
                        f"{header}-byte header")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(dims))
    if len(data) - header != size:
        what = "truncated" if len(data) - header < size else "too long"
        raise DataError(f"{path} is {what}: its header promises {' x '.join(map(str, dims))}"
                        f" = {size} bytes of data, the file holds {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def encode(array):
    """The bytes of a uint8 array as an uncompressed IDX file (for tests and tools)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    head = bytes([0, 0, UBYTE, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return head + array.tobytes()
