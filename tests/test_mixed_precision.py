"""Mixed precision: autocast + GradScaler in a callback; a bf16 step on the CPU changes parameters; scaling skips inf steps."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from exp.learner import Callback, Learner
from exp.training import DataLoaders
from exp.optimizers import SGD, AdamW
from exp.mixed_precision import MixedPrecision, ScaledOptimizer, autocast_dtype


def tiny_cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    return DataLoaders.from_tensors(x, y, x[:32], y[:32], batch_size=32, seed=0)


class Watch(Callback):
    order = 50
    def before_fit(self): self.pred_dtypes, self.loss_dtypes = set(), set()
    def after_pred(self): self.pred_dtypes.add(self.learn.preds.dtype)
    def after_loss(self): self.loss_dtypes.add(self.learn.loss.dtype)


def test_autocast_dtype():
    assert autocast_dtype("cuda") == torch.float16 and autocast_dtype("cpu") == torch.bfloat16


def test_bf16_step_on_cpu_changes_parameters():
    torch.manual_seed(0)
    model = tiny_cnn()
    seen = []
    model[0].register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    before = [p.detach().clone() for p in model.parameters()]
    opt = None
    mp, watch = MixedPrecision(), Watch()
    learn = Learner(model, data(), loss_func=F.cross_entropy, lr=0.1, opt_func=SGD, cbs=[mp, watch], logger=None)
    learn.fit(1)
    assert set(seen) == {torch.bfloat16}                      # the convolution ran in bfloat16
    assert watch.pred_dtypes == {torch.float32} and watch.loss_dtypes == {torch.float32}
    assert not mp.scaler.is_enabled()                          # no loss scaling needed for bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert not isinstance(learn.opt, ScaledOptimizer)
    assert not torch.is_autocast_enabled("cpu")               # autocast left after the fit


def test_fp16_scaled_step_equals_fp32_step_direction():
    # With float16 autocast and a scaler, the unscaled update equals the plain gradient step (up to fp16 rounding).
    torch.manual_seed(0)
    model = tiny_cnn()
    ref = tiny_cnn(); ref.load_state_dict(model.state_dict())
    dls = data(32)
    mp = MixedPrecision(dtype=torch.float16, init_scale=2.0**10)
    Learner(model, (dls.train, None), loss_func=F.cross_entropy, lr=0.1, opt_func=SGD, cbs=[mp], logger=None).fit(1)
    Learner(ref, (dls.train, None), loss_func=F.cross_entropy, lr=0.1, opt_func=SGD, logger=None).fit(1)
    assert mp.skipped == 0
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=2e-3, rtol=2e-2)


def test_overflow_skips_the_step_and_halves_the_scale():
    torch.manual_seed(0)
    linear = nn.Linear(4, 1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1000)
    opt = ScaledOptimizer(torch.optim.SGD(linear.parameters(), lr=0.1), scaler)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    scaler.scale(F.mse_loss(linear(x), y)).backward()
    linear.weight.grad[0, 0] = float("inf")
    before = linear.weight.detach().clone()
    opt.step()
    assert torch.equal(before, linear.weight) and scaler.get_scale() == 2.0**7
    opt.zero_grad()
    loss = F.mse_loss(linear(x), y)
    scaler.scale(loss).backward()
    expected = [g.detach() / 2.0**7 for g in (linear.weight.grad, linear.bias.grad)]
    ref = [p.detach() - 0.1 * g for p, g in zip((linear.weight, linear.bias), expected)]
    opt.step()
    torch.testing.assert_close(linear.weight.detach(), ref[0])
    torch.testing.assert_close(linear.bias.detach(), ref[1])
    assert opt.param_groups is opt.opt.param_groups
