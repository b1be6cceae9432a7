"""The oracle checks that every function of our engine passes: lessons 02c (tests/test_autograd.py) and
19 (tests/test_autograd_functions.py) run them over their tables of functions."""
import torch

from exp.autograd import Variable, numerical_grad, tanh
from exp.testing import test_eq, test_near

def check_gradients(ours, theirs, xs):
    "Our function's output equals torch's; its gradients equal torch.autograd's and numerical differences'."
    weight = torch.randn(theirs(*xs).shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    vs = [Variable(x.clone()) for x in xs]
    out = ours(*vs)
    test_near(out.data, theirs(*xs), atol=1e-12, rtol=1e-12)
    (out * weight).sum().backward()
    ts = [x.clone().requires_grad_() for x in xs]
    (theirs(*ts) * weight).sum().backward()
    def weighted(*a): return (ours(*map(Variable, a)) * weight).sum().data
    numeric = numerical_grad(weighted, *[x.clone() for x in xs])
    for v, t, n in zip(vs, ts, numeric):
        test_eq(tuple(v.grad.shape), tuple(v.shape))
        test_near(v.grad.data, t.grad, atol=1e-10, rtol=1e-10)
        test_near(v.grad.data, n, atol=1e-6, rtol=1e-6)


def check_second_order(ours, theirs, xs):
    "Gradient penalty: d/dx of sum((dL/dx)^2) through a create_graph backward equals torch's double backward."
    weight = torch.randn(theirs(*xs).shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    vs = [Variable(x.clone()) for x in xs]
    (tanh(ours(*vs)) * weight).sum().backward(create_graph=True)
    penalty = sum(((v.grad * v.grad).sum() for v in vs[1:]), (vs[0].grad * vs[0].grad).sum())
    for v in vs: v.cleargrad()
    penalty.backward()
    ts = [x.clone().requires_grad_() for x in xs]
    grads = torch.autograd.grad((torch.tanh(theirs(*ts)) * weight).sum(), ts, create_graph=True)
    torch_penalty = sum((g * g).sum() for g in grads)
    torch_second = torch.autograd.grad(torch_penalty, ts, allow_unused=True)
    test_near(penalty.data, torch_penalty.detach(), atol=1e-10, rtol=1e-10)
    for v, g in zip(vs, torch_second):
        expected = torch.zeros_like(v.data) if g is None else g
        got = torch.zeros_like(v.data) if v.grad is None else v.grad.data
        test_near(got, expected, atol=1e-9, rtol=1e-9)
