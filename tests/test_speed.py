"""11a's speed pieces: resident batches cover every item once, batched shifts move pixels as stated and
keep labels aligned, the bfloat16 check answers a bool and its fallback is float32, the speedrun learns."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from exp.augment import pad_crop
from exp.data import get_data
from exp.speed import (
    DeviceBatches,
    as_images,
    autocast,
    bf16_speedup,
    bf16_supported,
    predict,
    speedrun_net,
    train_speedrun,
)

def test_batches_cover_every_item_once_per_epoch():
    x, y = torch.arange(103.0)[:, None], torch.arange(103)
    batches = DeviceBatches(x, y, 10, seed=0)
    assert len(batches) == 11
    epochs = [list(batches) for _ in range(2)]
    for epoch in epochs:
        assert [len(yb) for _, yb in epoch] == [10] * 10 + [3]
        seen = torch.cat([yb for _, yb in epoch])
        assert torch.equal(seen.sort().values, y)                      # each item once
        assert all(torch.equal(xb[:, 0].long(), yb) for xb, yb in epoch)  # with its own label
    assert not torch.equal(torch.cat([yb for _, yb in epochs[0]]), torch.cat([yb for _, yb in epochs[1]]))


def test_batches_seeded_drop_last_and_in_order():
    x, y = torch.randn(50, 3), torch.arange(50)
    first = [yb for _, yb in DeviceBatches(x, y, 8, seed=1)]
    again = [yb for _, yb in DeviceBatches(x, y, 8, seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    dropped = DeviceBatches(x, y, 8, drop_last=True, seed=1)
    assert len(dropped) == 6 and all(len(yb) == 8 for _, yb in dropped)
    ordered = list(DeviceBatches(x, y, 8, shuffle=False))
    assert torch.equal(torch.cat([yb for _, yb in ordered]), y)
    assert ordered[1][0].data_ptr() == x[8:].data_ptr()  # slices: views of the resident tensor, no copy


def test_batches_refuse_bad_input():
    with pytest.raises(ValueError, match="x has 5 items but y has 4"):
        DeviceBatches(torch.zeros(5, 2), torch.zeros(4), 2)
    with pytest.raises(ValueError, match="batch_size must be >= 1, not 0"):
        DeviceBatches(torch.zeros(5, 2), torch.zeros(5), 0)


def shifted(image, dy, dx):
    "`image` (C, H, W) moved down `dy` and right `dx` pixels, zeros coming in."
    pad = max(abs(dy), abs(dx))
    padded = F.pad(image, (pad, pad, pad, pad))
    h, w = image.shape[-2:]
    return padded[:, pad - dy:pad - dy + h, pad - dx:pad - dx + w]


def test_shift_moves_pixels_within_pad_and_keeps_labels_aligned():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8) + 0.1  # no zero pixels: every shift is visible
    y = torch.arange(64)
    out = pad_crop(x, pad=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    offsets = list(itertools.product(range(-2, 3), repeat=2))
    moves = []
    for k in range(len(x)):  # each output is its own input (same index: labels stay aligned), moved <= 2
        match = [(dy, dx) for dy, dx in offsets if torch.equal(out[k], shifted(x[k], dy, dx))]
        assert match, f"image {k} (label {y[k]}) is not a shift of its input by at most 2 pixels"
        moves.append(match[0])
    assert len(set(moves)) > 10  # each image draws its own shift


def test_as_images_normalises_with_training_statistics():
    x_train, x_valid = torch.rand(20, 64), torch.rand(5, 64)
    train, valid = as_images(x_train, x_valid)
    assert train.shape == (20, 1, 8, 8) and valid.shape == (5, 1, 8, 8)
    assert abs(train.mean().item()) < 1e-5 and abs(train.std().item() - 1) < 1e-5
    torch.testing.assert_close(valid.reshape(5, 64), (x_valid - x_train.mean()) / x_train.std())
    with pytest.raises(ValueError, match="rows of 50 pixels are not square"):
        as_images(torch.rand(3, 50), torch.rand(3, 50))


def test_bf16_detection_answers_a_bool_and_falls_back_to_float32():
    assert isinstance(bf16_supported(), bool)
    assert bf16_supported(min_speedup=math.inf) is False
    assert bf16_supported("meta") is False
    assert bf16_speedup(size=64, repeats=2) > 0
    layer = nn.Linear(4, 2)
    with autocast("cpu", False):
        assert layer(torch.randn(3, 4)).dtype == torch.float32
    with autocast("cpu", True):
        assert layer(torch.randn(3, 4)).dtype == torch.bfloat16


def digits():
    x_train, y_train, x_valid, y_valid = get_data("digits")
    x_train, x_valid = as_images(x_train, x_valid)
    return x_train, y_train, x_valid, y_valid


def test_float32_fallback_trains_in_float32(one_thread):
    x_train, y_train, x_valid, y_valid = digits()
    torch.manual_seed(0)
    model = speedrun_net((8, 16, 16))
    dtypes = set()
    first_conv = next(m for m in model if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))
    run = train_speedrun(x_train[:256], y_train[:256], x_valid, y_valid, model, epochs=1, batch_size=64,
                         use_bf16=False)
    assert dtypes == {torch.float32} and run["use_bf16"] is False and run["steps"] == 4
    assert all(p.dtype == torch.float32 for p in model.parameters())
    dtypes.clear()
    train_speedrun(x_train[:256], y_train[:256], x_valid, y_valid, model, epochs=0.5, batch_size=64,
                   use_bf16=True)
    assert dtypes == {torch.bfloat16}


def test_speedrun_learns_the_digits(one_thread):
    x_train, y_train, x_valid, y_valid = digits()
    torch.manual_seed(0)
    model = speedrun_net((32, 64, 128), unshuffle=1).to(memory_format=torch.channels_last)
    run = train_speedrun(x_train, y_train, x_valid, y_valid, model, epochs=10, batch_size=64, lr=0.1, seed=0)
    assert run["accuracy"] >= 0.985, run["accuracy"]
    assert run["steps"] == 10 * (len(x_train) // 64) and len(run["losses"]) == run["steps"]
    assert run["losses"][-20:].mean() < run["losses"][:20].mean() / 2
    assert 0 < run["first_step_seconds"] <= run["train_seconds"] <= run["seconds"]
    probs = predict(model, x_valid, run["use_bf16"], tta=True)
    assert probs.shape == (len(x_valid), 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(len(x_valid)))


def test_space_to_depth_rearranges_pixels_into_channels():
    net = speedrun_net()  # unshuffle=2: 28×28×1 in, 14×14×4 into the first convolution
    first_conv = next(m for m in net if isinstance(m, nn.Conv2d))
    assert isinstance(net[0], nn.PixelUnshuffle) and first_conv.in_channels == 4
    x = torch.randn(3, 1, 28, 28)
    seen = []
    first_conv.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    assert net(x).shape == (3, 10)
    # the first convolution sees every pixel exactly once: PixelShuffle puts them back where they were
    assert seen[0].shape == (3, 4, 14, 14) and torch.equal(nn.PixelShuffle(2)(seen[0]), x)
    assert torch.equal(seen[0][0, :, 0, 0], x[0, 0, :2, :2].flatten())
    plain = speedrun_net((8, 16, 16), unshuffle=1)
    assert not any(isinstance(m, nn.PixelUnshuffle) for m in plain)
    assert next(m for m in plain if isinstance(m, nn.Conv2d)).in_channels == 1
    with pytest.raises(ValueError, match="unshuffle must be >= 1"): speedrun_net(unshuffle=0)
