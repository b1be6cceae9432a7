"""Tests for exp.autograd: every operation against torch.autograd (float64) and central differences,
higher-order derivatives against torch, the engine's graph handling, and its error messages."""
import gc
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from engine_checks import check_gradients, check_second_order

from exp.autograd import (
    SGD,
    Config,
    Linear,
    Sequential,
    Variable,
    broadcast_to,
    clip,
    concat,
    cos,
    dot_graph,
    eval_mode,
    exp,
    getitem,
    linear,
    log,
    log_softmax,
    matmul,
    mse,
    no_grad,
    relu,
    reshape,
    sigmoid,
    sin,
    softmax,
    softmax_cross_entropy,
    split,
    sum_to,
    tanh,
    using_config,
)
from exp.testing import test_eq, test_near

@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    "Tiny ops: one thread for these tests only, restored afterwards (the fixture is in conftest.py)."


ROOT = Path(__file__).resolve().parents[1]
LABELS = torch.tensor([1, 0, 4])
# name: (ours, torch's, input shapes[, positive inputs])
OPS = {
    "add_broadcast": (lambda a, b: a + b, lambda a, b: a + b, [(3, 1), (4,)]),
    "radd_number": (lambda a: 2.5 + a, lambda a: 2.5 + a, [(3,)]),
    "sub_broadcast": (lambda a, b: a - b, lambda a, b: a - b, [(2, 3), (2, 1)]),
    "rsub_number": (lambda a: 1 - a, lambda a: 1 - a, [(3,)]),
    "mul_broadcast": (lambda a, b: a * b, lambda a, b: a * b, [(2, 3), (3,)]),
    "rmul_number": (lambda a: 3 * a, lambda a: 3 * a, [(3,)]),
    "div_broadcast": (lambda a, b: a / b, lambda a, b: a / b, [(2, 3), (2, 1)], True),
    "rtruediv_number": (lambda a: 2 / a, lambda a: 2 / a, [(3,)], True),
    "neg": (lambda a: -a, lambda a: -a, [(3,)]),
    "pow_number": (lambda a: a ** 3, lambda a: a ** 3, [(4,)]),
    "pow_variable": (lambda a, b: a ** b, lambda a, b: a ** b, [(4,), (4,)], True),
    "rpow": (lambda a: 2 ** a, lambda a: 2 ** a, [(4,)]),
    "exp": (exp, torch.exp, [(4,)]), "log": (log, torch.log, [(4,)], True),
    "sin": (sin, torch.sin, [(4,)]), "cos": (cos, torch.cos, [(4,)]),
    "tanh": (tanh, torch.tanh, [(4,)]), "sigmoid": (sigmoid, torch.sigmoid, [(4,)]),
    "relu": (relu, torch.relu, [(6,)]),
    "reshape": (lambda a: a.reshape(3, 2), lambda a: a.reshape(3, 2), [(2, 3)]),
    "reshape_fn": (lambda a: reshape(a, (6,)), lambda a: a.reshape(6), [(2, 3)]),
    "transpose_axes": (lambda a: a.transpose(2, 0, 1), lambda a: a.permute(2, 0, 1), [(2, 3, 4)]),
    "transpose_T": (lambda a: a.T, lambda a: a.T, [(2, 3)]),
    "sum_all": (lambda a: a.sum(), lambda a: a.sum(), [(2, 3)]),
    "sum_axis_keepdims": (lambda a: a.sum(1, True), lambda a: a.sum(1, keepdim=True), [(3, 4)]),
    "sum_axes": (lambda a: a.sum((0, 2)), lambda a: a.sum((0, 2)), [(2, 3, 4)]),
    "broadcast_to": (lambda a: broadcast_to(a, (2, 3, 4)), lambda a: a.broadcast_to(2, 3, 4), [(3, 1)]),
    "sum_to": (lambda a: sum_to(a, (3, 1)), lambda a: a.sum_to_size(3, 1), [(2, 3, 4)]),
    "matmul": (lambda a, b: a @ b, lambda a, b: a @ b, [(3, 4), (4, 2)]),
    "matmul_batched": (matmul, torch.matmul, [(2, 3, 4), (4, 5)]),
    "matmul_vector": (matmul, torch.matmul, [(3, 4), (4,)]),
    "rmatmul_tensor": (lambda a: torch.ones(2, 3, dtype=torch.float64) @ a,
                       lambda a: torch.ones(2, 3, dtype=torch.float64) @ a, [(3, 4)]),
    "linear": (linear, F.linear, [(5, 4), (3, 4), (3,)]),
    "linear_no_bias": (linear, F.linear, [(2, 5, 4), (3, 4)]),
    "getitem_slice": (lambda a: a[1:, ::2], lambda a: a[1:, ::2], [(3, 4)]),
    "getitem_repeated": (lambda a: a[[0, 0, 2]], lambda a: a[[0, 0, 2]], [(3, 4)]),
    "getitem_fn": (lambda a: getitem(a, (slice(None), 1)), lambda a: a[:, 1], [(3, 4)]),
    "max_axis": (lambda a: a.max(0), lambda a: a.amax(0), [(3, 4)]),
    "max_all_keepdims": (lambda a: a.max(None, True), lambda a: a.amax((0, 1), keepdim=True), [(3, 4)]),
    "min_axis": (lambda a: a.min(1, True), lambda a: a.amin(1, keepdim=True), [(3, 4)]),
    "clip": (lambda a: clip(a, -0.5, 0.5), lambda a: a.clamp(-0.5, 0.5), [(8,)]),
    "softmax": (softmax, lambda a: torch.softmax(a, 1), [(3, 5)]),
    "softmax_axis0": (lambda a: softmax(a, 0), lambda a: torch.softmax(a, 0), [(3, 5)]),
    "log_softmax": (log_softmax, lambda a: torch.log_softmax(a, 1), [(3, 5)]),
    "softmax_cross_entropy": (lambda a: softmax_cross_entropy(a, LABELS),
                              lambda a: F.cross_entropy(a, LABELS), [(3, 5)]),
    "mse": (mse, F.mse_loss, [(4, 3), (4, 3)]),
    "concat": (lambda a, b: concat([a, b], 1), lambda a, b: torch.cat([a, b], 1), [(2, 3), (2, 2)]),
    "split_first": (lambda a: split(a, [1, 2], 1)[1], lambda a: torch.split(a, [1, 2], 1)[1], [(2, 3)]),
}


