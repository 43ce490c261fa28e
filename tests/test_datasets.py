"""fastcnn.datasets: IDX reading, where files are looked for, every data error,
the download path (against local fake mirrors; never the network), the
bundled sample, and atomic writes."""
import gzip
import io
import os
import socket
import time
import tracemalloc
import urllib.error

import numpy as np
import pytest

from _idx import NAMES, md5s, synthetic_digits, write_file, write_mnist
from fastcnn import _atomic
from fastcnn.datasets import (DataError, DownloadError, SAMPLE_DIR, cache_dir, load_mnist,
                              load_sample, mnist)
from fastcnn.datasets import download, idx

REAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No test sees the developer's $FASTCNN_DATA or ~/.cache."""
    monkeypatch.delenv("FASTCNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_loads_and_normalises(tmp_path, gz, dtype):
    write_mnist(tmp_path, n_train=20, n_test=10, gz=gz)
    data = load_mnist(tmp_path, dtype=dtype)
    raw, labels = synthetic_digits(20, 0)
    assert data.train_images.shape == (20, 1, 28, 28) and data.test_images.shape == (10, 1, 28, 28)
    assert data.train_images.dtype == np.dtype(dtype)
    expected = ((raw.astype(np.float64) / 255 - 0.1307) / 0.3081).astype(dtype)
    np.testing.assert_array_equal(data.train_images[:, 0], expected)
    np.testing.assert_array_equal(data.train_labels, labels)
    assert data.train_labels.dtype == np.int64
    assert data.folder == str(tmp_path) and data.source == f"{tmp_path} (--data-dir)"
    assert not data.is_sample and data.note == ""


def test_limits_keep_the_first_images(tmp_path):
    write_mnist(tmp_path, n_train=20, n_test=10)
    full, cut = load_mnist(tmp_path), load_mnist(tmp_path, limit_train=7, limit_test=3)
    np.testing.assert_array_equal(cut.train_images, full.train_images[:7])
    assert len(cut.test_labels) == 3


def test_lookup_order_argument_then_env_then_cache(tmp_path, monkeypatch):
    for name in ("arg", "env", "xdg/fastcnn/mnist"):
        write_mnist(tmp_path / name, n_train=4, n_test=2)
    assert cache_dir() == str(tmp_path / "xdg" / "fastcnn" / "mnist")
    assert load_mnist().source == f"the cache folder {cache_dir()}"
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path / "env"))
    assert load_mnist().source == f"{tmp_path / 'env'} ($FASTCNN_DATA)"
    assert load_mnist(tmp_path / "arg").folder == str(tmp_path / "arg")


def test_cache_defaults_to_home_without_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == str(tmp_path / ".cache" / "fastcnn" / "mnist")


def test_missing_folder_says_where_it_looked_and_how_to_fix(tmp_path, monkeypatch):
    with pytest.raises(DataError) as e:
        load_mnist(tmp_path / "nope")
    msg = str(e.value)
    assert str(tmp_path / "nope") in msg and "does not exist" in msg
    assert "--data-dir" in msg and "FASTCNN_DATA" in msg and "train-images-idx3-ubyte" in msg
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path / "gone"))
    with pytest.raises(DataError, match=r"gone \(from \$FASTCNN_DATA\) does not exist"):
        load_mnist()


