"""The from-scratch initialisers of `02a_initializing` / `02b_why_sqrt5` against `torch.nn.init`."""
import math

import pytest
import torch
from torch import nn

from exp.init import (
    fans,
    kaiming_normal_,
    kaiming_std,
    kaiming_uniform_,
    layer_stats,
    leaky_relu_gain,
    make_weights,
    xavier_normal_,
    xavier_std,
    xavier_uniform_,
)
from exp.testing import test_near

SHAPES = [(10, 784), (256, 256), (32, 16, 3, 3), (5, 1, 7), (1, 1)]


@pytest.mark.parametrize("shape", SHAPES)
def test_fans_equal_torch(shape):
    assert fans(shape) == nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))


def test_fans_need_two_dimensions():
    with pytest.raises(ValueError, match=r"\(7,\)"):
        fans((7,))


@pytest.mark.parametrize("a", [0., 0.01, 0.2, math.sqrt(5)])
def test_gain_equals_torch(a):
    assert leaky_relu_gain(a) == pytest.approx(nn.init.calculate_gain("leaky_relu", a))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("a,mode", [(0., "fan_in"), (math.sqrt(5), "fan_in"), (0.1, "fan_out")])
@pytest.mark.parametrize("ours,theirs", [(kaiming_normal_, nn.init.kaiming_normal_),
                                         (kaiming_uniform_, nn.init.kaiming_uniform_)])
def test_kaiming_draws_what_torch_draws(shape, a, mode, ours, theirs):
    w_ours, w_theirs = torch.empty(shape), torch.empty(shape)
    assert ours(w_ours, a=a, mode=mode, generator=torch.Generator().manual_seed(3)) is w_ours
    theirs(w_theirs, a=a, mode=mode, generator=torch.Generator().manual_seed(3))
    test_near(w_ours, w_theirs, atol=0, rtol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gain", [1., 5 / 3])
@pytest.mark.parametrize("ours,theirs", [(xavier_normal_, nn.init.xavier_normal_),
                                         (xavier_uniform_, nn.init.xavier_uniform_)])
def test_xavier_draws_what_torch_draws(shape, gain, ours, theirs):
    w_ours, w_theirs = torch.empty(shape), torch.empty(shape)
    ours(w_ours, gain=gain, generator=torch.Generator().manual_seed(4))
    theirs(w_theirs, gain=gain, generator=torch.Generator().manual_seed(4))
    test_near(w_ours, w_theirs, atol=0, rtol=1e-6)


@pytest.mark.parametrize("init_,std", [
    (lambda w: kaiming_normal_(w), math.sqrt(2 / 500)),
    (lambda w: kaiming_uniform_(w), math.sqrt(2 / 500)),
    (lambda w: kaiming_normal_(w, mode="fan_out"), math.sqrt(2 / 800)),
    (lambda w: kaiming_uniform_(w, a=math.sqrt(5)), 1 / math.sqrt(3 * 500)),
    (lambda w: xavier_normal_(w), math.sqrt(2 / 1300)),
    (lambda w: xavier_uniform_(w), math.sqrt(2 / 1300)),
])
def test_statistics_of_a_large_draw(init_, std):
    w = init_(torch.empty(800, 500))
    assert abs(w.mean().item()) < 0.01 * std * 10
    test_near(w.std(), std, atol=0, rtol=0.01)
    reference = torch.empty(800, 500)
    nn.init.normal_(reference, 0, std)
    test_near(w.std(), reference.std(), atol=0, rtol=0.02)


def test_uniform_bounds():
    w = kaiming_uniform_(torch.empty(400, 300))
    bound = math.sqrt(3) * kaiming_std((400, 300))
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
    assert kaiming_uniform_(torch.empty(50, 784), a=math.sqrt(5)).abs().max() <= 1 / math.sqrt(784)
    assert xavier_uniform_(torch.empty(30, 20)).abs().max() <= math.sqrt(6 / 50)
    assert xavier_std((30, 20)) == pytest.approx(math.sqrt(2 / 50))


def test_layer_stats_follows_the_stack_by_hand():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g)
    weights = make_weights([8, 6, 5, 4], kaiming_normal_, g)
    assert [tuple(w.shape) for w in weights] == [(6, 8), (5, 6), (4, 5)]
    means, stds = layer_stats(x, weights)
    h1 = x @ weights[0].t()
    h2 = torch.relu(h1) @ weights[1].t()
    h3 = torch.relu(h2) @ weights[2].t()
    for i, h in enumerate((h1, h2, h3)):
        assert means[i] == pytest.approx(h.mean().item(), abs=1e-6)
        assert stds[i] == pytest.approx(h.std().item(), rel=1e-5)
    _, linear_stds = layer_stats(x, weights, activation=None)
    third = x @ weights[0].t() @ weights[1].t() @ weights[2].t()
    assert linear_stds[2] == pytest.approx(third.std().item(), rel=1e-5)


def normal_(std):
    def init_(w, generator=None): return w.normal_(0, std, generator=generator)
    return init_


def per_layer_factor(stds):
    "Geometric mean of the ratio of successive layers' stds."
    return (stds[-1] / stds[0]) ** (1 / (len(stds) - 1))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_kaiming_keeps_std_through_50_relu_layers_where_others_do_not(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 64, generator=g)
    sizes = [64] + [256] * 50
    def stds(init_): return layer_stats(x, make_weights(sizes, init_, g))[1]
    kaiming = stds(kaiming_normal_)
    # One finite-width draw drifts (a random walk over layers), but its per-layer factor is 1.
    assert 0.95 < per_layer_factor(kaiming) < 1.05
    assert all(0.25 <= s <= 4 for s in kaiming), kaiming
    exploding = stds(normal_(1.0))
    assert not all(math.isfinite(s) and s < 1e30 for s in exploding)
    assert stds(normal_(0.01))[-1] < 1e-30
    assert per_layer_factor(stds(xavier_normal_)) == pytest.approx(0.5 ** 0.5, abs=0.05)
    default = stds(lambda w, generator: kaiming_uniform_(w, a=math.sqrt(5), generator=generator))
    assert per_layer_factor(default) == pytest.approx(6 ** -0.5, abs=0.05) and default[-1] < 1e-15


def test_kaiming_stays_within_half_and_double_on_a_wide_stack():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=g)
    weights = make_weights([64] + [512] * 50, kaiming_normal_, g)
    with torch.no_grad(): weights[0] /= math.sqrt(2)   # He et al.: no ReLU before the first layer
    _, stds = layer_stats(x, weights)
    assert all(0.5 <= s <= 2 for s in stds), stds
