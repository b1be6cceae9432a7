"""Label smoothing equals PyTorch's; mixup's loss is the blended target's loss, the plain loss at λ = 1."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from exp.mixup import LabelSmoothingCrossEntropy, draw_lambda, mixup_batch, mixup_loss

torch.manual_seed(0)
LOGITS, TARGET = torch.randn(32, 7) * 4, torch.randint(0, 7, (32,))


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.1, 0.5])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_label_smoothing_equals_torch(eps, reduction):
    ours = LabelSmoothingCrossEntropy(eps, reduction)(LOGITS, TARGET)
    theirs = F.cross_entropy(LOGITS, TARGET, label_smoothing=eps, reduction=reduction)
    torch.testing.assert_close(ours, theirs)


def test_label_smoothing_gradients_equal_torch():
    a, b = LOGITS.clone().requires_grad_(), LOGITS.clone().requires_grad_()
    LabelSmoothingCrossEntropy(0.1)(a, TARGET).backward()
    F.cross_entropy(b, TARGET, label_smoothing=0.1).backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_mixup_at_lambda_one_is_plain():
    perm = torch.randperm(32)
    assert torch.equal(mixup_batch(LOGITS, 1.0, perm), LOGITS)
    torch.testing.assert_close(mixup_loss(F.cross_entropy, LOGITS, TARGET, TARGET[perm], 1.0),
                               F.cross_entropy(LOGITS, TARGET))


def test_mixup_loss_is_blended_target_loss():
    perm = torch.randperm(32)
    soft = 0.6 * F.one_hot(TARGET, 7).float() + 0.4 * F.one_hot(TARGET[perm], 7).float()
    torch.testing.assert_close(mixup_loss(F.cross_entropy, LOGITS, TARGET, TARGET[perm], 0.6),
                               F.cross_entropy(LOGITS, soft))
    x = torch.rand(32, 1, 8, 8)
    torch.testing.assert_close(mixup_batch(x, 0.6, perm), 0.6 * x + 0.4 * x[perm])


def test_lambda_is_folded_beta_and_seeded():
    lams = [draw_lambda(0.4, np.random.default_rng(1)) for _ in range(3)]
    assert lams[0] == lams[1] == lams[2]
    rng = np.random.default_rng(0)
    draws = np.array([draw_lambda(0.4, rng) for _ in range(5000)])
    assert draws.min() >= 0.5 and draws.max() <= 1.0
    ref = np.random.default_rng(1).beta(0.4, 0.4, 20000)
    assert abs(draws.mean() - np.maximum(ref, 1 - ref).mean()) < 0.01