def inputs_for(shapes, positive, seed=0):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    return [x.abs() + 0.5 for x in xs] if positive else xs


def spec(name):
    ours, theirs, shapes, *rest = OPS[name]
    return ours, theirs, inputs_for(shapes, bool(rest and rest[0]))


@pytest.mark.parametrize("name", OPS)
def test_gradient_matches_torch_and_numerical(name):
    check_gradients(*spec(name))


# relu'' and clip'' are 0 (or undefined at the kinks)
@pytest.mark.parametrize("name", [n for n in OPS if n not in ("relu", "clip")])
def test_second_order_matches_torch(name):
    "Gradient penalty: d/dx of sum(w * (dL/dx)^2), through a create_graph backward."
    check_second_order(*spec(name))


def expression(x): return tanh(x) * sin(x ** 2) + exp(-x) / (1 + x * x) - log(1 + x * x) * cos(x)
def expression_torch(x):
    return (torch.tanh(x) * torch.sin(x ** 2) + torch.exp(-x) / (1 + x * x)
            - torch.log(1 + x * x) * torch.cos(x))


def test_second_and_third_derivatives_match_torch():
    points = torch.linspace(-2, 2, 11, dtype=torch.float64)
    x = Variable(points.clone())
    y, ours = expression(x), []
    for _ in range(3):
        x.cleargrad()
        y.backward(torch.ones_like(points), create_graph=True)
        y = x.grad
        ours.append(y.data)
    xt = points.clone().requires_grad_()
    yt = expression_torch(xt).sum()
    for order in range(3):
        yt, = torch.autograd.grad(yt, xt, create_graph=True)
        test_near(ours[order], yt.detach(), atol=1e-10, rtol=1e-10)
        yt = yt.sum()


