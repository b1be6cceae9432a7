"""XResNet: output shapes for 1- and 3-channel inputs, zero-γ blocks start as identity, model_summary adds up,
it learns."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from exp.resnet import ResBlock, model_summary, xresnet18, xresnet_small

@pytest.mark.parametrize("c_in,size", [(1, 8), (3, 8), (1, 28), (3, 28)])
def test_output_shapes(c_in, size):
    model = xresnet_small(c_in, 10, image_size=size)
    assert model(torch.randn(2, c_in, size, size)).shape == (2, 10)


def test_xresnet18_shapes():
    for c_in in (1, 3):
        assert xresnet18(c_in, 7)(torch.randn(1, c_in, 64, 64)).shape == (1, 7)
    n = sum(p.numel() for p in xresnet18(3, 1000).parameters())
    assert 11_000_000 < n < 12_500_000  # ResNet-18 scale (torchvision's has 11.7M)


def test_zero_gamma_block_is_identity_at_init():
    block = ResBlock(8, 16, stride=2).eval()
    assert torch.equal(block.convs[1][1].weight, torch.zeros(16))
    x = torch.randn(3, 8, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(block.project(block.pool(x))))
    same = ResBlock(8, 8).eval()
    x = torch.randn(3, 8, 5, 5)
    torch.testing.assert_close(same(x), torch.relu(x))


def test_resnet_d_shortcut_pools_then_projects():
    block = ResBlock(4, 8, stride=2)
    assert isinstance(block.pool, nn.AvgPool2d) and block.project[0].kernel_size == (1, 1)
    assert block.project[0].stride == (1, 1) and block.convs[0][0].stride == (2, 2)
    assert block(torch.randn(1, 4, 7, 7)).shape == (1, 8, 4, 4)  # ceil_mode keeps odd sizes aligned


def test_model_summary_counts_and_shapes(capsys):
    model = xresnet_small()
    rows = model_summary(model, torch.randn(5, 1, 8, 8))
    assert sum(r[3] for r in rows) == sum(p.numel() for p in model.parameters())
    assert rows[-1][2] == (5, 10) and rows[0][2] == (5, 8, 8, 8)
    assert "total parameters" in capsys.readouterr().out
    assert model.training  # mode restored


def test_learns_a_small_problem(one_thread):
    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8)
    y = (x.mean((1, 2, 3)) > 0).long()
    model = xresnet_small(1, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert (model(x).argmax(1) == y).float().mean() > 0.9
