"""exp.data: the embedded digits, and MNIST through the real download path on a loopback mirror."""
import gzip
import hashlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import pytest
import torch

from exp.data import (
    MNIST_FILES,
    DatasetUnavailable,
    dataset_name,
    fetch_mnist_file,
    get_data,
    image_size,
    load_digits,
    load_mnist,
    parse_idx,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(not SHARED_MNIST.exists(), reason=f"real MNIST files not at {SHARED_MNIST}")
LABELS = "t10k-labels-idx1-ubyte.gz"


def test_digits_shapes_types_range_and_fixed_split():
    x_train, y_train, x_valid, y_valid = load_digits()
    assert x_train.shape == (1438, 64) and x_valid.shape == (359, 64)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert 0 <= x_train.min() and x_train.max() == 1
    from sklearn.datasets import load_digits as sklearn_digits
    raw = sklearn_digits()
    # train and valid partition the dataset exactly: every image appears once, with its label
    everything = torch.cat([x_train, x_valid]) * 16
    assert sorted(map(tuple, everything.tolist())) == sorted(map(tuple, raw.data.tolist()))
    assert torch.equal(load_digits()[3], y_valid)


def test_dataset_choice_from_environment(monkeypatch):
    monkeypatch.setenv("EXP_DATASET", "digits")
    assert dataset_name() == "digits" and image_size() == 8
    assert get_data()[0].shape[1] == 64
    monkeypatch.setenv("EXP_DATASET", "cifar")
    with pytest.raises(ValueError, match="Unknown dataset 'cifar': choose one of digits, mnist"):
        get_data()


def test_parse_idx_reads_shape_and_rejects_other_formats():
    content = b"\x00\x00\x08\x03" + b"".join(n.to_bytes(4, "big") for n in (2, 1, 3)) + bytes(range(6))
    assert parse_idx(content).tolist() == [[[0, 1, 2]], [[3, 4, 5]]]
    with pytest.raises(ValueError, match="not an IDX file"):
        parse_idx(b"\x00\x00\x0d\x01" + (1).to_bytes(4, "big") + b"\x00" * 4)


@pytest.fixture
def mirror(tmp_path):
    "A loopback HTTP server; returns (folder it serves, base URL)."
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


@needs_mnist
def test_mnist_downloads_verifies_and_caches_through_a_mirror(mirror, tmp_path, monkeypatch):
    served, url = mirror
    for name in MNIST_FILES: shutil.copy(SHARED_MNIST / name, served / name)
    monkeypatch.setenv("EXP_DATA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EXP_MNIST_MIRRORS", f"{closed_port_url()},{url}")  # the first mirror is down
    monkeypatch.setenv("EXP_DATASET", "mnist")
    x_train, y_train, x_valid, y_valid = get_data()
    assert x_train.shape == (60000, 784) and x_valid.shape == (10000, 784)
    assert y_train.shape == (60000,) and y_valid.shape == (10000,)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64 and float(x_train.max()) == 1.0
    cache = tmp_path / "home" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(MNIST_FILES)  # no temp files left
    for name in MNIST_FILES: assert (cache / name).read_bytes() == (SHARED_MNIST / name).read_bytes()
    # A second load reads the cache, with every mirror gone
    monkeypatch.setenv("EXP_MNIST_MIRRORS", closed_port_url())
    assert torch.equal(get_data()[3], y_valid)
    # The labels agree with an independent reading of the file
    raw = gzip.decompress((SHARED_MNIST / LABELS).read_bytes())
    assert y_valid.tolist() == list(raw[8:])


@needs_mnist
def test_corrupt_download_is_rejected_and_never_cached(mirror, tmp_path):
    served, url = mirror
    good = (SHARED_MNIST / LABELS).read_bytes()
    (served / LABELS).write_bytes(good[: len(good) // 2])  # truncated
    cache = tmp_path / "cache"
    with pytest.raises(DatasetUnavailable) as error:
        fetch_mnist_file(cache, LABELS, mirrors=[url])
    assert "rejected, not a complete gzip file" in str(error.value)
    assert not cache.exists() or list(cache.iterdir()) == []
    # Valid gzip but the wrong content: caught by the checksum
    wrong = b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"\x01\x02\x03"
    (served / LABELS).write_bytes(gzip.compress(wrong))
    with pytest.raises(DatasetUnavailable, match="SHA-256"):
        fetch_mnist_file(cache, LABELS, mirrors=[url])
    assert not cache.exists() or list(cache.iterdir()) == []


@needs_mnist
def test_corrupt_cached_file_is_replaced_by_a_verified_download(mirror, tmp_path):
    served, url = mirror
    shutil.copy(SHARED_MNIST / LABELS, served / LABELS)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / LABELS).write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="is corrupt"):
        content = fetch_mnist_file(cache, LABELS, mirrors=[url])
    assert hashlib.sha256(content).hexdigest() == MNIST_FILES[LABELS]
    assert (cache / LABELS).read_bytes() == (SHARED_MNIST / LABELS).read_bytes()


def test_offline_error_says_which_files_to_put_where(tmp_path):
    with pytest.raises(DatasetUnavailable) as error:
        load_mnist(folder=tmp_path / "mnist", mirrors=[closed_port_url()])
    message = str(error.value)
    assert "Could not get train-images-idx3-ubyte.gz from any mirror" in message
    assert f"put the four files {', '.join(MNIST_FILES)} in {tmp_path / 'mnist'}/" in message
    assert "EXP_DATASET=digits" in message
    assert not (tmp_path / "mnist").exists() or list((tmp_path / "mnist").iterdir()) == []


@needs_mnist
def test_issue_command_prints_mnist_shapes():
    "The check from the issue: read the shared files through EXP_DATA_HOME."
    env = {"EXP_DATASET": "mnist", "EXP_DATA_HOME": str(SHARED_MNIST.parent), "PATH": "/usr/bin:/bin",
           "EXP_MNIST_MIRRORS": closed_port_url()}
    code = "from exp.data import get_data; print([tuple(t.shape) for t in get_data()])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=120)
    assert out.stdout.strip() == "[(60000, 784), (60000,), (10000, 784), (10000,)]", out.stderr


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_write_atomically_bytes_or_writer_mode_and_failure(tmp_path):
    """Bytes or a writing function; a new file gets the umask's mode (not mkstemp's 0600); a failure keeps the
    old file."""
    from exp.data import write_atomically
    old_umask = os.umask(0o022)
    try:
        path = write_atomically(tmp_path / "a" / "x.bin", b"first")
        assert path.read_bytes() == b"first" and path.stat().st_mode & 0o777 == 0o644
        path.chmod(0o640)
        write_atomically(path, lambda f: f.write(b"second"))
        assert path.read_bytes() == b"second" and path.stat().st_mode & 0o777 == 0o640

        def fails_halfway(f):
            f.write(b"half")
            raise OSError("disk full")
        with pytest.raises(OSError, match="disk full"): write_atomically(path, fails_halfway)
        assert path.read_bytes() == b"second" and [p.name for p in path.parent.iterdir()] == ["x.bin"]
        os.umask(0o077)
        assert write_atomically(tmp_path / "private.bin", b"p").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old_umask)