def test_double_backprop():
    x = Variable(torch.tensor(2.0, dtype=torch.float64))
    y = x ** 2
    y.backward(create_graph=True)
    gx = x.grad
    x.cleargrad()
    (gx ** 3 + y).backward()
    test_near(x.grad.data, 100.0)


def test_newton_converges_in_under_10_iterations():
    x = Variable(torch.tensor(2.0, dtype=torch.float64))
    for iteration in range(1, 10):
        y = x ** 4 - 2 * x ** 2
        y.backward(create_graph=True)
        gx = x.grad
        x.cleargrad()
        gx.backward()
        x = Variable(x.data - gx.data / x.grad.data)
        if abs(x.data.item() - 1) < 1e-12: break
    assert abs(x.data.item() - 1) < 1e-12 and iteration < 10


def test_reuse_accumulates_and_cleargrad_resets():
    a = Variable(torch.tensor(3.0, dtype=torch.float64))
    (a + a).backward()
    test_near(a.grad.data, 2.0)
    (a * a).backward()
    test_near(a.grad.data, 2.0 + 6.0)  # leaves accumulate across backward calls
    a.cleargrad()
    assert a.grad is None
    (a * a * a).backward()
    test_near(a.grad.data, 27.0)


def test_diamond_and_reused_intermediates_match_torch():
    def graph(a, f_sin, f_exp):
        b, c = f_sin(a), a * a
        d = b * c + c
        e = d + f_exp(b) * d
        return (e * c).sum()
    x = torch.randn(5, dtype=torch.float64)
    v = Variable(x.clone())
    graph(v, sin, exp).backward()
    t = x.clone().requires_grad_()
    graph(t, torch.sin, torch.exp).backward()
    test_near(v.grad.data, t.grad, atol=1e-12, rtol=1e-12)


def test_deep_chain_10000_no_recursion_error():
    x = Variable(torch.tensor(0.5, dtype=torch.float64))
    xt = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    y, yt = x, xt
    for i in range(10_000):
        y, yt = (y * 1.0001, yt * 1.0001) if i % 2 else (sin(y), torch.sin(yt))
    assert 10_000 > sys.getrecursionlimit()
    y.backward()
    yt.backward()
    test_near(x.grad.data, xt.grad, atol=1e-12, rtol=1e-9)
    del y  # freeing a 10,000-deep graph must not overflow the stack either


def test_graph_is_freed_by_reference_counting():
    gc.disable()
    try:
        x = Variable(torch.randn(10))
        y = tanh(x * 2)
        middle = weakref.ref(y.creator.inputs[0].creator)
        z = (y ** 2).sum()
        z.backward()
        assert middle() is not None
        del y, z
        assert middle() is None
    finally:
        gc.enable()


def test_memory_does_not_grow_over_1000_graphs():
    x = Variable(torch.randn(50))
    def build_and_drop():
        y = x
        for _ in range(10): y = tanh(y) * 1.5
        y.sum().backward()
    for _ in range(50): build_and_drop()
    gc.disable()  # reference counting alone must free each graph: no cycles left for the collector
    try:
        before = sys.getallocatedblocks()
        for _ in range(1000): build_and_drop()
        assert sys.getallocatedblocks() - before < 1000
    finally:
        gc.enable()


def test_retain_grad():
    x = Variable(torch.tensor(2.0))
    h = x * x
    h.retain_grad()
    y = h * 3 + h
    y.backward()
    test_near(h.grad.data, 4.0)
    assert y.grad is None  # the root and unretained intermediates keep nothing
    x2 = Variable(torch.tensor(2.0))
    h2 = x2 * x2
    y2 = h2 * 3
    y2.backward()
    assert h2.grad is None
    y2 = h2 * 3
    y2.backward(retain_grad=True)
    test_near(h2.grad.data, 3.0)
    test_near(y2.grad.data, 1.0)


def test_no_grad_and_using_config():
    x = Variable(torch.tensor(1.0))
    with no_grad():
        y = x * 2
        assert Config.enable_backprop is False
    assert Config.enable_backprop is True
    assert y.creator is None and not y.requires_grad
    with using_config("enable_backprop", False):
        assert exp(x).creator is None
    assert exp(x).creator is not None


