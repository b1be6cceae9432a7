"Export to TorchScript and ONNX (outputs equal the model's), loading either, and the predict CLI."
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from exp.conv import get_cnn_model, init_cnn
from exp.deploy import (
    DeployError,
    export_onnx,
    export_torchscript,
    load_exported,
    model_info,
    predict_files,
    read_image,
    save_image,
)
from exp.training import set_seed

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    "A CNN for 8×8 images (random weights, trained a few steps), exported both ways."
    folder = tmp_path_factory.mktemp("deploy")
    set_seed(0)
    model = init_cnn(get_cnn_model((4, 8)))
    x = torch.rand(64, 64)
    y = torch.randint(0, 10, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    info = model_info(8)
    ts = export_torchscript(model, folder / "m.pt", x, info)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_path = export_onnx(model, folder / "m.onnx", x, info)
    return model, folder, ts, onnx_path


@pytest.mark.parametrize("which", ["ts", "onnx"])
def test_outputs_equal_the_model(exported, which):
    model, folder, ts, onnx_path = exported
    predict, info = load_exported(ts if which == "ts" else onnx_path)
    assert info["image_size"] == 8 and info["classes"] == [str(i) for i in range(10)]
    for n in (1, 7, 100):  # the batch dimension is free
        x = torch.rand(n, 64, generator=torch.Generator().manual_seed(n))
        with torch.no_grad(): expected = model(x).numpy()
        np.testing.assert_allclose(predict(x.numpy()), expected, atol=1e-5, rtol=1e-5)


def test_onnx_passes_the_checker(exported):
    import onnx
    onnx.checker.check_model(onnx.load(str(exported[3])))


def test_load_errors_name_the_file(exported, tmp_path):
    with pytest.raises(DeployError, match="missing.onnx"): load_exported(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(DeployError, match="bad.pt"): load_exported(bad)
    other = tmp_path / "model.h5"
    other.write_bytes(b"x")
    with pytest.raises(DeployError, match="unknown model format"): load_exported(other)


def test_images_round_trip_and_sizes(exported, tmp_path):
    row = np.random.default_rng(0).random(64).astype(np.float32)
    path = save_image(row, tmp_path / "a.png")
    back = read_image(path, model_info(8))
    np.testing.assert_allclose(back, row, atol=1 / 510 + 1e-6)
    big = save_image(np.zeros(16 * 16), tmp_path / "big.png")
    with pytest.raises(DeployError, match=r"big.png.*16×16.*8×8"): read_image(big, model_info(8))


def test_predict_files_agrees_with_the_model(exported, tmp_path):
    model, _, ts, onnx_path = exported
    rows = np.random.default_rng(1).random((5, 64)).astype(np.float32)
    paths = [save_image(r, tmp_path / f"{i}.png") for i, r in enumerate(rows)]
    pixels = torch.tensor(np.stack([read_image(p, model_info(8)) for p in paths]))
    with torch.no_grad(): expected = model(pixels).argmax(1).tolist()
    for model_path in (ts, onnx_path):
        got = predict_files(model_path, paths)
        assert [int(label) for _, label, _ in got] == expected
        assert all(0 < prob <= 1 for *_, prob in got)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "exp.deploy", "predict", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli(exported, tmp_path):
    model, _, ts, onnx_path = exported
    images = [save_image(np.full(64, v), tmp_path / f"img{i}.png") for i, v in enumerate((0.0, 0.5, 1.0))]
    ok = _cli(onnx_path, *images)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in images]
    expected = predict_files(onnx_path, images)
    assert [line.split("\t")[1] for line in lines] == [label for _, label, _ in expected]

    missing = _cli(ts, images[0], tmp_path / "nothere.png")
    assert missing.returncode != 0 and "nothere.png" in missing.stderr and "does not exist" in missing.stderr
    wrong = save_image(np.zeros(28 * 28), tmp_path / "mnist_sized.png")
    bad_size = _cli(ts, wrong)
    assert bad_size.returncode != 0 and "mnist_sized.png" in bad_size.stderr and "28×28" in bad_size.stderr
    no_model = _cli(tmp_path / "none.onnx", images[0])
    assert no_model.returncode != 0 and "none.onnx" in no_model.stderr


def test_image_to_row_reads_bytes_like_files(tmp_path):
    from io import BytesIO

    from exp.deploy import image_to_row
    row = np.random.default_rng(2).random(64).astype(np.float32)
    path = save_image(row, tmp_path / "a.png")
    np.testing.assert_array_equal(image_to_row(BytesIO(path.read_bytes()), model_info(8), "the body"),
                                  read_image(path, model_info(8)))
    expected = r"cannot read the body: not an image that Pillow can open \(UnidentifiedImageError\)"
    with pytest.raises(DeployError, match=expected):
        image_to_row(BytesIO(b"not a png"), model_info(8), "the body")
    not_png = tmp_path / "text.png"
    not_png.write_text("hello")
    with pytest.raises(DeployError, match=r"cannot read image .*text.png.*not an image"): read_image(not_png,
                       model_info(8))
