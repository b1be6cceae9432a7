"Our optimizers, step by step against torch.optim; state_dict round trips; parameter groups."
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from exp.optimizers import (
    LAMB,
    SGD,
    Adam,
    AdamW,
    AverageGrad,
    AverageSqrGrad,
    L2Regularization,
    Optimizer,
    StepCount,
    debiased,
    sgd_step,
    weight_decay_step,
)
from exp.testing import test_eq, test_near

@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    "Every test here trains tiny models (the fixture is in conftest.py)."


def small_cnn(dtype=torch.float32):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 8, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 2 * 2, 10))
    return model.to(dtype)

def batches(n, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(16, 64, generator=g).to(dtype), torch.randint(0, 10, (16,), generator=g))
            for _ in range(n)]

def train(model, opt, data):
    for xb, yb in data:
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
        opt.zero_grad()

def no_decay_groups(model):
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0., "lr": 3e-3}]

CASES = [
    (lambda ps: SGD(ps, lr=0.1), lambda ps: torch.optim.SGD(ps, lr=0.1)),
    (lambda ps: SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-2),
     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-2)),
    (lambda ps: AdamW(ps, lr=1e-2, weight_decay=0.1),
     lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1)),
    (lambda ps: AdamW(ps, lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.3),
     lambda ps: torch.optim.AdamW(ps, lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.3)),
    (lambda ps: Adam(ps, lr=1e-2, weight_decay=1e-2),
     lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-2)),
]

@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("make_ours,make_theirs", CASES)
def test_step_by_step_equals_torch(make_ours, make_theirs, grouped, dtype, tolerance):
    ours, theirs = small_cnn(dtype), small_cnn(dtype)
    params = no_decay_groups if grouped else (lambda m: m.parameters())
    opt_a, opt_b = make_ours(params(ours)), make_theirs(params(theirs))
    for xb, yb in batches(20, dtype=dtype):
        train(ours, opt_a, [(xb, yb)])
        train(theirs, opt_b, [(xb, yb)])
        for p, q in zip(ours.parameters(), theirs.parameters()):
            test_near(p, q, atol=tolerance, rtol=tolerance)
    start = small_cnn(dtype)
    assert any((p != q).any() for p, q in zip(ours.parameters(), start.parameters()))  # it did train

def test_state_names_match_torch():
    for make_ours, make_theirs in CASES[1:3]:
        ours, theirs = small_cnn(), small_cnn()
        opt_a, opt_b = make_ours(ours.parameters()), make_theirs(theirs.parameters())
        train(ours, opt_a, batches(2))
        train(theirs, opt_b, batches(2))
        sa, sb = opt_a.state_dict(), opt_b.state_dict()
        test_eq(sorted(sa["state"]), sorted(sb["state"]))
        test_eq(sorted(sa["state"][0]), sorted(sb["state"][0]))
        test_eq([g["params"] for g in sa["param_groups"]], [g["params"] for g in sb["param_groups"]])

@pytest.mark.parametrize("make_opt", [lambda ps: SGD(ps, lr=0.05, momentum=0.9),
                                      lambda ps: AdamW(ps, lr=1e-2),
                                      lambda ps: LAMB(ps, lr=1e-2, weight_decay=0.1)])
def test_state_dict_round_trip_resumes_exactly(make_opt, tmp_path):
    data = batches(12)
    model = small_cnn()
    opt = make_opt(model.parameters())
    train(model, opt, data[:6])
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "checkpoint.pt")
    train(model, opt, data[6:])
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    resumed = small_cnn()
    resumed.load_state_dict(saved["model"])
    resumed_opt = make_opt(resumed.parameters())
    resumed_opt.load_state_dict(saved["opt"])
    train(resumed, resumed_opt, data[6:])
    for p, q in zip(model.parameters(), resumed.parameters()): test_eq(p, q)
    fresh = small_cnn()
    fresh.load_state_dict(saved["model"])
    train(fresh, make_opt(fresh.parameters()), data[6:])
    assert any((p != q).any() for p, q in zip(model.parameters(), fresh.parameters()))  # the state mattered

def test_state_dict_is_a_copy_and_load_restores_hypers():
    model = small_cnn()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    train(model, opt, batches(2))
    saved = opt.state_dict()
    before = saved["state"][0]["momentum_buffer"].clone()
    train(model, opt, batches(2, seed=1))
    test_eq(saved["state"][0]["momentum_buffer"], before)
    opt.param_groups[0]["lr"] = 7.
    opt.load_state_dict(saved)
    test_eq(opt.param_groups[0]["lr"], 0.1)
    test_eq(opt.state[next(model.parameters())]["momentum_buffer"], before)
    with pytest.raises(ValueError, match=r"hold \[8\] parameters, this optimizer's \[2\].*same groups"):
        SGD(list(model.parameters())[:2]).load_state_dict(saved)