def test_constants_get_no_gradient_and_skip_work():
    x = Variable(torch.randn(3, 4))
    data = Variable(torch.randn(5, 3), requires_grad=False)
    (data @ x).sum().backward()
    assert data.grad is None and x.grad is not None


def test_operators_accept_numbers_arrays_and_tensors_on_either_side():
    x = Variable(torch.tensor([1.0, 2.0], dtype=torch.float64))
    others = (2, 2.5, np.array([1.0, 3.0]), np.float64(2.0), torch.tensor([1.0, 3.0], dtype=torch.float64))
    for other in others:
        o = torch.as_tensor(other, dtype=torch.float64)
        for ours, ref in [(x + other, x.data + o), (other + x, o + x.data), (x - other, x.data - o),
                          (other - x, o - x.data), (x * other, x.data * o), (other * x, o * x.data),
                          (x / other, x.data / o), (other / x, o / x.data)]:
            assert isinstance(ours, Variable), type(ours)
            test_near(ours.data, ref)
    f32 = Variable(torch.ones(2))
    test_eq((f32 * 2.5).dtype, torch.float32)  # numbers take the Variable's dtype


def test_multiple_outputs_unused_output_gets_zeros():
    x = Variable(torch.randn(2, 5, dtype=torch.float64))
    a, b, c = split(x, [1, 3, 1], axis=1)
    (b * 2).sum().backward()
    expected = torch.zeros(2, 5, dtype=torch.float64)
    expected[:, 1:4] = 2
    test_near(x.grad.data, expected)


def test_type_errors_name_the_type():
    with pytest.raises(TypeError, match="str"): Variable("3")
    with pytest.raises(TypeError, match="list of str"): Variable(torch.ones(2)) + ["a", "b"]
    with pytest.raises(TypeError, match="dict"): exp({"a": 1})
    with pytest.raises(TypeError, match="str"): Variable(np.array(["a"]))


def test_backward_on_non_scalar_needs_a_seed():
    y = Variable(torch.ones(2, 3)) * 2
    with pytest.raises(RuntimeError, match=r"seed gradient.*\(2, 3\)"): y.backward()
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 3\)"): y.backward(torch.ones(3, 2))


def test_shape_errors_name_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4, 5\)"):
        Variable(torch.ones(2, 3)) @ Variable(torch.ones(4, 5))
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4,\)"): Variable(torch.ones(2, 3)) + torch.ones(4)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3,\)"):
        softmax_cross_entropy(Variable(torch.ones(2, 3)), torch.tensor([0, 1, 2]))


def test_engine_tensors_never_require_grad():
    t = torch.randn(3, requires_grad=True)
    v = Variable(t)
    assert not v.data.requires_grad
    y = (v * t).sum()
    y.backward()
    assert not y.data.requires_grad and not v.grad.data.requires_grad


def test_dot_graph_lists_every_edge():
    x, w = Variable(torch.tensor(1.0), name="x"), Variable(torch.tensor(0.5), name="w")
    y = tanh(x * w + 1)
    dot = dot_graph(y)
    assert dot.startswith("digraph") and dot.count("->") == 8
    assert all(word in dot for word in ('"x"', '"w"', "Mul", "Add", "Tanh"))


def test_tiny_mlp_learns_a_separable_problem():
    torch.manual_seed(0)
    x = torch.randn(200, 2)
    y = (x[:, 0] * x[:, 1] > 0).long()  # XOR of the signs: needs the hidden layer
    model = Sequential(Linear(2, 16), relu, Linear(16, 2))
    opt = SGD(model.parameters(), lr=0.5)
    assert len(list(model.parameters())) == 4
    for _ in range(300):
        loss = softmax_cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with no_grad(): accuracy = (model(x).data.argmax(1) == y).float().mean().item()
    assert accuracy > 0.9


ON_CPU_BY_DESIGN = ("rmatmul_tensor",)  # its constant operand is a CPU tensor written in the test itself


