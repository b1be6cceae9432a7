"""Every model, layer and device-moving callback through a forward and a backward on the `meta` device.

`meta` tensors have shapes and dtypes but no values. Like CUDA, meta refuses to mix with CPU tensors
(`Expected all tensors to be on the same device`), so a tensor created on the wrong device (a
`torch.zeros(shape)` without `device=`) fails here on any machine, no GPU needed. And since nothing
can be read from them, `.item()`, `bool()` or `.tolist()` of a meta tensor fails too
(`Tensor.item() cannot be called on meta tensors`): these tests also catch the hidden host-device
synchronisations a GPU would pay for at every step. What meta cannot do is skipped, with the reason.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from exp.learner import Callback, Learner
from exp.norm import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RunningBatchNorm
from exp.training import DataLoaders, accuracy

META = torch.device("meta")


def forward_backward(model, *inputs, output=lambda y: y):
    "Move `model` and `inputs` to meta, run forward and backward; every gradient must be on meta."
    model.to(META)
    y = output(model(*(x.to(META) for x in inputs)))
    assert y.is_meta
    y.float().sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.is_meta for g in grads), "a parameter got no gradient on meta"
    return y


def first(y): return y[0] if isinstance(y, tuple) else y


# --- layers ------------------------------------------------------------------------------------------

NORMS = {"BatchNorm": lambda: BatchNorm(6), "LayerNorm": lambda: LayerNorm((6, 5, 5)),
         "InstanceNorm": lambda: InstanceNorm(6), "GroupNorm": lambda: GroupNorm(2, 6),
         "RunningBatchNorm": lambda: RunningBatchNorm(6)}


@pytest.mark.parametrize("name", list(NORMS))
def test_norms_train_and_evaluate_on_meta(name):
    norm = NORMS[name]()
    x = torch.randn(4, 6, 5, 5)
    assert forward_backward(norm, x).shape == x.shape
    norm.eval()
    with torch.no_grad(): assert norm(x.to(META)).shape == x.shape
    assert all(b.is_meta for b in norm.buffers())  # the running statistics moved and stayed there


def test_convolutions_from_scratch_on_meta():
    from exp.conv import conv2d_loop, conv2d_unfold
    x = torch.randn(2, 3, 6, 6, device=META)
    w = torch.randn(4, 3, 3, 3, device=META, requires_grad=True)
    b = torch.randn(4, device=META, requires_grad=True)
    for conv in (conv2d_loop, conv2d_unfold):
        y = conv(x, w, b, stride=2, padding=1)
        assert y.is_meta and y.shape == F.conv2d(x, w, b, stride=2, padding=1).shape
        y.sum().backward()
        assert w.grad.is_meta and b.grad.is_meta


def test_cnn_with_general_relu_on_meta():
    from exp.conv import GeneralRelu, get_cnn_model, init_cnn
    assert forward_backward(init_cnn(get_cnn_model()), torch.randn(4, 64)).shape == (4, 10)
    relu_model = nn.Sequential(nn.Linear(3, 4), GeneralRelu(leak=0.1, sub=0.4))
    assert forward_backward(relu_model, torch.randn(2, 3)).shape == (2, 4)


def test_xresnets_on_meta():
    from exp.resnet import xresnet18, xresnet_small
    assert forward_backward(xresnet_small(), torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert forward_backward(xresnet18(n_out=7), torch.randn(2, 3, 64, 64)).shape == (2, 7)


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU", "BPTTLSTM"])
def test_recurrent_layers_on_meta(name):
    import exp.rnn
    layer = getattr(exp.rnn, name)(5, 7, num_layers=2)
    y = forward_backward(layer, torch.randn(3, 4, 5), output=first)
    assert y.shape[-1] == 7


def test_char_model_and_stateful_on_meta():
    from exp.rnn import CharModel, Stateful
    x = torch.randint(0, 20, (3, 4))
    assert forward_backward(CharModel(20), x, output=first).shape[-1] == 20
    stateful = Stateful(CharModel(20))
    forward_backward(stateful, x, output=first)
    forward_backward(stateful, x, output=first)  # the second batch starts from the first's state


def test_attention_and_positions_on_meta():
    from exp.attention import (
        LearnedPositions,
        MultiHeadAttention,
        SinusoidalPositions,
        apply_rotary,
        causal_mask,
    )
    x = torch.randn(2, 5, 8)
    assert forward_backward(MultiHeadAttention(8, 2), x, output=first).shape == (2, 5, 8)
    assert forward_backward(LearnedPositions(10, 8), x).shape[-1] == 8
    assert SinusoidalPositions(10, 8).to(META)(x.to(META)).is_meta
    assert apply_rotary(torch.randn(2, 2, 5, 8, device=META), offset=3).is_meta
    assert causal_mask(5, 7, 2, device=META).is_meta


def test_torch_gpt_twin_on_meta():
    from exp.transformer import TorchGPT
    y = forward_backward(TorchGPT(30, 16, 8, 2, 2), torch.randint(0, 30, (2, 10)), output=first)
    assert y.shape == (2, 10, 30)


def test_gpt_on_meta():
    "GPT.forward checks the ids' range on the CPU only: elsewhere it would sync at every forward."
    from exp.transformer import GPT
    forward_backward(GPT(30, 16, 8, 2, 2), torch.randint(0, 30, (2, 10)), output=first)


def test_our_autograd_engine_on_meta():
    "The engine of 02c on meta: its indexing backward scatters into zeros made on the gradient's device."
    import exp.autograd as ag
    x = ag.Variable(torch.randn(6, 4, device=META))
    W, b = ag.Parameter(torch.randn(3, 4, device=META)), ag.Parameter(torch.zeros(3, device=META))
    logits = ag.linear(x, W, b)
    loss = ag.softmax_cross_entropy(logits[1:5], torch.tensor([0, 2, 1, 1], device=META))
    loss.backward()
    assert W.grad.data.is_meta and b.grad.data.is_meta and W.grad.shape == (3, 4)


def test_batch_augment_on_meta():
    from exp.augment import BatchAugment, flip_lr, pad_crop
    x = torch.randn(4, 1, 8, 8, device=META)
    assert flip_lr(x).is_meta and pad_crop(x, 2).shape == x.shape
    try: torch.Generator(device=META)
    except RuntimeError as e:
        pytest.skip(f"BatchAugment draws from a torch.Generator on the batch's device; meta has none ({e})")
    assert BatchAugment(flip=True, seed=0)(x).is_meta


# --- the Learner and the callbacks that move things between devices ---------------------------------

def digit_dls(n_train=60, n_valid=30, batch_size=20, images=False):
    from exp.data import load_digits
    x_train, y_train, x_valid, y_valid = load_digits()
    if images: x_train, x_valid = x_train.view(-1, 1, 8, 8), x_valid.view(-1, 1, 8, 8)
    train, valid = (x_train[:n_train], y_train[:n_train]), (x_valid[:n_valid], y_valid[:n_valid])
    return DataLoaders.from_tensors(*train, *valid, batch_size=batch_size, seed=0)


class Where(Callback):
    "Where the batch, the predictions and the gradients are, at every training batch."
    order = 90
    def before_fit(self): self.seen = set()
    def after_backward(self):
        learn = self.learn
        self.seen.add((learn.xb.device.type, learn.yb.device.type, learn.preds.device.type,
                       next(learn.model.parameters()).grad.device.type))


def test_device_callback_moves_model_and_batches_to_meta():
    from exp.conv import DeviceCallback
    torch.manual_seed(0)
    model, where = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)), Where()
    learn = Learner(model, digit_dls(), device="cpu", metrics=accuracy, logger=None,
                    cbs=[DeviceCallback("meta"), where]).fit(2)  # the Learner's own choice was the CPU
    assert where.seen == {("meta",) * 4} and learn.device == META
    assert all(p.is_meta for p in model.parameters())
    assert learn.metrics.log[-1]["epoch"] == 1  # the metrics ran (their values are NaN: meta has none)
    preds, targets = learn.get_preds()
    assert preds.is_meta and preds.shape == (30, 10)


def test_default_callbacks_of_a_cnn_fit_on_meta():
    "The schedules, the Recorder, mixup, gradient clipping, checkpoint-free callbacks: all on meta, no sync."
    from exp.mixup import MixUp
    from exp.resnet import xresnet_small
    from exp.schedule import ParamScheduler, Recorder, sched_cos
    from exp.transformer import GradientClipping
    where = Where()
    learn = Learner(xresnet_small(), digit_dls(images=True), F.cross_entropy, device="meta", metrics=accuracy,
                    logger=None, cbs=[ParamScheduler({"lr": sched_cos(0.1, 0.01)}), Recorder(), MixUp(seed=0),
                                      GradientClipping(1.0), where]).fit(2)
    assert where.seen == {("meta",) * 4}
    assert len(learn.recorder.lrs) == 6 and learn.recorder.losses == []  # meta: no values


def test_progress_bar_on_meta(monkeypatch):
    import contextlib
    import io

    from exp.progress import ProgressCallback
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        learn = Learner(nn.Sequential(nn.Linear(64, 10)), digit_dls(), device="meta", metrics=accuracy,
                        cbs=ProgressCallback(bars=True)).fit(1)
    assert next(learn.model.parameters()).is_meta


def test_mixed_precision_needs_a_real_device():
    from exp.mixed_precision import MixedPrecision
    try:
        with torch.autocast("meta"): pass
    except RuntimeError as e:
        pytest.skip(f"autocast has no meta backend ({str(e).splitlines()[0][:100]})")
    Learner(nn.Sequential(nn.Linear(64, 10)), digit_dls(), device="meta", logger=None,
            cbs=MixedPrecision()).fit(1)
