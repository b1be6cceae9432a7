"""Tests for exp.autograd_functions: every function against torch.autograd in float64 and central
differences, second derivatives against torch's double backward, the train/eval switch, the meta device, and
error messages."""
import pytest
import torch
import torch.nn.functional as F
from engine_checks import check_gradients, check_second_order

from exp.autograd import Config, Variable, eval_mode
from exp.autograd_functions import (
    accuracy,
    avg_pool2d,
    batch_norm,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    col2im,
    conv2d,
    conv_transpose2d,
    dropout,
    embedding,
    expand_dims,
    flatten,
    im2col,
    leaky_relu,
    max_pool2d,
    mean,
    pad2d,
    sigmoid_cross_entropy,
)
from exp.testing import test_eq, test_near

@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    "Tiny ops: one thread for these tests only (the fixture is in conftest.py)."


TOKENS = torch.tensor([[0, 2, 2], [3, 0, 1]])
# name: (ours, torch's, input shapes[, how to make the inputs: "positive", "probability", "bce"])
FUNCTIONS = {
    "conv2d": (conv2d, F.conv2d, [(2, 3, 5, 4), (4, 3, 3, 2), (4,)]),
    "conv2d_stride_padding": (lambda x, w: conv2d(x, w, stride=2, padding=1),
                              lambda x, w: F.conv2d(x, w, stride=2, padding=1), [(2, 2, 6, 5), (3, 2, 3, 3)]),
    "conv2d_rect_stride": (lambda x, w: conv2d(x, w, stride=(1, 2), padding=(2, 0)),
                           lambda x, w: F.conv2d(x, w, stride=(1, 2), padding=(2, 0)),
                           [(1, 2, 4, 6), (2, 2, 3, 2)]),
    "conv_transpose2d": (conv_transpose2d, F.conv_transpose2d, [(2, 3, 3, 4), (3, 2, 2, 3), (2,)]),
    "conv_transpose2d_stride_padding": (lambda x, w: conv_transpose2d(x, w, stride=2, padding=1),
                                        lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1),
                                        [(2, 3, 3, 3), (3, 2, 4, 4)]),
    "max_pool2d": (lambda x: max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2), [(2, 3, 4, 6)]),
    "max_pool2d_stride_padding": (lambda x: max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1),
                                  [(2, 2, 7, 6)]),
    "avg_pool2d": (lambda x: avg_pool2d(x, 2), lambda x: F.avg_pool2d(x, 2), [(2, 3, 4, 6)]),
    "avg_pool2d_stride_padding": (lambda x: avg_pool2d(x, 3, 2, 1), lambda x: F.avg_pool2d(x, 3, 2, 1),
                                  [(2, 2, 7, 6)]),
    "pad2d": (lambda x: pad2d(x, (1, 2), 0.5), lambda x: F.pad(x, (2, 2, 1, 1), value=0.5), [(2, 3, 3)]),
    "batch_norm_train": (lambda x, w, b: batch_norm(x, None, None, w, b, training=True),
                         lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                         [(6, 3, 2, 2), (3,), (3,)]),
    "batch_norm_1d": (lambda x: batch_norm(x, None, None, training=True),
                      lambda x: F.batch_norm(x, None, None, training=True), [(5, 4)]),
    "leaky_relu": (lambda x: leaky_relu(x, 0.2), lambda x: F.leaky_relu(x, 0.2), [(3, 5)]),
    "embedding": (lambda w: embedding(TOKENS, w), lambda w: F.embedding(TOKENS, w), [(4, 3)]),
    "flatten": (flatten, lambda x: x.flatten(1), [(2, 3, 2)]),
    "expand_dims": (lambda x: expand_dims(x, 1), lambda x: x.unsqueeze(1), [(2, 3)]),
    "mean_all": (mean, torch.mean, [(2, 3)]),
    "mean_axes_keepdims": (lambda x: mean(x, (0, 2), True), lambda x: x.mean((0, 2), keepdim=True),
                           [(2, 3, 4)]),
    "bce_with_logits": (binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits,
                        [(3, 4), (3, 4)], "bce"),
    "bce": (binary_cross_entropy, F.binary_cross_entropy, [(3, 4), (3, 4)], "probability"),
}


def inputs_for(shapes, kind=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    if kind == "bce": return [xs[0] * 5, torch.rand(shapes[1], generator=gen, dtype=torch.float64)]
    if kind == "probability": return [torch.sigmoid(xs[0]),
                                      torch.rand(shapes[1], generator=gen, dtype=torch.float64)]
    return xs


def spec(name):
    ours, theirs, shapes, *kind = FUNCTIONS[name]
    return ours, theirs, inputs_for(shapes, kind[0] if kind else None)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_gradient_matches_torch_and_numerical(name):
    check_gradients(*spec(name))


@pytest.mark.parametrize("name", FUNCTIONS)  # max pooling and leaky ReLU too: their masks are constants
def test_second_order_matches_torch(name):
    """Gradient penalty: d/dx of sum((dL/dx)^2), through a create_graph backward, against torch's double
    backward."""
    check_second_order(*spec(name))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_forward_backward_and_double_backward_on_meta(name):
    "No function creates a tensor on the wrong device: on `meta` any CPU tensor it made would raise."
    ours, theirs, xs = spec(name)
    vs = [Variable(torch.empty_like(x, device="meta")) for x in xs]
    indices_on_meta = TOKENS.to("meta")
    out = embedding(indices_on_meta, vs[0]) if name == "embedding" else ours(*vs)
    test_eq(tuple(out.shape), tuple(theirs(*xs).shape))
    out.sum().backward(create_graph=True)
    (vs[0].grad * vs[0].grad).sum().backward()
    for v in vs:
        assert v.grad.data.device.type == "meta"
        test_eq(tuple(v.grad.shape), tuple(v.shape))


def test_im2col_and_col2im_are_adjoint_and_match_unfold():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64, generator=gen)
    cols = im2col(x, (3, 2), 2, 1)
    g = torch.randn(cols.shape, dtype=torch.float64, generator=gen)
    test_near((cols * g).sum(), (x * col2im(g, (7, 5), (3, 2), 2, 1)).sum(), atol=1e-10, rtol=1e-12)
    # torch's layout (N, C·kh·kw, L); ours is (C·kh·kw, N·L)
    unfolded = F.unfold(x, (3, 2), padding=1, stride=2)
    test_eq(cols, unfolded.transpose(0, 1).reshape(unfolded.shape[1], -1))