SHARED_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"


def test_tinyshakespeare_ships_in_the_package_and_is_the_real_corpus():
    from exp.data import TINYSHAKESPEARE_SHA256, load_tinyshakespeare
    text = load_tinyshakespeare()
    assert len(text) == 1_115_394
    assert text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.")
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == TINYSHAKESPEARE_SHA256
    if SHARED_TEXT.exists():  # the development copy beside the project, when there is one
        assert text == SHARED_TEXT.read_text(encoding="utf-8")


def test_tinyshakespeare_damaged_or_missing_copy_is_refused_with_the_fix(tmp_path):
    import bz2

    from exp.data import load_tinyshakespeare
    text = load_tinyshakespeare()
    edited = tmp_path / "edited.txt.bz2"
    edited.write_bytes(bz2.compress(text.replace("Citizen", "Citizens", 1).encode()))
    with pytest.raises(DatasetUnavailable, match=r"not the tiny Shakespeare corpus.*SHA-256.*reinstall"):
        load_tinyshakespeare(edited)
    garbage = tmp_path / "garbage.txt.bz2"
    garbage.write_bytes(b"not bzip2 at all")
    with pytest.raises(DatasetUnavailable, match=r"cannot read tiny Shakespeare from .*garbage.*reinstall"):
        load_tinyshakespeare(garbage)
    with pytest.raises(DatasetUnavailable, match=r"cannot read tiny Shakespeare from .*missing"):
        load_tinyshakespeare(tmp_path / "missing.txt.bz2")


@pytest.mark.slow
def test_the_built_wheel_carries_the_corpus(tmp_path):
    "What `pip install` gets (not just an editable checkout) has the compressed corpus in exp/assets/."
    import zipfile
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "--no-build-isolation",
               "-w", str(tmp_path), "-q"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    wheel, = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "exp/assets/tinyshakespeare.txt.bz2" in names, names
