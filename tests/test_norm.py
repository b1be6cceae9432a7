"Normalisation layers from scratch, checked against PyTorch's; RunningBatchNorm at batch size 2."
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from exp.norm import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RunningBatchNorm, normalize
from exp.testing import test_near

def same_affine(ours, theirs):
    torch.manual_seed(1)
    weight, bias = torch.randn(ours.weight.shape), torch.randn(ours.bias.shape)
    with torch.no_grad():
        for module in (ours, theirs):
            module.weight.copy_(weight)
            module.bias.copy_(bias)

def forward_backward(module, x):
    x = x.clone().requires_grad_()
    out = module(x)
    (out ** 3).sum().backward()
    return out, x.grad, module.weight.grad, module.bias.grad

@pytest.mark.parametrize("ours,theirs,shape", [
    (BatchNorm(6), nn.BatchNorm2d(6), (8, 6, 5, 5)),
    (BatchNorm(6, momentum=0.3, eps=1e-3), nn.BatchNorm2d(6, momentum=0.3, eps=1e-3), (8, 6, 5, 5)),
    (BatchNorm(4), nn.BatchNorm1d(4), (16, 4)),
    (BatchNorm(3), nn.BatchNorm3d(3), (4, 3, 2, 3, 3))])
def test_batchnorm_train_and_eval_equal_torch(ours, theirs, shape):
    same_affine(ours, theirs)
    torch.manual_seed(0)
    for _ in range(6):
        x = torch.randn(*shape) * 3 + 2
        for a, b in zip(forward_backward(ours, x), forward_backward(theirs, x)):
            test_near(a, b, atol=1e-4, rtol=1e-4)
        test_near(ours(x), theirs(x))
        test_near(ours.running_mean, theirs.running_mean)
        test_near(ours.running_var, theirs.running_var)
    ours.eval()
    theirs.eval()
    x = torch.randn(*shape) * 3 + 2
    test_near(ours(x), theirs(x))
    test_near(ours.running_mean, theirs.running_mean)  # evaluation leaves the statistics alone

def test_batchnorm_loads_torch_state():
    theirs = nn.BatchNorm2d(5)
    for _ in range(3): theirs(torch.randn(4, 5, 3, 3) * 2 + 1)
    ours = BatchNorm(5)
    ours.load_state_dict({k: v for k, v in theirs.state_dict().items() if k != "num_batches_tracked"})
    x = torch.randn(4, 5, 3, 3)
    test_near(ours.eval()(x), theirs.eval()(x))

@pytest.mark.parametrize("ours,theirs", [
    (LayerNorm((6, 5, 5)), nn.LayerNorm((6, 5, 5))), (LayerNorm(5), nn.LayerNorm(5)),
    (InstanceNorm(6), nn.InstanceNorm2d(6, affine=True)),
    (GroupNorm(3, 6), nn.GroupNorm(3, 6)), (GroupNorm(1, 6), nn.GroupNorm(1, 6)),
    (GroupNorm(6, 6), nn.GroupNorm(6, 6))])
def test_other_norms_equal_torch(ours, theirs):
    same_affine(ours, theirs)
    x = torch.randn(4, 6, 5, 5) * 2 + 3
    for a, b in zip(forward_backward(ours, x), forward_backward(theirs, x)):
        test_near(a, b, atol=1e-4, rtol=1e-4)
    ours.eval()
    theirs.eval()
    test_near(ours(x), theirs(x))

def test_normalize_matches_layer_norm_function():
    x = torch.randn(3, 4, 5)
    test_near(normalize(x, (1, 2)), F.layer_norm(x, (4, 5)))

def test_groupnorm_rejects_uneven_groups():
    with pytest.raises(AssertionError): GroupNorm(4, 6)

def test_batchnorm_of_two_one_pixel_images_is_plus_minus_one():
    "With two values per channel, training-mode BatchNorm can only output ±1 (less a hair for eps)."
    torch.manual_seed(0)
    out = BatchNorm(5)(torch.randn(2, 5, 1, 1) * 3 + 7)
    test_near(out.abs(), torch.ones(2, 5, 1, 1), atol=1e-3)
    test_near(out.sum(0), torch.zeros(5, 1, 1), atol=1e-5)

def test_running_batchnorm_single_batch_equals_batchnorm():
    x = torch.randn(16, 3, 5, 5) * 2 + 1
    test_near(RunningBatchNorm(3)(x), BatchNorm(3)(x), atol=1e-4)

def test_running_batchnorm_converges_to_data_stats():
    torch.manual_seed(0)
    rbn = RunningBatchNorm(2)
    for _ in range(300): rbn(torch.randn(2, 2, 4, 4) * 3 - 1)
    rbn.eval()
    out = rbn(torch.randn(512, 2, 4, 4) * 3 - 1)
    test_near(out.mean((0, 2, 3)), torch.zeros(2), atol=0.15)
    test_near(out.std((0, 2, 3)), torch.ones(2), atol=0.15)
    for buffer in rbn.buffers(): assert buffer.grad_fn is None  # stored statistics are detached

def train_at_batch_size_2(norm):
    "One epoch of a small CNN on 600 digits at batch size 2; valid accuracy (evaluation mode)."
    from exp.conv import get_cnn_model, init_cnn
    from exp.data import load_digits
    x_train, y_train, x_valid, y_valid = load_digits()
    torch.manual_seed(0)
    model = init_cnn(get_cnn_model(norm=norm))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    order = torch.randperm(600, generator=torch.Generator().manual_seed(0))
    for idx in order.split(2):
        F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad(): return (model(x_valid).argmax(1) == y_valid).float().mean().item()

def test_running_batchnorm_trains_at_batch_size_2_where_batchnorm_fails(one_thread):
    plain, running = train_at_batch_size_2(BatchNorm), train_at_batch_size_2(RunningBatchNorm)
    assert running > 0.7, running
    assert running > plain + 0.15, (plain, running)

def test_running_batchnorm_floors_the_variance_without_a_sync(monkeypatch):
    "The variance floor of 0.01 holds for the first 20 images, then goes; decided on the device."
    calls = []
    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        original = getattr(torch.Tensor, name)
        def counted(t, *a, _original=original, _name=name, **k):
            calls.append(_name)
            return _original(t, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    rbn = RunningBatchNorm(1, momentum=1.0)  # momentum 1: the running statistics are this batch's own
    x = torch.tensor([1.0, 1.02, 0.98, 1.0]).view(4, 1, 1, 1)  # variance 2e-4, far below the floor
    early = rbn(x)                                              # seen: 0 < 20, floored
    for _ in range(5): rbn(x)                                   # seen: 24
    late = rbn(x)
    monkeypatch.undo()
    assert calls == []
    centred = x - x.mean()
    test_near(early, centred / math.sqrt(0.01 + 1e-5), atol=1e-5)
    test_near(late, centred / (centred.pow(2).mean() + 1e-5).sqrt(), atol=1e-4)