def test_param_groups_api():
    model = small_cnn()
    opt = AdamW(no_decay_groups(model), lr=1e-3, weight_decay=0.1)
    test_eq([g["weight_decay"] for g in opt.param_groups], [0.1, 0.])
    test_eq([g["lr"] for g in opt.param_groups], [1e-3, 3e-3])
    assert set(opt.param_groups[0]) >= {"params", "lr", "betas", "eps", "weight_decay"}
    with pytest.raises(ValueError, match=r"shape \(4, 1, 3, 3\) appears in more than one group"):
        opt.add_param_group({"params": [next(model.parameters())]})
    with pytest.raises(ValueError, match="empty parameter list: pass model.parameters()"): SGD([])
    extra = nn.Parameter(torch.ones(3))
    opt.add_param_group({"params": extra, "lr": 5.})
    test_eq(opt.param_groups[-1]["betas"], (0.9, 0.999))

def test_defaults_come_from_the_parts_and_hypers_override_them():
    p = nn.Parameter(torch.ones(2))
    test_eq(Optimizer([p], [sgd_step]).param_groups[0]["lr"], 0.1)  # sgd_step's default
    group = Optimizer([p], [weight_decay_step, sgd_step], lr=0.5).param_groups[0]
    test_eq((group["lr"], group["weight_decay"]), (0.5, 0.))

def test_zero_grad():
    p = nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    opt = SGD([p])
    opt.zero_grad(set_to_none=False)
    test_eq(p.grad, torch.zeros(2))
    opt.zero_grad()
    assert p.grad is None
    opt.step()  # no gradient: nothing happens
    test_eq(p.detach(), torch.ones(2))

def test_adam_stats_are_exponential_moving_averages():
    "With no steppers the optimizer only keeps statistics: they equal EWMAs written out by hand."
    torch.manual_seed(0)
    grads = torch.randn(30, 3, dtype=torch.float64)
    p = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = Optimizer([p], [], [AverageGrad(), AverageSqrGrad(), StepCount()], betas=(0.8, 0.95))
    avg, avg_sq = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for g in grads:
        p.grad = g.clone()
        opt.step()
        avg, avg_sq = 0.8 * avg + 0.2 * g, 0.95 * avg_sq + 0.05 * g ** 2
    state = opt.state[p]
    test_near(state["exp_avg"], avg, atol=1e-12)
    test_near(state["exp_avg_sq"], avg_sq, atol=1e-12)
    test_eq(state["step"], 30)
    test_near(torch.tensor(debiased(state, (0.8, 0.95))), torch.tensor([1 - 0.8 ** 30, 1 - 0.95 ** 30]))
    test_eq(p.detach(), torch.zeros(3, dtype=torch.float64))  # no stepper: the parameter did not move

def test_l2_equals_decoupled_decay_for_plain_sgd():
    a, b = nn.Parameter(torch.tensor([1., -2.])), nn.Parameter(torch.tensor([1., -2.]))
    opt_a = Optimizer([a], [sgd_step], [L2Regularization()], lr=0.1, weight_decay=0.5)
    opt_b = Optimizer([b], [weight_decay_step, sgd_step], lr=0.1, weight_decay=0.5)
    for _ in range(5):
        for p, opt in ((a, opt_a), (b, opt_b)):
            p.grad = torch.tensor([0.3, 0.1])
            opt.step()
    test_near(a, b, atol=1e-6)

def test_adam_l2_and_adamw_decay_differ_without_a_gradient():
    "Adam normalises L2's `wd·p` (every weight moves ~lr); AdamW shrinks each by the same fraction."
    start = torch.tensor([0.5, 5., 50.])
    def decay_only(make_opt):
        p = nn.Parameter(start.clone())
        opt = make_opt([p])
        for _ in range(100):
            p.grad = torch.zeros(3)
            opt.step()
        return p.detach()
    l2 = decay_only(lambda ps: Adam(ps, lr=0.01, weight_decay=0.1))
    decoupled = decay_only(lambda ps: AdamW(ps, lr=0.01, weight_decay=0.1))
    test_near(decoupled / start, torch.full((3,), 0.999 ** 100), atol=1e-5)
    assert ((start - l2) < 100 * 0.01 + 1e-6).all() and (start - l2)[2] > 0.99  # about lr per step, any size

