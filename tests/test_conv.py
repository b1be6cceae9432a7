"Convolution from scratch, the CNN pieces and device placement, checked against PyTorch."
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from exp.conv import (
    GeneralRelu,
    Lambda,
    conv2d_loop,
    conv2d_unfold,
    conv_layer,
    conv_output_size,
    flatten,
    get_cnn_model,
    im2col,
    init_cnn,
    to_images,
)
from exp.learner import default_device, to_device
from exp.testing import test_eq, test_near

CASES = [(1, 0, 3), (1, 1, 3), (2, 1, 3), (2, 2, 5), (3, 0, 2)]  # stride, padding, kernel size

@pytest.mark.parametrize("stride,padding,k", CASES)
@pytest.mark.parametrize("conv", [conv2d_loop, conv2d_unfold])
def test_conv_equals_torch(conv, stride, padding, k):
    torch.manual_seed(0)
    x, w, b = torch.randn(3, 4, 9, 7), torch.randn(5, 4, k, k), torch.randn(5)
    test_near(conv(x, w, b, stride, padding), F.conv2d(x, w, b, stride, padding), atol=1e-4)
    test_near(conv(x, w, None, stride, padding), F.conv2d(x, w, None, stride, padding), atol=1e-4)

@pytest.mark.parametrize("stride,padding,k", CASES)
def test_im2col_equals_unfold(stride, padding, k):
    x = torch.randn(2, 3, 8, 8)
    test_eq(im2col(x, k, stride, padding), F.unfold(x, k, padding=padding, stride=stride))

def test_conv_gradients_equal_torch():
    x, w = torch.randn(2, 3, 6, 6, requires_grad=True), torch.randn(4, 3, 3, 3, requires_grad=True)
    conv2d_unfold(x, w, None, 2, 1).pow(2).sum().backward()
    gx, gw = x.grad, w.grad
    x.grad = w.grad = None
    F.conv2d(x, w, None, 2, 1).pow(2).sum().backward()
    test_near(gx, x.grad, atol=1e-4)
    test_near(gw, w.grad, atol=1e-4)

def test_output_size():
    for size, k, s, p in [(8, 3, 2, 1), (28, 5, 2, 2), (7, 3, 1, 0)]:
        out = F.conv2d(torch.zeros(1, 1, size, size), torch.zeros(1, 1, k, k), stride=s, padding=p)
        test_eq(conv_output_size(size, k, s, p), out.shape[-1])

def test_general_relu():
    x = torch.randn(1000)
    test_eq(GeneralRelu()(x), F.relu(x))
    test_near(GeneralRelu(0.1, 0.4, 6.)(x * 10), (F.leaky_relu(x * 10, 0.1) - 0.4).clamp_max(6.))

def test_cnn_shapes_digits_and_mnist():
    model = get_cnn_model()
    test_eq(model(torch.rand(5, 64)).shape, (5, 10))
    test_eq(model(torch.rand(5, 784)).shape, (5, 10))
    test_eq(to_images(torch.rand(3, 784)).shape, (3, 1, 28, 28))
    test_eq(flatten(torch.rand(3, 2, 4)).shape, (3, 8))
    test_eq(Lambda(torch.neg)(torch.ones(2)), -torch.ones(2))

def test_conv_layer_norm_and_act_are_factories():
    layer = conv_layer(3, 8, norm=nn.BatchNorm2d, act=nn.ReLU)
    assert [type(m) for m in layer] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert layer[0].bias is None  # the norm's bias makes the conv's redundant
    assert conv_layer(3, 8, act=None)[0].bias is not None

def test_init_cnn_kaiming_std():
    torch.manual_seed(0)
    model = init_cnn(nn.Sequential(nn.Conv2d(32, 64, 3), nn.Linear(500, 300)), leak=0.)
    conv, linear = model
    test_near(conv.weight.std(), (2 / (32 * 9)) ** 0.5, rtol=0.05, atol=0)
    test_near(linear.weight.std(), (2 / 500) ** 0.5, rtol=0.05, atol=0)
    assert (conv.bias == 0).all() and (linear.bias == 0).all()

def test_default_device_and_placement(monkeypatch):
    monkeypatch.delenv("EXP_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    test_eq(default_device().type, expected)
    monkeypatch.setenv("EXP_DEVICE", "cpu")
    test_eq(default_device(), torch.device("cpu"))
    batch = to_device((torch.ones(2), [torch.zeros(1)], {"y": torch.ones(1)}))
    assert isinstance(batch, tuple) and isinstance(batch[1], list)
    assert all(t.device.type == "cpu" for t in (batch[0], batch[1][0], batch[2]["y"]))

def test_import_does_not_touch_cuda():
    import subprocess
    import sys
    code = ("import torch; calls = []; torch.Tensor.cuda = lambda *a, **k: calls.append(1); "
            "torch.nn.Module.cuda = lambda *a, **k: calls.append(1); "
            "import exp.conv, exp.norm, exp.optimizers; assert not calls, calls")
    subprocess.run([sys.executable, "-c", code], check=True)
