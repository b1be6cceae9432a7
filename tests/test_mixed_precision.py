"""Mixed precision: our loss scaler agrees with GradScaler; autocast + GradScaler in a callback; bf16."""
import torch
import torch.nn.functional as F
from torch import nn

from exp.learner import Callback, Learner
from exp.mixed_precision import (
    DynamicLossScaler,
    MixedPrecision,
    ScaledOptimizer,
    all_finite,
    autocast_dtype,
    next_scale,
)
from exp.optimizers import SGD
from exp.training import DataLoaders

def tiny_cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))


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
    mp, watch = MixedPrecision(), Watch()
    learn = Learner(model, data(), loss_func=F.cross_entropy, lr=0.1, opt_func=SGD, cbs=[mp, watch],
                    logger=None)
    learn.fit(1)
    assert set(seen) == {torch.bfloat16}                      # the convolution ran in bfloat16
    assert watch.pred_dtypes == {torch.float32} and watch.loss_dtypes == {torch.float32}
    assert not mp.scaler.is_enabled()                          # no loss scaling needed for bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert not isinstance(learn.opt, ScaledOptimizer)
    assert not torch.is_autocast_enabled("cpu")               # autocast left after the fit


def test_fp16_scaled_step_equals_fp32_step_direction():
    # float16 autocast and a scaler: the unscaled update is the plain gradient step (up to fp16 rounding).
    torch.manual_seed(0)
    model = tiny_cnn()
    ref = tiny_cnn()
    ref.load_state_dict(model.state_dict())
    dls = data(32)
    mp = MixedPrecision(dtype=torch.float16, init_scale=2.0**10)
    Learner(model, (dls.train, None), loss_func=F.cross_entropy, lr=0.1, opt_func=SGD, cbs=[mp],
            logger=None).fit(1)
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


def test_all_finite():
    assert all_finite([torch.ones(3), torch.zeros(2, 2)])
    assert not all_finite([torch.ones(3), torch.tensor([1.0, float("inf")])])
    assert not all_finite([torch.tensor([float("-inf")])]) and not all_finite([torch.tensor([float("nan")])])


def test_next_scale_backs_off_and_grows():
    assert next_scale(8.0, 5, False, growth_interval=3) == (4.0, 0)      # inf/NaN: halve, count from zero
    assert next_scale(8.0, 0, True, growth_interval=3) == (8.0, 1)
    assert next_scale(8.0, 2, True, growth_interval=3) == (16.0, 0)      # the third clean step doubles
    assert next_scale(8.0, 0, True, growth_factor=4.0, growth_interval=1) == (32.0, 0)
    assert next_scale(8.0, 0, False, backoff_factor=0.25) == (2.0, 0)


def test_our_scaler_skips_on_inf_and_unscales():
    linear = nn.Linear(4, 1)
    opt = torch.optim.SGD(linear.parameters(), lr=0.1)
    scaler = DynamicLossScaler(init_scale=2.0**8, growth_interval=1000)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    scaler.scale_loss(F.mse_loss(linear(x), y)).backward()
    linear.weight.grad[0, 0] = float("nan")
    before = [p.detach().clone() for p in linear.parameters()]
    assert scaler.step(opt) is False
    assert all(torch.equal(b, p) for b, p in zip(before, linear.parameters())) and scaler.scale == 2.0**7
    opt.zero_grad()
    F.mse_loss(linear(x), y).backward()
    plain = [p.grad.clone() for p in linear.parameters()]
    opt.zero_grad()
    scaler.scale_loss(F.mse_loss(linear(x), y)).backward()
    assert scaler.step(opt) is True
    expected = [b - 0.1 * g for b, g in zip(before, plain)]
    torch.testing.assert_close(expected, [p.detach() for p in linear.parameters()])


def _autocast_run(scaler, steps=30):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    scales = []
    for step in range(steps):
        x, y = torch.randn(32, 16, generator=g), torch.randint(0, 10, (32,), generator=g)
        with torch.autocast("cpu", dtype=torch.float16): preds = model(x)
        loss = F.cross_entropy(preds.float(), y)
        opt.zero_grad()
        if isinstance(scaler, DynamicLossScaler):
            scaler.scale_loss(loss).backward()
            if step == 20: model[0].weight.grad[0, 0] = float("inf")
            scaler.step(opt)
            scales.append(scaler.scale)
        else:
            scaler.scale(loss).backward()
            if step == 20: model[0].weight.grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
            scales.append(scaler.get_scale())
    return scales, [p.detach() for p in model.parameters()]


def test_our_scaler_agrees_with_gradscaler():
    settings = dict(growth_factor=2.0, backoff_factor=0.5, growth_interval=4)
    ours = _autocast_run(DynamicLossScaler(2.0**24, **settings))
    theirs = _autocast_run(torch.amp.GradScaler("cpu", init_scale=2.0**24, **settings))
    assert ours[0] == theirs[0]
    assert ours[0][0] < 2.0**24 and max(ours[0][1:]) > min(ours[0])   # it backed off and grew again
    assert all(torch.equal(a, b) for a, b in zip(ours[1], theirs[1]))