@pytest.mark.parametrize("name", [n for n in OPS if n not in ON_CPU_BY_DESIGN])
def test_forward_backward_and_double_backward_on_meta_device(name):
    "On `meta` (shapes, no memory) any tensor the engine made on the CPU by mistake would raise."
    ours, theirs, xs = spec(name)
    vs = [Variable(torch.empty_like(x, device="meta")) for x in xs]
    out = softmax_cross_entropy(vs[0], LABELS.to("meta")) if name == "softmax_cross_entropy" else ours(*vs)
    test_eq(tuple(out.shape), tuple(theirs(*xs).shape))
    out.sum().backward(create_graph=True)
    (vs[0].grad * vs[0].grad).sum().backward()
    for v in vs:
        assert v.grad.data.device.type == "meta", name
        test_eq(tuple(v.grad.shape), tuple(v.shape))


def test_getitem_and_unused_outputs_backward_on_meta():
    "The two places that once made their zeros on the CPU: GetItemGrad and the gradients of unused outputs."
    x = Variable(torch.randn(3, 4, device="meta"))
    x[0].sum().backward()
    assert x.grad.data.device.type == "meta"
    x.cleargrad()
    split(x, [1, 3], 1)[0].sum().backward()
    assert x.grad.data.device.type == "meta"


def test_eval_mode_switches_config_train_and_restores_it():
    assert Config.train
    with eval_mode():
        assert not Config.train
        with using_config("train", True): assert Config.train
        assert not Config.train
    assert Config.train


def test_relu_backward_is_one_pass_and_twice_differentiable():
    from exp.autograd import ReLUGrad
    torch.manual_seed(0)
    x, g = torch.randn(4, 3, 5, 5, dtype=torch.float64), torch.randn(4, 3, 5, 5, dtype=torch.float64)
    test_eq(ReLUGrad(x)(Variable(g)).data, g * (x > 0))  # gy where x > 0, 0 elsewhere
    # a gradient of the gradient flows through ReLUGrad (linear in gy), as with torch.autograd
    xv, xt = Variable(x.clone()), x.clone().requires_grad_()
    (relu(xv) * relu(xv)).sum().backward(create_graph=True)
    gx = xv.grad
    xv.cleargrad()
    (gx * gx).sum().backward()
    (gt,) = torch.autograd.grad((torch.relu(xt) * torch.relu(xt)).sum(), xt, create_graph=True)
    (ggt,) = torch.autograd.grad((gt * gt).sum(), xt)
    test_near(gx.data, gt.detach(), atol=1e-12, rtol=0)
    test_near(xv.grad.data, ggt, atol=1e-12, rtol=0)


@pytest.mark.slow
def test_each_speed_trick_taken_out_keeps_the_engine_correct():
    "`benchmarks/autograd.py --tricks` times patched engines: each patch applies, and gives the same numbers."
    code = textwrap.dedent('''
        import sys
        import torch
        sys.path.insert(0, "benchmarks")
        import autograd as bench

        def numbers(m):
            gen = torch.Generator().manual_seed(0)
            x = m.Variable(torch.randn(4, 5, generator=gen, dtype=torch.float64))
            W = m.Variable(torch.randn(3, 5, generator=gen, dtype=torch.float64))
            b = m.Variable(torch.randn(3, generator=gen, dtype=torch.float64))
            h = m.tanh(m.linear(x, W, b) * 1.5) + m.sin(b) ** 2
            left, right = m.split(h, [1, 2], axis=1)
            loss = m.softmax_cross_entropy(m.concat([right, left * 2.0], 1), torch.tensor([0, 2, 1, 1]))
            loss.backward(create_graph=True)
            gW = W.grad
            W.cleargrad()
            (gW * gW).sum().backward()
            return [loss.data, gW.data, W.grad.data, x.grad.data, b.grad.data]

        expected = numbers(bench.load_engine())
        for name, (_, patches) in bench.TRICKS.items():
            for got, want in zip(numbers(bench.load_engine(patches)), expected):
                assert torch.allclose(got, want, rtol=1e-12, atol=1e-12), name
        print(len(bench.TRICKS), "tricks")
    ''')
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[0]) >= 5
