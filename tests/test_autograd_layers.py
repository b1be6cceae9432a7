"""Tests for exp.autograd_layers: each layer against its torch.nn twin with copied weights (float64 outputs
and gradients), named parameters and buffers, .to(device), and save_weights/load_weights with their errors."""
import pickle

import pytest
import torch
import torch.nn as nn

from exp.autograd import Linear, Variable, eval_mode, relu, softmax_cross_entropy
from exp.autograd_functions import flatten, max_pool2d
from exp.autograd_layers import (
    LSTM,
    RNN,
    BatchNorm2d,
    Buffer,
    Conv2d,
    ConvTranspose2d,
    Embedding,
    Sequential,
    load_weights,
    named_tensors,
    save_weights,
)
from exp.testing import test_eq, test_near

F64 = torch.float64


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    "Tiny ops: one thread for these tests only (the fixture is in conftest.py)."


def copy_weights(ours, theirs):
    "torch's parameters and buffers into ours, by name (torch's `weight_ih_l0` is our `weight_ih`)."
    state = {name.replace("_l0", ""): t for name,
             t in theirs.state_dict().items() if "num_batches" not in name}
    names = dict(named_tensors(ours))
    test_eq(sorted(names), sorted(state))
    for name, v in names.items(): v.data.copy_(state[name])
    return names


@pytest.mark.parametrize("make", [
    lambda: (Conv2d(3, 4, 3, dtype=F64), nn.Conv2d(3, 4, 3)),
    lambda: (Conv2d(3, 4, (3, 2), stride=2, padding=1, bias=False, dtype=F64),
             nn.Conv2d(3, 4, (3, 2), 2, 1, bias=False)),
    lambda: (ConvTranspose2d(3, 2, 4, stride=2, padding=1, dtype=F64), nn.ConvTranspose2d(3, 2, 4, 2, 1)),
    lambda: (BatchNorm2d(3, momentum=0.3, dtype=F64), nn.BatchNorm2d(3, momentum=0.3)),
], ids=["conv", "conv_stride_padding", "conv_transpose", "batch_norm"])
def test_layer_matches_torch_nn(make):
    torch.manual_seed(0)
    ours, theirs = make()
    theirs = theirs.double()
    names = copy_weights(ours, theirs)
    x = torch.randn(4, 3, 6, 5, dtype=F64)
    xv, xt = Variable(x.clone()), x.clone().requires_grad_()
    y_ours, y_theirs = ours(xv), theirs(xt)
    test_near(y_ours.data, y_theirs, atol=1e-10, rtol=1e-10)
    weight = torch.randn(y_theirs.shape, dtype=F64)
    (y_ours * weight).sum().backward()
    (y_theirs * weight).sum().backward()
    test_near(xv.grad.data, xt.grad, atol=1e-10, rtol=1e-10)
    for name, p in theirs.named_parameters(): test_near(names[name].grad.data, p.grad, atol=1e-10, rtol=1e-10)
    for name, b in theirs.named_buffers():
        if name in names: test_near(names[name].data, b, atol=1e-12, rtol=1e-12)


def test_batch_norm_layer_eval_mode_matches_torch_eval():
    torch.manual_seed(0)
    ours, theirs = BatchNorm2d(2, dtype=F64), nn.BatchNorm2d(2).double()
    for _ in range(3):
        x = torch.randn(5, 2, 3, 3, dtype=F64) * 2 + 1
        ours(Variable(x))
        theirs(x)
    with eval_mode(): y = ours(Variable(x))
    test_near(y.data, theirs.eval()(x), atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError,
                       match=r"BatchNorm2d\(2\) needs an input \(N, 2, H, W\), got shape \(5, 3, 3, 3\)"):
        ours(Variable(torch.randn(5, 3, 3, 3)))


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_recurrent_matches_torch_nn_with_copied_weights(kind):
    torch.manual_seed(0)
    ours, theirs = (RNN(4, 5, dtype=F64), nn.RNN(4, 5, batch_first=True)) if kind == "rnn" else \
        (LSTM(4, 5, dtype=F64), nn.LSTM(4, 5, batch_first=True))
    theirs = theirs.double()
    names = copy_weights(ours, theirs)
    x = torch.randn(3, 6, 4, dtype=F64)
    states = [torch.randn(1, 3, 5, dtype=F64) for _ in range(1 if kind == "rnn" else 2)]
    xv, sv = Variable(x.clone()), [Variable(s.clone()) for s in states]
    xt, st = x.clone().requires_grad_(), [s.clone().requires_grad_() for s in states]
    out_ours, final_ours = ours(xv, sv[0] if kind == "rnn" else tuple(sv))
    out_theirs, final_theirs = theirs(xt, st[0] if kind == "rnn" else tuple(st))
    finals_ours = [final_ours] if kind == "rnn" else list(final_ours)
    finals_theirs = [final_theirs] if kind == "rnn" else list(final_theirs)
    test_near(out_ours.data, out_theirs, atol=1e-10, rtol=1e-10)
    for a, b in zip(finals_ours, finals_theirs):
        test_eq(tuple(a.shape), (1, 3, 5))
        test_near(a.data, b, atol=1e-10, rtol=1e-10)
    ((out_ours * out_ours).sum() + sum((f * 3).sum() for f in finals_ours)).backward()
    ((out_theirs * out_theirs).sum() + sum((f * 3).sum() for f in finals_theirs)).backward()
    test_near(xv.grad.data, xt.grad, atol=1e-10, rtol=1e-10)
    for a, b in zip(sv, st): test_near(a.grad.data, b.grad, atol=1e-10, rtol=1e-10)
    for name, p in theirs.named_parameters():
        test_near(names[name.replace("_l0", "")].grad.data, p.grad, atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError,
                       match=r"needs an input \(N, T, 4\), got shape \(3, 6, 2\)"): ours(Variable(x[..., :2]))


