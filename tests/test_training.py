"Tests of exp.training: the loss functions, the optimizer and the data pipeline, against PyTorch."
import math

import pytest
import torch
import torch.nn.functional as F
import torch.utils.data
from torch import nn

from exp.training import (
    DataLoader,
    Dataset,
    DummyModule,
    Optimizer,
    Sampler,
    accuracy,
    collate,
    cross_entropy,
    fit,
    log_softmax,
    logsumexp,
    nll,
    set_seed,
)

def logits(scale=1.0, n=64, c=10, seed=0):
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed)) * scale


def targets(n=64, c=10, seed=1):
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_cross_entropy_equals_torch(scale):
    x, y = logits(scale), targets()
    ours, theirs = cross_entropy(x, y), F.cross_entropy(x, y)
    assert torch.isfinite(ours)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-6), (ours, theirs)


def test_cross_entropy_extreme_logits_exact():
    x = torch.tensor([[1e4, 0., -1e4], [-1e4, 1e4, 0.], [0., -1e4, 1e4]])
    y = torch.tensor([0, 0, 2])
    assert torch.allclose(cross_entropy(x, y), F.cross_entropy(x, y), atol=1e-6, rtol=1e-6)
    assert torch.equal(log_softmax(x), F.log_softmax(x, -1))


def test_log_softmax_and_logsumexp_equal_torch():
    x = logits(5.0)
    assert torch.allclose(logsumexp(x), torch.logsumexp(x, -1), atol=1e-5)
    assert torch.allclose(log_softmax(x), F.log_softmax(x, -1), atol=1e-5)
    neg_inf = torch.full((1, 4), -math.inf)  # a row of -inf: no NaN from inf - inf
    assert torch.equal(logsumexp(neg_inf), torch.logsumexp(neg_inf, -1))


def test_cross_entropy_gradient_equals_torch():
    x, y = logits(3.0).requires_grad_(), targets()
    cross_entropy(x, y).backward()
    ours = x.grad.clone()
    x.grad = None
    F.cross_entropy(x, y).backward()
    assert torch.allclose(ours, x.grad, atol=1e-7)


def test_nll_and_accuracy():
    lp, y = F.log_softmax(logits(), -1), targets()
    assert torch.allclose(nll(lp, y), F.nll_loss(lp, y), atol=1e-6)
    preds = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert accuracy(preds, torch.tensor([1, 0, 0, 0])).item() == 0.75


def test_optimizer_step_equals_torch_sgd():
    def run(opt_class):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        opt = opt_class(net.parameters(), lr=0.3)
        for _ in range(3):
            cross_entropy(net(logits(n=32, c=8)), targets(32, 3)).backward()
            opt.step()
            opt.zero_grad()
        return [p.detach() for p in net.parameters()]
    for ours, theirs in zip(run(Optimizer), run(torch.optim.SGD)):
        assert torch.allclose(ours, theirs, atol=1e-6)


def test_optimizer_lr_in_param_groups_is_used():
    p = nn.Parameter(torch.ones(3))
    opt = Optimizer([p], lr=1.0)
    opt.param_groups[0]["lr"] = 0.5
    p.grad = torch.ones(3)
    opt.step()
    assert torch.equal(p.detach(), torch.full((3,), 0.5))
    opt.zero_grad()
    assert p.grad is None


def test_dummy_module_registers_parameters():
    dummy = DummyModule(5, 7, 2)
    ref = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 2))
    assert [p.shape for p in dummy.parameters()] == [p.shape for p in ref.parameters()]
    assert dummy(torch.randn(4, 5)).shape == (4, 2)


def data(n=103, d=3):
    x = torch.arange(n * d, dtype=torch.float32).reshape(n, d)
    return x, torch.arange(n)


def test_dataloader_batches_equal_manual_indexing():
    x, y = data()
    dl = DataLoader(Dataset(x, y), batch_size=10)
    batches = list(dl)
    assert len(batches) == len(dl) == 11
    for i, (xb, yb) in enumerate(batches):
        assert torch.equal(xb, x[i * 10:(i + 1) * 10]) and torch.equal(yb, y[i * 10:(i + 1) * 10])
    assert len(batches[-1][1]) == 3
    dropped = list(DataLoader(Dataset(x, y), batch_size=10, drop_last=True))
    assert len(dropped) == 10 and all(len(b[1]) == 10 for b in dropped)