def test_missing_files_are_named(tmp_path):
    write_mnist(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte;"):
        load_mnist(tmp_path)


def test_truncated_gzip_file(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is truncated or corrupt"):
        load_mnist(tmp_path)


def test_truncated_raw_file_names_the_sizes(tmp_path):
    contents = write_mnist(tmp_path, n_train=10, gz=False)
    write_file(tmp_path, NAMES[0], contents[NAMES[0]][:-5], gz=False)
    with pytest.raises(DataError, match=r"is truncated: its header promises 10 x 28 x 28 = "
                                        r"7840 bytes of data, the file holds 7835"):
        load_mnist(tmp_path)


def _gz_bomb(head, mebibytes):
    """``head`` gzip-compressed, then gzip members expanding to ``mebibytes``
    MiB of zeros, a thousandth of that on disk (a gzip reader joins members)."""
    zeros = gzip.compress(bytes(1 << 24), compresslevel=9)       # 16 MiB of zeros each
    return gzip.compress(head) + zeros * (mebibytes // 16)


def _peak_memory(fn):
    """Peak bytes traced by tracemalloc (NumPy's and Python's allocations) in fn()."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_gz_bomb_is_refused_after_the_announced_size_without_expanding(tmp_path):
    write_mnist(tmp_path, n_train=10)
    images, _ = synthetic_digits(10, 0)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(_gz_bomb(idx.encode(images), 1024))

    def load():
        with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz is too long: its "
                                            r"header promises 10 x 28 x 28 = 7840 bytes of "
                                            r"data, the file holds more"):
            load_mnist(tmp_path)

    t0 = time.perf_counter()
    peak = _peak_memory(load)
    # decompressing first (the old reader) held the whole GB and took seconds
    assert peak < 16 << 20 and time.perf_counter() - t0 < 5


def test_header_announcing_too_much_is_refused_before_reading(tmp_path):
    write_mnist(tmp_path)
    head = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (2_000_000, 28, 28))
    write_file(tmp_path, "train-images-idx3-ubyte", head + bytes(1000))
    with pytest.raises(DataError, match=r"2000000 x 28 x 28 = 1568000000 bytes of data, more "
                                        r"than the 1073741824 this reader accepts"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("gz", [True, False])
def test_trailing_data_is_refused(tmp_path, gz):
    contents = write_mnist(tmp_path, n_train=10, gz=gz)
    write_file(tmp_path, NAMES[1], contents[NAMES[1]] + b"\0", gz=gz)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte(.gz)? is too long: its "
                                        r"header promises 10 = 10 bytes of data"):
        load_mnist(tmp_path)


def test_zero_training_images_is_an_error(tmp_path):
    write_mnist(tmp_path, n_train=0)
    with pytest.raises(DataError, match=r"train-\*: the files hold no images"):
        load_mnist(tmp_path)


def test_test_only_load_never_reads_the_training_files(tmp_path):
    write_mnist(tmp_path, n_test=10)
    os.remove(tmp_path / "train-labels-idx1-ubyte.gz")
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not an IDX file at all")
    data = load_mnist(tmp_path, train=False, limit_test=4)
    assert data.train_images is None and data.train_labels is None
    np.testing.assert_array_equal(data.test_labels, synthetic_digits(10, 1)[1][:4])
    with pytest.raises(DataError, match="lacks train-labels-idx1-ubyte;"):
        load_mnist(tmp_path)


def test_wrong_magic_number(tmp_path):
    contents = write_mnist(tmp_path)
    # a label file where the images belong
    write_file(tmp_path, "train-images-idx3-ubyte", contents["train-labels-idx1-ubyte"])
    with pytest.raises(DataError, match=r"wrong magic number 0x00000801; .* 0x00000803"):
        load_mnist(tmp_path)


def test_image_label_count_mismatch(tmp_path):
    write_mnist(tmp_path, n_test=10)
    write_file(tmp_path, "t10k-labels-idx1-ubyte", idx.encode(np.zeros(9, np.uint8)))
    with pytest.raises(DataError, match="count mismatch, 10 images but 9 labels"):
        load_mnist(tmp_path)


def test_labels_must_be_digits(tmp_path):
    write_mnist(tmp_path, n_train=3)
    write_file(tmp_path, "train-labels-idx1-ubyte", idx.encode(np.array([1, 2, 12], np.uint8)))
    with pytest.raises(DataError, match="labels must be digits 0-9, found 12"):
        load_mnist(tmp_path)


def test_verify_detects_checksum_mismatch(tmp_path):
    write_mnist(tmp_path)
    with pytest.raises(DataError, match="checksum mismatch"):
        load_mnist(tmp_path, verify=True)


# -- downloading -----------------------------------------------------------
@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A good fake mirror (a folder served by file:// URLs) whose MD5s are registered."""
    contents = write_mnist(tmp_path / "mirror", n_train=8, n_test=4)
    sums = md5s(contents)
    monkeypatch.setattr(mnist, "FILES", {k: (sums[k], len(contents[k]), v[2])
                                         for k, v in mnist.FILES.items()})
    return (tmp_path / "mirror").as_uri() + "/"


def test_download_into_cache_tries_mirrors_in_turn(tmp_path, mirror):
    broken = (tmp_path / "no-such-mirror").as_uri() + "/"
    data = load_mnist(mirrors=[broken, mirror])
    assert data.folder == cache_dir() and len(data.train_images) == 8
    assert sorted(os.listdir(cache_dir())) == sorted(n + ".gz" for n in NAMES)
    # second load: straight from the cache, the mirrors are not touched
    assert len(load_mnist(mirrors=[broken]).test_images) == 4


def test_download_checksum_mismatch_is_rejected_and_nothing_is_written(tmp_path, mirror):
    bad = tmp_path / "bad"
    write_mnist(bad, n_train=8, n_test=4, seed=99)       # same names, other content
    with pytest.raises(DownloadError, match="checksum mismatch"):
        load_mnist(mirrors=[bad.as_uri() + "/"], sample=False)
    assert not os.path.exists(cache_dir()) or os.listdir(cache_dir()) == []


def test_download_checks_decompressed_bytes(tmp_path, mirror):
    # a mirror whose .gz bytes differ (other compression level) but whose data is the same
    other = tmp_path / "recompressed"
    other.mkdir()
    src = tmp_path / "mirror"
    for name in NAMES:
        data = gzip.decompress((src / (name + ".gz")).read_bytes())
        (other / (name + ".gz")).write_bytes(gzip.compress(data, compresslevel=1, mtime=1))
    assert len(load_mnist(mirrors=[other.as_uri() + "/"]).train_labels) == 8


def test_no_network_gives_a_clear_error(mirror):
    def offline(url, timeout):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    with pytest.raises(DownloadError) as e:
        load_mnist(mirrors=["https://a.example/", "https://b.example/"], opener=offline,
                   sample=False)
    msg = str(e.value)
    assert "no network connection?" in msg and "--data-dir" in msg
    assert "https://a.example/train-images-idx3-ubyte.gz" in msg and "b.example" in msg


def test_http_error_is_not_called_offline(mirror):
    def not_found(url, timeout):
        raise urllib.error.HTTPError(url, 404, "Not Found", None, None)

    with pytest.raises(DownloadError, match="HTTP 404") as e:
        load_mnist(mirrors=["https://a.example/"], opener=not_found, sample=False)
    assert "no network" not in str(e.value)


def test_test_only_load_downloads_only_the_test_files(mirror):
    data = load_mnist(mirrors=[mirror], train=False)
    assert data.train_images is None and len(data.test_labels) == 4
    assert sorted(os.listdir(cache_dir())) == ["t10k-images-idx3-ubyte.gz",
                                               "t10k-labels-idx1-ubyte.gz"]


def test_download_that_is_too_big_is_refused_unexpanded(tmp_path, mirror):
    bomb, huge = _gz_bomb(b"", 64), bytes(64 << 20)   # small enough to be downloaded

    def serving(body):
        return lambda url, timeout: io.BytesIO(body)

    peak = _peak_memory(lambda: pytest.raises(DownloadError, load_mnist, sample=False,
                                              mirrors=["https://a.example/"],
                                              opener=serving(bomb)))
    assert peak < 16 << 20
    with pytest.raises(DownloadError, match="decompresses to more than the 6288 bytes"):
        load_mnist(mirrors=["https://a.example/"], opener=serving(bomb), sample=False)
    with pytest.raises(DownloadError, match="the download is larger than the 71830 bytes"):
        load_mnist(mirrors=["https://a.example/"], opener=serving(huge), sample=False)
    assert not os.path.exists(cache_dir())


def test_atomic_write_leaves_old_file_and_no_partial(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with _atomic.atomic_open(target) as f:
            f.write(b"half of the new")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]
    _atomic.write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["f.bin"]


@pytest.mark.skipif(not os.path.isdir(REAL), reason="real MNIST not at ../shared/data/mnist")
def test_real_mnist_files():
    data = load_mnist(REAL, verify=True)
    assert data.train_images.shape == (60000, 1, 28, 28)
    assert data.test_images.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(data.test_labels),
                                  [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    # normalised with the training set's own statistics: mean ~0, std ~1
    assert abs(float(data.train_images.mean(dtype=np.float64))) < 1e-3
    assert float(data.train_images.std(dtype=np.float64)) == pytest.approx(1.0, abs=1e-3)


def _part(target, name, age_s):
    """A temporary file as an interrupted save to ``target`` leaves it, ``age_s`` old."""
    part = target.parent / name
    part.write_bytes(b"half a save")
    os.utime(part, (time.time() - age_s,) * 2)
    return part


def test_save_removes_the_parts_a_killed_save_to_the_same_path_left(tmp_path):
    pytest.importorskip("fcntl")
    target = tmp_path / "ck.npz"
    _part(target, ".ck.npz.k1l3d_x9.part", 3600)                   # stale: goes
    keep = [_part(target, ".ck.npz.n3wb0rn_.part", 0),             # just created: stays
            _part(target, ".ck.npz.x.abc12345.part", 3600),        # a save to ck.npz.x
            _part(target, "ck.npz.part", 3600)]                    # not ours at all
    _atomic.write_bytes(target, b"new")
    assert sorted(os.listdir(tmp_path)) == sorted(["ck.npz"] + [p.name for p in keep])
    assert target.read_bytes() == b"new"


def test_a_save_still_writing_is_not_taken_for_stale(tmp_path):
    pytest.importorskip("fcntl")
    target = tmp_path / "ck.npz"
    with _atomic.atomic_open(target) as f:
        f.write(b"first")
        [part] = [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
        os.utime(part, (time.time() - 3600,) * 2)    # old, but its writer holds the lock
        _atomic.write_bytes(target, b"second")
        assert part.exists()
    assert target.read_bytes() == b"first" and os.listdir(tmp_path) == ["ck.npz"]


# -- the bundled sample ----------------------------------------------------
TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _offline(url, timeout):
    raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))


def test_the_sample_is_mnists_test_set_as_published():
    import hashlib
    for name, md5 in (("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea"),
                      ("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637")):
        with open(os.path.join(SAMPLE_DIR, name + ".gz"), "rb") as f:
            assert hashlib.md5(gzip.decompress(f.read())).hexdigest() == md5
    text = open(os.path.join(SAMPLE_DIR, "README.md"), encoding="utf-8").read()
    for words in ("LeCun", "Cortes", "Burges", "Attribution-Share Alike 3.0"):
        assert words in text


def test_the_sample_holds_out_every_fifth_image():
    data = load_sample(dtype="float64")
    assert data.is_sample and (len(data.train_labels), len(data.test_labels)) == (8000, 2000)
    np.testing.assert_array_equal(np.bincount(data.train_labels) + np.bincount(data.test_labels),
                                  TEST_LABEL_COUNTS)
    if os.path.isdir(REAL):
        full = load_mnist(REAL, dtype="float64", train=False)
        np.testing.assert_array_equal(data.test_images, full.test_images[4::5])
        np.testing.assert_array_equal(data.train_labels,
                                      np.delete(full.test_labels, np.s_[4::5]))


def test_no_data_and_no_network_trains_on_the_sample_and_says_so():
    data = load_mnist(opener=_offline, limit_train=100)
    assert data.is_sample and data.folder == SAMPLE_DIR and len(data.train_labels) == 100
    assert data.source == ("the MNIST sample bundled with fastcnn (8000 train / 2000 test "
                           "images, all from the MNIST test set)")
    for words in (f"not in {cache_dir()} and downloading them failed (no network connection)",
                  "8000 training and 2000 test images", "not comparable", "--data-dir",
                  "$FASTCNN_DATA", "download them into " + cache_dir()):
        assert words in data.note
    test_only = load_mnist(opener=_offline, train=False)
    assert test_only.train_images is None and "the 2000 test images" in test_only.note
    np.testing.assert_array_equal(test_only.test_labels, data.test_labels)
    assert "downloading is off" in load_mnist(download_missing=False).note


def test_the_sample_never_stands_in_for_a_named_folder(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        load_mnist(tmp_path / "nope", opener=_offline)
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path / "gone"))
    with pytest.raises(DataError, match="does not exist"):
        load_mnist(opener=_offline)
    monkeypatch.delenv("FASTCNN_DATA")
    with pytest.raises(DownloadError, match="no network connection"):
        load_mnist(opener=_offline, sample=False)