def test_embedding_matches_torch_and_sums_repeated_tokens():
    ours, theirs = Embedding(6, 3, dtype=F64), nn.Embedding(6, 3).double()
    copy_weights(ours, theirs)
    tokens = torch.tensor([[1, 4, 1], [0, 5, 1]])
    y = ours(tokens)
    test_near(y.data, theirs(tokens))
    (y ** 2).sum().backward()
    (theirs(tokens) ** 2).sum().backward()
    test_near(ours.weight.grad.data, theirs.weight.grad, atol=1e-12, rtol=1e-12)


def small_cnn(width=8):
    return Sequential(Conv2d(1, width, 3, padding=1), BatchNorm2d(width), relu, lambda x: max_pool2d(x, 2),
                      flatten, Linear(width * 16, 10))


def test_named_tensors_lists_parameters_and_buffers_once():
    shared = Linear(3, 3)
    model = Sequential(shared, shared, BatchNorm2d(2))
    test_eq([name for name, _ in named_tensors(model)],
            ["layers.0.W", "layers.0.b", "layers.2.weight", "layers.2.bias", "layers.2.running_mean",
             "layers.2.running_var"])
    test_eq(len(list(model.parameters())), 4)  # buffers are not trained
    assert isinstance(model.layers[2].running_mean, Buffer) and not model.layers[2].running_mean.requires_grad


def test_to_moves_parameters_buffers_and_gradients():
    torch.manual_seed(0)
    model = small_cnn()
    softmax_cross_entropy(model(Variable(torch.randn(4, 1, 8, 8))), torch.tensor([0, 1, 2, 3])).backward()
    assert model.to(dtype=F64) is model
    test_eq({v.data.dtype for _, v in named_tensors(model)}, {F64})
    test_eq({p.grad.data.dtype for p in model.parameters()}, {F64})
    model.to("meta")
    x = Variable(torch.empty(4, 1, 8, 8, dtype=F64, device="meta"))
    t = torch.zeros(4, dtype=torch.long, device="meta")
    for p in model.parameters(): p.cleargrad()
    softmax_cross_entropy(model(x), t).backward()
    devices = {v.data.device.type for _, v in named_tensors(model)}
    devices |= {p.grad.data.device.type for p in model.parameters()}
    test_eq(devices, {"meta"})


def test_save_and_load_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    model = small_cnn()
    model(Variable(torch.randn(16, 1, 8, 8)))  # running statistics move away from 0 and 1
    path = save_weights(model, tmp_path / "sub" / "cnn.pt")
    test_eq(path, tmp_path / "sub" / "cnn.pt")
    copy = small_cnn()
    assert load_weights(copy, path) is copy
    for (name, a), (_, b) in zip(named_tensors(model), named_tensors(copy)): test_eq(a.data, b.data)
    x = Variable(torch.randn(4, 1, 8, 8))
    with eval_mode(): test_eq(copy(x).data, model(x).data)
    saved = torch.load(path, weights_only=True)
    test_eq(sorted(saved), sorted(name for name, _ in named_tensors(model)))


def test_load_weights_names_the_shapes_and_names_that_differ(tmp_path):
    save_weights(small_cnn(), tmp_path / "cnn.pt")
    with pytest.raises(ValueError, match=r"layers.0.weight: file \(8, 1, 3, 3\) vs module \(4, 1, 3, 3\)"):
        load_weights(small_cnn(width=4), tmp_path / "cnn.pt")
    other = Sequential(Conv2d(1, 8, 3, padding=1), relu)
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['layers.1.bias'"):
        load_weights(other, tmp_path / "cnn.pt")


class Payload:
    "An object whose unpickling would run code: weights files must refuse it."
    def __reduce__(self): return (print, ("pickled code ran",))


def test_load_weights_refuses_pickled_objects(tmp_path):
    torch.save({"layers.0.weight": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError): load_weights(small_cnn(), tmp_path / "evil.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, not a dict of weights"): load_weights(small_cnn(),
                       tmp_path / "list.pt")


def test_layers_initialise_like_torch():
    "Same bounds as torch.nn: the largest |weight| of a big layer is just under 1/sqrt(fan_in)."
    torch.manual_seed(0)
    conv, transposed, rnn = Conv2d(16, 64, 3), ConvTranspose2d(16, 64, 3), RNN(10, 100)
    for weight, bound in [(conv.weight, 1 / (16 * 9) ** 0.5), (transposed.weight, 1 / (64 * 9) ** 0.5),
                          (rnn.weight_hh, 0.1)]:
        top = weight.data.abs().max().item()
        assert 0.98 * bound < top <= bound, (top, bound)
