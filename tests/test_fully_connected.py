"""The hand-written forward and backward passes of `02_fully_connected` against `torch.autograd`."""
import pytest
import torch
from torch import nn

from exp.fully_connected import (
    Lin,
    Model,
    Mse,
    Relu,
    autograd_gradients,
    forward_and_backward,
    lin,
    lin_grad,
    mse,
    mse_grad,
    normalize,
    relu,
    relu_grad,
)
from exp.testing import test_near

def random_problem(n=64, n_in=20, n_hidden=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    def randn(*shape): return torch.randn(*shape, generator=g, dtype=dtype)
    return randn(n, n_in), randn(n), randn(n_in, n_hidden) * 0.3, randn(n_hidden), randn(n_hidden,
                 1) * 0.3, randn(1)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-8), (torch.float32, 1e-4)])
@pytest.mark.parametrize("seed,n", [(0, 64), (1, 1), (2, 300)])
def test_hand_backward_equals_autograd(dtype, tol, seed, n):
    problem = random_problem(n=n, dtype=dtype, seed=seed)
    loss, ours = forward_and_backward(*problem)
    ref_loss, theirs = autograd_gradients(*problem)
    test_near(loss, ref_loss, atol=tol, rtol=tol)
    assert set(ours) == {"x", "w1", "b1", "w2", "b2"}
    for name in ours:
        assert ours[name].shape == theirs[name].shape and ours[name].dtype == dtype
        test_near(ours[name], theirs[name], atol=tol, rtol=tol)


def test_gradients_match_finite_differences():
    x, y, w1, b1, w2, b2 = random_problem(n=8, n_in=5, n_hidden=4)
    _, grads = forward_and_backward(x, y, w1, b1, w2, b2)
    eps = 1e-6
    for i, j in [(0, 0), (2, 3), (4, 1)]:
        bumped = w1.clone()
        bumped[i, j] += eps
        dipped = w1.clone()
        dipped[i, j] -= eps
        def loss(w): return mse(lin(relu(lin(x, w, b1)), w2, b2), y)
        numeric = (loss(bumped) - loss(dipped)) / (2 * eps)
        assert abs(numeric.item() - grads["w1"][i, j].item()) < 1e-6


def test_piece_gradients_against_autograd():
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    out_grad = torch.randn(7, 3, dtype=torch.float64)
    lin(x, w, b).backward(out_grad)
    for ours, theirs in zip(lin_grad(x.detach(), w.detach(), out_grad), (x.grad, w.grad, b.grad)):
        test_near(ours, theirs, atol=1e-12)

    z = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    relu_out_grad = torch.randn(10, 4, dtype=torch.float64)
    relu(z).backward(relu_out_grad)
    test_near(relu_grad(z.detach(), relu_out_grad), z.grad, atol=1e-12)

    output = torch.randn(6, 1, dtype=torch.float64, requires_grad=True)
    target = torch.randn(6, dtype=torch.float64)
    torch.nn.functional.mse_loss(output.squeeze(-1), target).backward()
    test_near(mse(output.detach(), target), torch.nn.functional.mse_loss(output.detach().squeeze(-1), target),
              atol=1e-12)
    test_near(mse_grad(output.detach(), target), output.grad, atol=1e-12)


def test_modules_equal_autograd_and_nn_module():
    x, y, w1, b1, w2, b2 = random_problem(n=50)
    model = Model(w1, b1, w2, b2)
    loss = model(x, y)
    x_grad = model.backward()
    assert isinstance(model.layers[0], Lin) and isinstance(model.layers[1], Relu) and isinstance(model.loss,
                      Mse)

    torch_layers = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 1)).double()
    with torch.no_grad():
        torch_layers[0].weight.copy_(w1.t())
        torch_layers[0].bias.copy_(b1)
        torch_layers[2].weight.copy_(w2.t())
        torch_layers[2].bias.copy_(b2)
    x_leaf = x.clone().requires_grad_()
    torch_loss = mse(torch_layers(x_leaf), y)
    torch_loss.backward()
    test_near(loss, torch_loss, atol=1e-10)
    test_near(x_grad, x_leaf.grad, atol=1e-10)
    for ours, theirs in [(model.layers[0], torch_layers[0]), (model.layers[2], torch_layers[2])]:
        test_near(ours.w_grad, theirs.weight.grad.t(), atol=1e-10)
        test_near(ours.b_grad, theirs.bias.grad, atol=1e-10)


def test_loss_backward_scales_with_out_grad():
    x, y, *params = random_problem(n=10)
    model = Model(*params)
    model(x, y)
    grad_one = model.backward().clone()
    test_near(model.backward(3.0), 3 * grad_one, atol=1e-12)


def test_mse_does_not_broadcast_to_a_matrix():
    output, target = torch.tensor([[1.], [2.], [3.]]), torch.tensor([1., 2., 5.])
    test_near(mse(output, target), torch.tensor(4 / 3))


def test_normalize():
    x = torch.randn(100, 8) * 3 + 2
    z = normalize(x, x.mean(), x.std())
    assert abs(z.mean().item()) < 1e-5 and abs(z.std().item() - 1) < 1e-5