def test_dataloader_uses_batched_indexing_for_tensors():
    calls = []
    class Counting(Dataset):
        indexes_in_batches = True  # opting in: this __getitem__ accepts a tensor of indices
        def __getitem__(self, i):
            calls.append(i)
            return super().__getitem__(i)
    x, y = data()
    list(DataLoader(Counting(x, y), batch_size=10))
    assert len(calls) == 11 and all(isinstance(c, torch.Tensor) for c in calls)
    assert DataLoader(torch.utils.data.TensorDataset(x, y), 10).batched


def test_dataloader_matches_torch_dataloader():
    x, y = data()
    ds = Dataset(x, y)
    for ours, theirs in zip(DataLoader(ds, 16), torch.utils.data.DataLoader(ds, 16)):
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    sampler_a, sampler_b = Sampler(len(ds), shuffle=True, seed=5), Sampler(len(ds), shuffle=True, seed=5)
    for ours, theirs in zip(DataLoader(ds, 16, sampler=sampler_a),
                            torch.utils.data.DataLoader(ds, 16, sampler=sampler_b)):
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def test_dataloader_on_any_map_style_dataset():
    class Pairs(torch.utils.data.Dataset):
        def __len__(self): return 7
        def __getitem__(self, i): return {"x": torch.tensor([i, i]), "n": i}, float(i) / 2
    batches = list(DataLoader(Pairs(), batch_size=3))
    assert len(batches) == 3
    first, second = batches[0]
    assert torch.equal(first["x"], torch.tensor([[0, 0], [1, 1], [2, 2]])) and torch.equal(first["n"],
                       torch.tensor([0, 1, 2]))
    assert torch.equal(second, torch.tensor([0., 0.5, 1.0]))
    # a custom collate is honoured (and forces the per-item path)
    x, y = data(10)
    batch = next(iter(DataLoader(Dataset(x, y), 4, collate=lambda items: len(items))))
    assert batch == 4


def test_collate_stacks_like_torch_default_collate():
    items = [(torch.randn(3), torch.tensor(i)) for i in range(5)]
    ours, theirs = collate(items), torch.utils.data.default_collate(items)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_sampler_sequential_and_seeded_shuffle():
    assert list(Sampler(6)) == list(range(6))
    a, b = Sampler(50, shuffle=True, seed=3), Sampler(50, shuffle=True, seed=3)
    first_a, first_b = list(a), list(b)
    assert first_a == first_b and sorted(first_a) == list(range(50)) and first_a != list(range(50))
    assert list(a) == list(b) and list(a) != first_a  # a new order each epoch, still reproducible
    assert list(Sampler(50, shuffle=True, seed=4)) != first_a


def test_unseeded_shuffle_follows_torch_manual_seed():
    torch.manual_seed(11)
    one = list(Sampler(30, shuffle=True))
    torch.manual_seed(11)
    two = list(Sampler(30, shuffle=True))
    assert one == two


def test_seeded_dataloader_reproducible():
    x, y = data()
    def epochs(seed):
        dl = DataLoader(Dataset(x, y), 16, shuffle=True, seed=seed)
        return [torch.cat([yb for _, yb in dl]) for _ in range(3)]
    one, two = epochs(9), epochs(9)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    assert not torch.equal(one[0], one[1])
    assert torch.equal(one[0].sort().values, y)


def test_fit_learns_a_separable_problem(capsys):
    set_seed(0)
    x = torch.randn(400, 2)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    train = DataLoader(Dataset(x[:300], y[:300]), 32, shuffle=True, seed=0)
    valid = DataLoader(Dataset(x[300:], y[300:]), 64)
    loss, acc = fit(5, model, cross_entropy, Optimizer(model.parameters(), lr=0.5), train, valid)
    assert acc > 0.9 and "valid accuracy" in capsys.readouterr().out


def test_dataset_subclass_with_per_item_getitem_gets_per_item_path():
    class Noisy(Dataset):
        def __getitem__(self, i):
            assert isinstance(i, int), "per-item transforms expect one index"
            return self.x[i] * 2, self.y[i]
    x, y = data(20)
    dl = DataLoader(Noisy(x, y), 8)
    assert not dl.batched
    xb, yb = next(iter(dl))
    assert torch.equal(xb, x[:8] * 2) and torch.equal(yb, y[:8])
