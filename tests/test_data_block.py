"""The data block API: a real folder of PNGs written and read back equal; bad files named."""
import pytest
import torch

from exp.data import load_digits
from exp.data_block import (
    CategoryProcessor,
    CorruptImageError,
    DataBlock,
    FolderSplitter,
    FuncSplitter,
    RandomSplitter,
    check_images,
    collate_images,
    get_files,
    get_image_files,
    open_image,
    parent_label,
    save_images,
    to_uint8,
)

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    x_train, y_train, x_valid, y_valid = load_digits()
    x_train, y_train, x_valid, y_valid = x_train[:200], y_train[:200], x_valid[:100], y_valid[:100]
    root = tmp_path_factory.mktemp("digits")
    save_images(x_train, y_train, root / "train", 8)
    save_images(x_valid, y_valid, root / "valid", 8)
    (root / "notes.txt").write_text("not an image")
    return root, (x_train, y_train, x_valid, y_valid)


def read_back(ds, vocab):
    order = sorted(range(len(ds)), key=lambda i: int(ds.items[i].stem))
    xs, ys = collate_images(ds[order])
    return xs, torch.tensor([int(vocab[int(i)]) for i in ys])


def test_round_trip_equal(folder):
    root, (x_train, y_train, x_valid, y_valid) = folder
    block = DataBlock()
    train_ds, valid_ds = block.datasets(root)
    assert (len(train_ds), len(valid_ds)) == (200, 100)
    for ds, x, y in ((train_ds, x_train, y_train), (valid_ds, x_valid, y_valid)):
        xs, ys = read_back(ds, block.processor.vocab)
        assert xs.shape == (len(x), 1, 8, 8) and xs.dtype == torch.float32
        assert torch.equal(to_uint8(xs).flatten(1), to_uint8(x))
        assert torch.equal(xs.flatten(1), to_uint8(x).float() / 255)
        assert torch.equal(ys, y)


def test_get_files_filters_and_sorts(folder):
    root, _ = folder
    images = get_image_files(root)
    assert len(images) == 300 and images == sorted(images)
    assert get_files(root, "PNG") == images
    assert root / "notes.txt" in get_files(root) and root / "notes.txt" not in images
    assert get_files(root, ".txt", recurse=False) == [root / "notes.txt"]
    assert len(get_image_files(root, folders=["valid"])) == 100


def test_splitters(folder):
    root, _ = folder
    items = get_image_files(root)
    train, valid = FolderSplitter()(items)
    assert all(items[i].parent.parent.name == "valid" for i in valid) and len(valid) == 100
    a, b = RandomSplitter(0.3, seed=1)(items), RandomSplitter(0.3, seed=1)(items)
    assert a == b and len(a[1]) == 90 and not set(a[0]) & set(a[1])
    assert RandomSplitter(0.3, seed=2)(items)[1] != a[1]
    train, valid = FuncSplitter(lambda p: parent_label(p) == "3")(items)
    assert {parent_label(items[i]) for i in valid} == {"3"}


def test_category_processor_round_trips():
    proc = CategoryProcessor().setup(["cat", "dog", "cat", "ant"])
    assert proc.vocab == ["ant", "cat", "dog"]
    labels = ["dog", "ant", "cat"]
    assert proc.encode(labels).tolist() == [2, 0, 1]
    assert proc.decode(proc.encode(labels)) == labels
    with pytest.raises(KeyError, match="bird"):
        proc.encode(["bird"])


def test_corrupt_file_is_named_or_skipped(tmp_path):
    x, y = load_digits()[:2]
    paths = save_images(x[:20], y[:20], tmp_path / "train", 8)
    save_images(x[20:30], y[20:30], tmp_path / "valid", 8)
    bad = tmp_path / "train" / "7" / "corrupt.png"
    bad.parent.mkdir(exist_ok=True)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    truncated = tmp_path / "valid" / "1" / "cut.png"
    truncated.parent.mkdir(exist_ok=True)
    truncated.write_bytes(paths[0].read_bytes()[:30])
    with pytest.raises(CorruptImageError, match="corrupt.png"):
        open_image(bad)
    with pytest.raises(CorruptImageError, match="cut.png"):
        open_image(truncated)
    digits = [str(d) for d in range(10)]
    with pytest.raises(CorruptImageError, match="corrupt.png"):
        DataBlock(processor=CategoryProcessor(digits)).datasets(tmp_path)
    with pytest.warns(UserWarning, match="corrupt.png"):
        train_ds, valid_ds = DataBlock(processor=CategoryProcessor(digits), skip_bad=True).datasets(tmp_path)
    assert (len(train_ds), len(valid_ds)) == (20, 10)
    assert check_images([paths[0]]) == [paths[0]]
