"Forward hooks: recording, removal (context managers and the Learner callback)."
import pytest
import torch
from torch import nn

from exp.hooks import (
    ActivationStats,
    Hook,
    Hooks,
    LayerStats,
    append_stats,
    blocks_with_parameters,
    histogram_image,
    near_zero_fraction,
)
from exp.testing import test_eq, test_near

def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

def no_hooks_left(m): return all(len(module._forward_hooks) == 0 for module in m.modules())

def test_hook_sees_outputs_and_removes_itself():
    m = model()
    def keep(hook, module, inputs, output): hook.output = output
    with Hook(m[0], keep) as hook:
        x = torch.randn(2, 4)
        m(x)
        test_eq(hook.output, m[0](x))
        assert len(m[0]._forward_hooks) == 1
    assert no_hooks_left(m)

def test_hooks_removed_even_after_an_error():
    m = model()
    with pytest.raises(RuntimeError):
        with Hooks([m[0], m[2]], append_stats):
            m(torch.randn(2, 5))  # wrong width
    assert no_hooks_left(m)

def test_append_stats_records_means_stds_histograms():
    m = model()
    with Hooks([m[0], m[2]], append_stats) as hooks:
        xs = [torch.randn(16, 4) for _ in range(3)]
        for x in xs:
            m(x)
        m.eval()
        m(torch.randn(16, 4))  # evaluation batches are not recorded
    assert no_hooks_left(m)
    stats = hooks[0].stats
    assert isinstance(stats, LayerStats)
    test_eq([len(stats.means), len(stats.stds), len(stats.hists)], [3, 3, 3])
    out = m[0](xs[1]).detach()
    test_near(stats.means[1], out.mean())
    test_near(stats.stds[1], out.std())
    test_eq(stats.hists[1].sum().item(), out.numel())
    test_eq(stats.hists[1], out.abs().clamp_max(10.).histc(40, 0, 10.))
    test_eq(histogram_image(hooks[0]).shape, (40, 3))
    frac = near_zero_fraction(hooks[0])
    test_near(frac[1], (out.abs() < 0.25).float().mean(), atol=1e-6)

def test_activation_stats_callback_with_learner():
    import torch.nn.functional as F

    from exp.learner import Learner
    from exp.training import DataLoaders
    m = model()
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    stats = ActivationStats()
    dls = DataLoaders.from_tensors(x, y, x, y, batch_size=16)
    Learner(m, dls, F.cross_entropy, cbs=[stats], logger=None).fit(2)
    assert no_hooks_left(m)
    test_eq([h.module for h in stats.hooks], blocks_with_parameters(m))
    test_eq(len(stats.hooks[0].stats.means), 8)  # 2 epochs × 4 training batches
