"Schedules, ParamScheduler, Recorder, LR finder, early stopping and save-best, against torch's schedulers."
import math
from functools import partial

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from exp.schedule import sched_lin, sched_cos, sched_exp, sched_no, combine_scheds, one_cycle
from exp.testing import test_near


def torch_lrs(make_scheduler, n_steps, lr=0.5):
    "The lr a torch scheduler sets at each of `n_steps` steps."
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler, lrs = make_scheduler(opt), []
    for _ in range(n_steps):
        lrs.append(opt.param_groups[0]["lr"]); opt.step(); scheduler.step()
    return lrs


# --- schedule functions ---------------------------------------------------------------------------

@pytest.mark.parametrize("maker", [sched_lin, sched_cos, sched_exp])
def test_schedules_start_and_end(maker):
    f = maker(0.5, 0.002)
    assert f(0) == pytest.approx(0.5) and f(1) == pytest.approx(0.002)

def test_schedule_middles():
    assert sched_lin(1, 3)(0.5) == pytest.approx(2)
    assert sched_cos(1, 3)(0.5) == pytest.approx(2)      # the cosine's midpoint is the mean
    assert sched_cos(1, 3)(0.25) == pytest.approx(1 + (1 - math.cos(math.pi / 4)))  # slow start
    assert sched_exp(1, 100)(0.5) == pytest.approx(10)   # geometric mean
    assert sched_no(7, 1)(0.3) == 7

def test_cosine_equals_torch():
    T = 16
    ours = [sched_cos(0.5, 0.01)(t / T) for t in range(T + 1)]
    test_near(ours, torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=T, eta_min=0.01), T + 1))

def test_linear_and_exponential_equal_torch():
    T = 10
    test_near([sched_lin(0.05, 0.5)(t / T) for t in range(T + 1)],
              torch_lrs(lambda o: torch.optim.lr_scheduler.LinearLR(o, 0.1, 1.0, total_iters=T), T + 1))
    test_near([sched_exp(0.5, 0.5 * 0.8 ** T)(t / T) for t in range(T + 1)],
              torch_lrs(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.8), T + 1))

def test_combine_scheds_boundaries():
    f = combine_scheds([0.25, 0.5, 0.25], [sched_lin(0, 1), sched_no(5), sched_lin(1, 0)])
    assert f(0) == 0 and f(0.125) == pytest.approx(0.5)
    assert f(0.25) == 5 and f(0.5) == 5          # at a boundary the later phase starts
    assert f(0.75) == pytest.approx(1) and f(0.875) == pytest.approx(0.5) and f(1) == pytest.approx(0)
    assert f(0.2499999) == pytest.approx(1, abs=1e-5)

def test_combine_scheds_rejects_bad_fractions():
    with pytest.raises(ValueError, match="add up to 1"): combine_scheds([0.5, 0.6], [sched_no(1), sched_no(2)])
    with pytest.raises(ValueError, match="fractions for"): combine_scheds([1.0], [sched_no(1), sched_no(2)])

def test_one_cycle_shape():
    s = one_cycle(1.0, pct_start=0.3, div=10, div_final=1000)
    assert s["lr"](0) == pytest.approx(0.1) and s["lr"](0.3) == pytest.approx(1) and s["lr"](1) == pytest.approx(1e-3)
    assert s["mom"](0) == pytest.approx(0.95) and s["mom"](0.3) == pytest.approx(0.85) and s["mom"](1) == pytest.approx(0.95)
    lrs = [s["lr"](p / 100) for p in range(101)]
    peak = max(range(101), key=lambda i: lrs[i])
    assert peak == 30
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))   # rises, then falls
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))

def test_one_cycle_equals_torch_one_cycle_lr():
    T, pct = 40, 0.3
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2.0, total_steps=T, pct_start=pct)
    expected = []
    for _ in range(T):
        expected.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"])); opt.step(); sched.step()
    # torch counts steps 0..T-1 and ends its warm-up at step pct*T - 1
    ours = one_cycle(2.0, pct_start=(pct * T - 1) / (T - 1), div=25, div_final=25e4)
    test_near([(ours["lr"](s / (T - 1)), ours["mom"](s / (T - 1))) for s in range(T)], expected)
