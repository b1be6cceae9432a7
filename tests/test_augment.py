"""Batch augmentation: exact against slicing/rot90 oracles, labels stay aligned, seeded and reproducible."""
import torch
import torch.nn.functional as F

from exp.augment import (
    BatchAugment,
    RandomResizedCropItem,
    affine_matrices,
    flip_lr,
    pad_crop,
    seeded_generator,
    warp_affine,
)

def batch(n=32, size=8, seed=0):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_flip_lr_is_a_mirror():
    x = batch()
    assert torch.equal(flip_lr(x, p=1.0), x.flip(-1))
    assert torch.equal(flip_lr(x, p=0.0), x)
    out = flip_lr(x, p=0.5, generator=seeded_generator(0))
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(len(x))]
    assert all(torch.equal(out[i], x[i].flip(-1) if f else x[i]) for i, f in enumerate(flipped))
    assert 0 < sum(flipped) < len(x)


def test_pad_crop_equals_slicing_oracle():
    x = batch(16, 8)
    out = pad_crop(x, pad=2, generator=seeded_generator(5))
    g = seeded_generator(5)
    top, left = torch.randint(0, 5, (16,), generator=g), torch.randint(0, 5, (16,), generator=g)
    padded = F.pad(x, (2, 2, 2, 2))
    expected = torch.stack([padded[i, :, t:t + 8, l:l + 8] for i, (t, l) in enumerate(zip(top, left))])
    assert torch.equal(out, expected)


def test_pad_crop_multichannel_non_square_equals_slicing_oracle():
    # rows and columns of different lengths, and channels: the flattened positions must use the padded width
    x = torch.rand(6, 3, 5, 9)
    out = pad_crop(x, pad=1, generator=seeded_generator(0))
    g = seeded_generator(0)
    top, left = torch.randint(0, 3, (6,), generator=g), torch.randint(0, 3, (6,), generator=g)
    padded = F.pad(x, (1, 1, 1, 1))
    expected = torch.stack([padded[i, :, t:t + 5, l:l + 9] for i, (t, l) in enumerate(zip(top, left))])
    assert torch.equal(out, expected)
    assert torch.equal(pad_crop(x, pad=0), x)


def test_affine_identity_and_quarter_turn():
    x = batch(8, 8)
    identity = torch.tensor([[1., 0, 0], [0, 1, 0]]).expand(8, 2, 3)
    torch.testing.assert_close(warp_affine(x, identity), x, atol=1e-6, rtol=0)
    quarter = torch.tensor([[0., -1, 0], [1, 0, 0]]).expand(8, 2, 3)
    torch.testing.assert_close(warp_affine(x, quarter), torch.rot90(x, 1, (2, 3)), atol=1e-5, rtol=0)
    theta = affine_matrices(100, max_rotate=10, max_zoom=0.1, generator=seeded_generator(0))
    det = torch.linalg.det(theta[:, :, :2])  # 1/scale²: zoom within ±10%
    assert ((det > 1 / 1.1**2 - 1e-5) & (det < 1 / 0.9**2 + 1e-5)).all()


def test_labels_stay_aligned():
    labels = torch.arange(40) % 10
    coded = (labels.float() / 10)[:, None, None, None].expand(40, 1, 8, 8).clone()
    out = BatchAugment(flip=True, pad=1, max_rotate=10, max_zoom=0.1, seed=3)(coded)
    torch.testing.assert_close(out[:, 0, 4, 4] * 10, labels.float(), atol=1e-4, rtol=0)


def test_reproducible_with_seed():
    x = batch()
    a = BatchAugment(pad=1, max_rotate=10, max_zoom=0.1, seed=7)
    first, second = a(x), a(x)
    assert not torch.equal(first, second)
    assert torch.equal(BatchAugment(pad=1, max_rotate=10, max_zoom=0.1, seed=7)(x), first)
    a.reset()
    assert torch.equal(a(x), first)
    assert not torch.equal(BatchAugment(seed=8)(x), first)
    state = torch.random.get_rng_state()
    BatchAugment(seed=1)(x)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is untouched


def test_item_crop():
    x = batch(1, 8)[0]
    assert torch.equal(RandomResizedCropItem(8, min_scale=1.0)(x), x)
    assert RandomResizedCropItem(8, min_scale=0.5, seed=0)(x).shape == (1, 8, 8)
