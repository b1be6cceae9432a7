"Forward hooks: recording, removal (context managers and the Learner callback)."
import pytest
import torch
from torch import nn
from exp.hooks import Hook, Hooks, append_stats, histogram_image, near_zero_fraction, ActivationStats, blocks_with_parameters
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
        for x in xs: m(x)
        m.eval(); m(torch.randn(16, 4))  # evaluation batches are not recorded
    assert no_hooks_left(m)
    means, stds, hists = hooks[0].stats
    test_eq(len(means), 3)
    out = m[0](xs[1]).detach()
    test_near(means[1], out.mean()); test_near(stds[1], out.std())
    test_eq(hists[1].sum().item(), out.numel())
    test_eq(histogram_image(hooks[0]).shape, (40, 3))
    frac = near_zero_fraction(hooks[0])
    test_near(frac[1], (out.abs() < 0.25).float().mean(), atol=1e-6)

def test_activation_stats_callback_with_learner():
    from exp.learner import Learner
    from exp.training import DataLoaders
    import torch.nn.functional as F
    m = model()
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    stats = ActivationStats()
    Learner(m, DataLoaders.from_tensors(x, y, x, y, batch_size=16), F.cross_entropy, cbs=[stats], logger=None).fit(2)
    assert no_hooks_left(m)
    test_eq([h.module for h in stats.hooks], blocks_with_parameters(m))
    test_eq(len(stats.hooks[0].stats[0]), 8)  # 2 epochs × 4 training batches
