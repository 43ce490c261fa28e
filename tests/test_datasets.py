"""fastcnn.datasets: IDX reading, where files are looked for, every data error,
and the download path (against local fake mirrors; never the network)."""
import gzip
import os
import socket
import urllib.error

import numpy as np
import pytest

from _idx import NAMES, md5s, synthetic_digits, write_file, write_mnist
from fastcnn import _atomic
from fastcnn.datasets import DataError, DownloadError, cache_dir, load_mnist, mnist
from fastcnn.datasets import idx

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
    assert data.folder == str(tmp_path)


def test_limits_keep_the_first_images(tmp_path):
    write_mnist(tmp_path, n_train=20, n_test=10)
    full, cut = load_mnist(tmp_path), load_mnist(tmp_path, limit_train=7, limit_test=3)
    np.testing.assert_array_equal(cut.train_images, full.train_images[:7])
    assert len(cut.test_labels) == 3


def test_lookup_order_argument_then_env_then_cache(tmp_path, monkeypatch):
    for name in ("arg", "env", "xdg/fastcnn/mnist"):
        write_mnist(tmp_path / name, n_train=4, n_test=2)
    assert cache_dir() == str(tmp_path / "xdg" / "fastcnn" / "mnist")
    assert load_mnist().folder == cache_dir()
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path / "env"))
    assert load_mnist().folder == str(tmp_path / "env")
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
    monkeypatch.setattr(mnist, "FILES", {k: (sums[k], v[1]) for k, v in mnist.FILES.items()})
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
        load_mnist(mirrors=[bad.as_uri() + "/"])
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
        load_mnist(mirrors=["https://a.example/", "https://b.example/"], opener=offline)
    msg = str(e.value)
    assert "no network connection?" in msg and "--data-dir" in msg
    assert "https://a.example/train-images-idx3-ubyte.gz" in msg and "b.example" in msg


def test_http_error_is_not_called_offline(mirror):
    def not_found(url, timeout):
        raise urllib.error.HTTPError(url, 404, "Not Found", None, None)

    with pytest.raises(DownloadError, match="HTTP 404") as e:
        load_mnist(mirrors=["https://a.example/"], opener=not_found)
    assert "no network" not in str(e.value)


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