def test_lamb_moves_each_tensor_by_lr_times_its_norm():
    torch.manual_seed(0)
    ws = [nn.Parameter(torch.randn(20, 10)), nn.Parameter(torch.randn(10) * 0.01)]
    before = [w.detach().clone() for w in ws]
    opt = LAMB(ws, lr=0.01, weight_decay=0.1)
    for w, scale in zip(ws, (1., 1000.)): w.grad = torch.randn(w.shape) * scale
    opt.step()
    for w, b in zip(ws, before): test_near((w.detach() - b).norm() / b.norm(), torch.tensor(0.01), atol=1e-6)

def test_lamb_first_step_formula():
    "One LAMB step written out by hand: after one step the bias-corrected averages are g and g²."
    p = nn.Parameter(torch.tensor([3., -4.]))
    g = torch.tensor([0.5, 2.])
    start = p.detach().clone()
    p.grad = g.clone()
    LAMB([p], lr=0.1, eps=1e-6, weight_decay=0.2).step()
    r = g / (g.abs() + 1e-6) + 0.2 * start
    test_near(p, start - 0.1 * start.norm() / r.norm() * r, atol=1e-6)

def test_adam_bias_correction_first_step_is_lr_sign():
    p = nn.Parameter(torch.tensor([1., 1., 1.]))
    p.grad = torch.tensor([1e-3, -5., 100.])
    Adam([p], lr=0.1, eps=0.).step()
    test_near(p, torch.tensor([0.9, 1.1, 0.9]), atol=1e-6)

def test_param_groups_split_norm_and_bias():
    from exp.norm import BatchNorm, RunningBatchNorm
    from exp.param_groups import no_decay_parameters, param_groups, with_param_groups
    model = nn.Sequential(nn.Conv2d(1, 4, 3), BatchNorm(4), nn.Conv2d(4, 4, 3, bias=False), nn.BatchNorm2d(4),
                          RunningBatchNorm(4), nn.LayerNorm(4), nn.Linear(4, 2))
    decay, no_decay = param_groups(model)
    test_eq(no_decay["weight_decay"], 0.)
    assert "weight_decay" not in decay
    test_eq({id(p) for p in decay["params"]}, {id(model[0].weight), id(model[2].weight), id(model[6].weight)})
    test_eq(len(no_decay["params"]), 1 + 2 * 4 + 1)  # conv bias, 4 norms × (weight, bias), linear bias
    test_eq(len(no_decay_parameters(model)), len(no_decay["params"]))
    opt = with_param_groups(partial_adamw, model)(model.parameters(), lr=0.5)
    test_eq([g["weight_decay"] for g in opt.param_groups], [0.1, 0.])
    test_eq([g["lr"] for g in opt.param_groups], [0.5, 0.5])
    torch_opt = with_param_groups(torch.optim.AdamW, model)(model.parameters(), lr=0.5)
    test_eq([g["weight_decay"] for g in torch_opt.param_groups], [0.01, 0.])
    test_eq(len(param_groups(nn.Linear(3, 2, bias=False))), 1)  # no empty group

def partial_adamw(params, **hypers): return AdamW(params, weight_decay=0.1, **hypers)

def test_learner_with_our_optimizer_equals_torch():
    from exp.learner import Learner
    from exp.param_groups import with_param_groups
    from exp.schedule import ParamScheduler, one_cycle
    from exp.training import DataLoaders
    x, y = torch.rand(96, 64), torch.randint(0, 10, (96,))
    def run(opt_func):
        model = small_cnn()
        dls = DataLoaders.from_tensors(x, y, x[:32], y[:32], batch_size=16, seed=0)
        learn = Learner(model, dls, F.cross_entropy, lr=1e-2, opt_func=with_param_groups(opt_func, model),
                        cbs=[ParamScheduler(one_cycle(1e-2))], logger=None)
        return learn.fit(2)
    ours, theirs = run(partial_adamw), run(lambda ps, **h: torch.optim.AdamW(ps, weight_decay=0.1, **h))
    for p, q in zip(ours.model.parameters(), theirs.model.parameters()): test_near(p, q, atol=1e-6, rtol=1e-6)
    betas = [torch.tensor(learn.opt.param_groups[0]["betas"]) for learn in (ours, theirs)]
    test_near(*betas)
    assert ours.opt.param_groups[0]["betas"][0] != 0.9  # the schedule did move beta1 in our groups