def test_dropout_is_inverted_and_identity_in_eval_mode():
    torch.manual_seed(0)
    x = Variable(torch.ones(200, 500, dtype=torch.float64))
    y = dropout(x, 0.25)
    y.sum().backward()
    kept = (y.data != 0).double().mean().item()
    assert abs(kept - 0.75) < 0.01, kept
    test_eq(set(y.data.unique().tolist()), {0.0, 1 / 0.75})
    test_eq(x.grad.data, y.data)
    assert Config.train
    with eval_mode():
        assert not Config.train
        assert dropout(x, 0.25) is x
    assert Config.train
    assert dropout(x, 0.0) is x and dropout(x, 0.9, training=False) is x
    with pytest.raises(ValueError, match=r"\[0, 1\), got 1"): dropout(x, 1)


def test_batch_norm_running_statistics_match_torch_and_eval_uses_them():
    gen = torch.Generator().manual_seed(0)
    ours = [torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)]
    theirs = [t.clone() for t in ours]
    for _ in range(4):
        x = torch.randn(5, 3, 2, 2, dtype=torch.float64, generator=gen) * 3 + 1
        batch_norm(Variable(x), *ours, momentum=0.2)
        F.batch_norm(x, *theirs, training=True, momentum=0.2)
    for a, b in zip(ours, theirs): test_near(a, b, atol=1e-12, rtol=1e-12)
    w, b = torch.randn(3, dtype=torch.float64, generator=gen), torch.randn(3, dtype=torch.float64,
                       generator=gen)
    before = [t.clone() for t in ours]
    with eval_mode():
        v = Variable(x)
        y = batch_norm(v, *ours, Variable(w), Variable(b))
        test_near(y.data, F.batch_norm(x, *theirs, w, b), atol=1e-12, rtol=1e-12)
        test_eq(ours, before)  # eval mode does not update the statistics
        y.sum().backward()
        test_near(v.grad.data, (w / (theirs[1] + 1e-5).sqrt()).reshape(1, 3, 1, 1).expand_as(x))


def test_accuracy_counts_argmax_hits():
    logits = Variable(torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]))
    test_near(accuracy(logits, torch.tensor([1, 0, 0, 1])), 0.5)
    assert sigmoid_cross_entropy is binary_cross_entropy_with_logits


def test_bce_with_logits_is_stable_for_large_logits():
    x = Variable(torch.tensor([-200.0, -30.0, 30.0, 200.0]))
    t = torch.tensor([1.0, 0.0, 1.0, 0.0])
    loss = binary_cross_entropy_with_logits(x, t)
    test_near(loss.data, F.binary_cross_entropy_with_logits(x.data, t))
    loss.backward()
    assert torch.isfinite(x.grad.data).all()


@pytest.mark.parametrize("call,message", [
    (lambda: conv2d(Variable(torch.zeros(2, 1, 8, 8)), Variable(torch.zeros(4, 3, 3, 3))),
     r"input has 1 channel\(s\) \(shape \(2, 1, 8, 8\)\) but the weight \(4, 3, 3, 3\) expects 3"),
    (lambda: conv2d(Variable(torch.zeros(2, 3, 2, 2)), Variable(torch.zeros(4, 3, 5, 5)), padding=1),
     r"kernel \(5, 5\) is larger than the padded input \(4, 4\)"),
    (lambda: conv2d(Variable(torch.zeros(3, 8, 8)), Variable(torch.zeros(4, 3, 3, 3))),
     r"\(N, C, H, W\).*\(3, 8, 8\)"),
    (lambda: conv_transpose2d(Variable(torch.zeros(1, 2, 3, 3)), Variable(torch.zeros(3, 2, 2, 2))),
     r"input has 2 channel\(s\).*expects 3"),
    (lambda: max_pool2d(Variable(torch.zeros(1, 1, 2, 2)), 3),
     r"window \(3, 3\) is larger than the padded input \(2, 2\)"),
    (lambda: batch_norm(Variable(torch.zeros(4, 3)), None, None, training=False),
     r"eval mode needs running statistics, but running_mean is None and running_var is None "
     r"\(input \(4, 3\)\)"),
    (lambda: batch_norm(Variable(torch.zeros(4, 3)), torch.zeros(2), torch.ones(2)),
     r"running_mean has shape \(2,\) but the input \(4, 3\) has 3 channels"),
    (lambda: embedding(torch.tensor([0, 7]), Variable(torch.zeros(5, 2))),
     r"in \[0, 5\), got values from 0 to 7"),
    (lambda: embedding(torch.tensor([0.0]), Variable(torch.zeros(5, 2))),
     r"integer tensor, got torch.float32"),
    (lambda: binary_cross_entropy_with_logits(Variable(torch.zeros(3)), torch.zeros(3, 1)),
     r"\(3,\) and \(3, 1\)"),
])
def test_bad_input_names_the_shapes(call, message):
    with pytest.raises((ValueError, TypeError, IndexError), match=message): call()
