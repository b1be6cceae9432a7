"LSUV initialisation: every block ends with mean 0 and std 1 on the batch, measured independently."
from functools import partial

import torch
from torch import nn

from exp.conv import GeneralRelu, get_cnn_model
from exp.lsuv import lsuv_blocks, lsuv_init

def test_lsuv_gives_unit_variance_zero_mean_blocks():
    torch.manual_seed(0)
    model = get_cnn_model((8, 16, 16), act=partial(GeneralRelu, leak=0.1, sub=0.4))
    xb = torch.rand(64, 64)
    lsuv_init(model, xb)
    outputs = []
    handles = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in lsuv_blocks(model)]
    with torch.no_grad(): model(xb)
    for h in handles: h.remove()
    assert len(outputs) == 3
    for out in outputs:
        assert abs(out.mean().item()) < 1e-3 and abs(out.std().item() - 1) < 1e-3
    assert all(len(m._forward_hooks) == 0 for m in model.modules())

def test_lsuv_without_general_relu_fixes_std_only():
    torch.manual_seed(0)
    model = get_cnn_model((8, 16), act=nn.ReLU)
    stats = lsuv_init(model, torch.rand(32, 64))
    assert all(abs(std - 1) < 1e-3 for _, std in stats)
    assert model.training
