"""Inverted dropout: F.dropout's output given its mask, its statistics, identity in eval, mask as gradient."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from exp.dropout import Dropout, dropout, dropout_mask

@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_equals_f_dropout_given_its_mask(p):
    x = torch.randn(128, 32) + 10                      # no zeros: a zero in the output means dropped
    theirs = F.dropout(x, p)
    mask = (theirs != 0).float().div_(1 - p)
    assert torch.equal(x * mask, theirs)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_statistics_match_f_dropout(p):
    ones = torch.ones(1000, 1000)
    ours, theirs = dropout(ones, p), F.dropout(ones, p)
    for out in (ours, theirs):
        assert abs((out == 0).float().mean().item() - p) < 0.003    # ~6 standard deviations
        assert abs(out.mean().item() - 1.0) < 0.006
    assert torch.equal(ours[ours != 0].unique(), theirs[theirs != 0].unique())   # kept values: 1/(1-p)


def test_mask_values_and_generator():
    x = torch.zeros(50, 50)
    a = dropout_mask(x, 0.25, torch.Generator().manual_seed(3))
    b = dropout_mask(x, 0.25, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, dropout_mask(x, 0.25, torch.Generator().manual_seed(4)))
    assert set(a.unique().tolist()) == {0.0, torch.tensor(1 / 0.75).item()}   # 1/(1-p) in float32
    assert a.dtype == x.dtype and a.shape == x.shape


def test_eval_is_identity_and_edge_probabilities():
    x = torch.randn(10, 10)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f"p={bad}"): dropout(x, bad)
        with pytest.raises(ValueError, match=f"p={bad}"): Dropout(bad)


def test_module_switches_with_train_and_eval():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 200), Dropout(0.5))
    x = torch.randn(8, 20)
    out = net(x)
    zeroed = (out == 0).float().mean().item()
    assert 0.35 < zeroed < 0.65
    net.eval()
    assert not net[1].training
    assert torch.equal(net(x), net[0](x))
    assert repr(net[1]) == "Dropout(p=0.5)"


def test_gradient_is_the_mask():
    x = torch.randn(64, 100, requires_grad=True)
    out = Dropout(0.2)(x)
    out.sum().backward()
    kept = out != 0
    torch.testing.assert_close(x.grad, kept.float() / 0.8)
    torch.testing.assert_close(out[kept], x.detach()[kept] / 0.8)


def test_same_device_and_dtype():
    x = torch.randn(4, 4, dtype=torch.float64)
    assert dropout(x, 0.5).dtype == torch.float64
    if torch.cuda.is_available():
        assert dropout(x.cuda(), 0.5).device.type == "cuda"
