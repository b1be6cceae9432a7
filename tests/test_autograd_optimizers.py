"""Tests for exp.autograd_optimizers: each optimizer step for step against torch.optim, the weight decay and
gradient clipping hooks against torch's, and a small CNN on our engine learning the digits."""
from pathlib import Path

import pytest
import torch

from exp.autograd import Linear, Variable, eval_mode, relu, softmax_cross_entropy
from exp.autograd_functions import accuracy, flatten, max_pool2d
from exp.autograd_layers import BatchNorm2d, Conv2d, Sequential
from exp.autograd_optimizers import AdaGrad, Adam, ClipGradNorm, MomentumSGD, Optimizer, WeightDecay
from exp.testing import test_near

@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    "Tiny ops: one thread for these tests only (the fixture is in conftest.py)."


def rosenbrock(p): return ((1 - p[:-1]) ** 2 + 10 * (p[1:] - p[:-1] ** 2) ** 2).sum()


START = torch.tensor([-1.5, 2.0, 0.5, -0.5], dtype=torch.float64)
CASES = {
    "momentum": (lambda ps, hooks: MomentumSGD(ps, lr=2e-3, momentum=0.8, hooks=hooks),
                 lambda ps, wd: torch.optim.SGD(ps, lr=2e-3, momentum=0.8, weight_decay=wd)),
    "adagrad": (lambda ps, hooks: AdaGrad(ps, lr=0.1, hooks=hooks),
                lambda ps, wd: torch.optim.Adagrad(ps, lr=0.1, weight_decay=wd)),
    "adam": (lambda ps, hooks: Adam(ps, lr=0.05, betas=(0.8, 0.99), hooks=hooks),
             lambda ps, wd: torch.optim.Adam(ps, lr=0.05, betas=(0.8, 0.99), weight_decay=wd)),
}


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("name", CASES)
def test_optimizer_matches_torch_optim_step_for_step(name, weight_decay):
    ours_opt, torch_opt = CASES[name]
    p, q = Variable(START.clone()), START.clone().requires_grad_()
    ours = ours_opt([p], [WeightDecay(weight_decay)] if weight_decay else [])
    theirs = torch_opt([q], weight_decay)
    for _ in range(50):
        ours.zero_grad()
        rosenbrock(p).backward()
        ours.step()
        theirs.zero_grad()
        rosenbrock(q).backward()
        theirs.step()
        test_near(p.data, q.detach(), atol=1e-10, rtol=1e-10)
    assert rosenbrock(p).data < rosenbrock(Variable(START)).data


def test_clip_grad_norm_matches_torch_and_leaves_small_gradients_alone():
    a, b = Variable(START.clone()), Variable(START[:2].clone() * 3)
    at, bt = START.clone().requires_grad_(), (START[:2].clone() * 3).requires_grad_()
    (rosenbrock(a) + (b * b).sum()).backward()
    (rosenbrock(at) + (bt * bt).sum()).backward()
    ClipGradNorm(2.0)([a, b])
    torch.nn.utils.clip_grad_norm_([at, bt], 2.0)
    test_near(a.grad.data, at.grad, atol=1e-12, rtol=1e-12)
    test_near(b.grad.data, bt.grad, atol=1e-12, rtol=1e-12)
    before = a.grad.data.clone()
    ClipGradNorm(1e9)([a])
    test_near(a.grad.data, before, atol=0, rtol=1e-12)


def test_hooks_replace_shared_gradients_without_touching_the_other_parameter():
    "x + y gives both leaves the same gradient tensor: a hook on one must not change the other's."
    x, y = Variable(torch.ones(3)), Variable(torch.full((3,), 2.0))
    (x + y).sum().backward()
    opt = MomentumSGD([x], lr=0.1, momentum=0.0).add_hook(WeightDecay(1.0))
    opt.step()
    test_near(y.grad.data, torch.ones(3))
    test_near(x.data, torch.full((3,), 0.8))


def test_parameters_without_gradients_are_skipped_and_empty_lists_refused():
    p, q = Variable(torch.ones(2)), Variable(torch.ones(2))
    (p * 2).sum().backward()
    Adam([p, q], lr=0.1).step()
    test_near(q.data, torch.ones(2))
    assert (p.data < 1).all()
    with pytest.raises(ValueError, match="no parameters"): Adam([], lr=0.1)
    with pytest.raises(NotImplementedError): Optimizer([p], lr=0.1).step()


SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def train_small_cnn(x_train, y_train, x_valid, y_valid, side, epochs):
    "A one-block CNN trained on our engine alone; its validation accuracy."
    torch.manual_seed(0)
    model = Sequential(Conv2d(1, 8, 3, padding=1), BatchNorm2d(8), relu, lambda x: max_pool2d(x, 2), flatten,
                       Linear(8 * (side // 2) ** 2, 10))
    opt = Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    x_train, x_valid = x_train.reshape(-1, 1, side, side) * 2 - 1, x_valid.reshape(-1, 1, side, side) * 2 - 1
    for _ in range(epochs):
        order = torch.randperm(len(y_train), generator=generator)
        for i in range(0, len(order), 64):
            batch = order[i:i + 64]
            loss = softmax_cross_entropy(model(Variable(x_train[batch])), y_train[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with eval_mode(): return accuracy(model(Variable(x_valid)), y_valid).item()


@pytest.mark.slow
def test_small_cnn_on_our_engine_learns_the_digits():
    from exp.data import load_digits
    valid_accuracy = train_small_cnn(*load_digits(), side=8, epochs=3)
    assert valid_accuracy > 0.9, valid_accuracy


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MNIST.exists(), reason=f"real MNIST files not at {SHARED_MNIST}")
def test_small_cnn_on_our_engine_learns_an_mnist_subset():
    from exp.data import load_mnist
    x_train, y_train, x_valid, y_valid = load_mnist(SHARED_MNIST)
    valid_accuracy = train_small_cnn(x_train[:2560], y_train[:2560], x_valid[:2000], y_valid[:2000], side=28,
                                     epochs=1)
    assert valid_accuracy > 0.8, valid_accuracy  # 0.84 after 40 steps
