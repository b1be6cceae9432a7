"""Transfer learning: cutting a body, new heads, freezing, discriminative learning rates, the gain."""
import copy

import pytest
import torch
from torch import nn

from exp.data import load_digits
from exp.learner import Learner
from exp.optimizers import AdamW
from exp.param_groups import NORM_TYPES
from exp.resnet import xresnet_small
from exp.schedule import ParamScheduler, Recorder, one_cycle
from exp.testing import test_near
from exp.training import DataLoader, DataLoaders, Dataset, accuracy
from exp.transfer import (
    count_parameters,
    cut_model,
    discriminative_groups,
    discriminative_one_cycle,
    few_per_class,
    fine_tune,
    freeze,
    head_start,
    new_head,
    output_shape,
    take_classes,
    transfer_model,
    unfreeze,
    with_discriminative_lrs,
)

@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    "Tiny convolutions: one thread for these tests only (the fixture is in conftest.py)."


def pretrained_model(seed=0, image_size=8):
    torch.manual_seed(seed)
    return xresnet_small(image_size=image_size, n_out=5)


def one_step(model, opt, x, y):
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad()


XB, YB = torch.randn(8, 1, 8, 8), torch.arange(8) % 5


# --- cutting and new heads ---

def test_head_starts_at_the_pooling_layer():
    model = pretrained_model()
    start = head_start(model)
    assert isinstance(model[start], nn.AdaptiveAvgPool2d)
    body = cut_model(model)
    assert type(body) is nn.Sequential and len(body) == start
    assert all(a is b for a, b in zip(body, list(model.children())[:start]))  # shared, not copied
    assert len(cut_model(model, 5)) == 5 and len(cut_model(model, -4)) == start


def test_transfer_model_copies_the_body_and_sizes_the_head():
    model = pretrained_model()
    new = transfer_model(model, 7, XB)
    test_near(new.body.eval()(XB), cut_model(model).eval()(XB))  # the same weights and statistics...
    assert new.eval()(XB).shape == (8, 7)
    assert new.head[-1].in_features == 64 and isinstance(new.head[0], nn.AdaptiveAvgPool2d)
    assert new.body[0][0].weight is not model[0][0].weight  # ...copied
    flat = transfer_model(model, 3, XB, cut=5, pool=False)
    assert flat.head[-1].in_features == 32 * 4 * 4 and flat(XB).shape == (8, 3)  # stage 2 gives 32 × 4 × 4
    big = transfer_model(pretrained_model(image_size=28), 2, torch.randn(2, 1, 28, 28), cut=5, pool=False)
    assert big.head[-1].in_features == 32 * 7 * 7


def test_new_head_shapes():
    assert new_head(64, 7)(torch.randn(2, 64, 3, 3)).shape == (2, 7)
    assert new_head(64 * 9, 7, pool=False)(torch.randn(2, 64, 3, 3)).shape == (2, 7)
    assert new_head(10, 1)(torch.randn(3, 10, 1, 1)).shape == (3, 1)


@pytest.mark.parametrize("n_classes", [0, -1, 2.5, True, None])
def test_new_head_rejects_a_bad_class_count(n_classes):
    with pytest.raises(ValueError, match=f"n_classes to be an integer >= 1, got {n_classes!r}"):
        new_head(64, n_classes)
    with pytest.raises(ValueError, match="n_classes"):
        transfer_model(pretrained_model(), n_classes, XB)


def test_new_head_rejects_bad_features():
    with pytest.raises(ValueError, match="n_features to be an integer >= 1, got 0"):
        new_head(0, 3)


def test_no_recognisable_head():
    with pytest.raises(ValueError, match=r"no recognisable head.*\(Linear, ReLU, Linear\).*pass cut=N"):
        cut_model(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    assert len(cut_model(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), cut=2)) == 2


def test_cut_model_errors():
    class NotSequential(nn.Module):
        def forward(self, x): return x
    with pytest.raises(TypeError, match="needs an nn.Sequential.*got NotSequential"):
        cut_model(NotSequential())
    model = pretrained_model()
    for cut in (0, 10, 11, -10):
        with pytest.raises(ValueError, match=f"cut={cut} keeps .* of the model's 10 top-level layers.*1..9"):
            cut_model(model, cut)
    with pytest.raises(TypeError, match="cut must be an integer"):
        cut_model(model, 2.0)
    with pytest.raises(ValueError, match=r"shape \(64,\) per item.*use pool=False"):
        transfer_model(model, 3, XB, cut=8)   # after the flatten: nothing to pool


def test_output_shape_keeps_every_mode():
    model = pretrained_model().train()
    model[1].eval()
    assert output_shape(model, XB) == (5,)
    assert model.training and not model[1].training and model[2].training


# --- freezing ---

@pytest.mark.parametrize("opt_func", [AdamW, torch.optim.AdamW])
@pytest.mark.parametrize("train_bn", [True, False])
def test_freezing_stops_updates(opt_func, train_bn):
    "Weight decay moves any parameter that is stepped, even at zero gradient; frozen ones don't."
    model = transfer_model(pretrained_model(), 5, XB)
    with torch.no_grad():  # as if trained: no zero γ or zero bias that a step would leave at zero anyway
        for p in model.parameters(): p.add_(0.1 * torch.randn_like(p))
    freeze(model.body, train_bn=train_bn)
    before = copy.deepcopy(model.state_dict())
    one_step(model, opt_func(model.parameters(), lr=1e-2, weight_decay=0.1), XB, YB)
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    norm = {name for name, _ in model.named_parameters()
            if isinstance(model.get_submodule(name.rsplit(".", 1)[0]), NORM_TYPES)}
    head = {name for name, _ in model.named_parameters() if name.startswith("head.")}
    body_norm = {n for n in norm if n.startswith("body.")}
    assert moved == head | (body_norm if train_bn else set())
    after = model.state_dict()
    assert all(not torch.equal(after[n], before[n]) for n in before if n.endswith("running_mean"))


def test_unfreeze_and_counts():
    model = transfer_model(pretrained_model(), 5, XB)
    total = count_parameters(model)
    freeze(model.body, train_bn=False)
    assert count_parameters(model, trainable=True) == 64 * 5 + 5
    freeze(model.body)
    bn = sum(p.numel() for m in model.body.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert count_parameters(model, trainable=True) == 64 * 5 + 5 + bn
    unfreeze(model.body)
    assert count_parameters(model, trainable=True) == total
    with pytest.raises(TypeError, match="freeze needs an nn.Module, got list"):
        freeze([1, 2])


def test_freeze_drops_stale_gradients():
    model = transfer_model(pretrained_model(), 5, XB)
    nn.functional.cross_entropy(model(XB), YB).backward()
    freeze(model.body, train_bn=False)
    assert all(p.grad is None for p in model.body.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


# --- discriminative learning rates ---

def test_groups_get_the_learning_rates_asked_for():
    model = transfer_model(pretrained_model(), 5, XB)
    groups = discriminative_groups([model.body, model.head], [1e-4, 1e-2])
    assert [g["lr"] for g in groups] == [1e-4, 1e-2]
    assert [len(g["params"]) for g in groups] == [len(list(model.body.parameters())), 2]
    for opt_func in (AdamW, torch.optim.AdamW):
        make = with_discriminative_lrs(opt_func, [model.body, model.head], [1e-4, 1e-2])
        opt = make(model.parameters(), lr=0.5)
        assert [g["lr"] for g in opt.param_groups] == [1e-4, 1e-2]  # the Learner's lr does not override them


def test_learner_schedules_each_group_and_matches_torch():
    "Through the Learner, one-cycle per group: our AdamW equals PyTorch's; each group's lr is its schedule."
    x, y = torch.randn(32, 1, 8, 8), torch.arange(32) % 5
    lrs, results = [1e-3, 1e-2], []
    for opt_func in (AdamW, torch.optim.AdamW):
        model = transfer_model(pretrained_model(), 5, x)
        dls = DataLoaders.from_tensors(x, y, x, y, batch_size=16, seed=0)
        scheds = discriminative_one_cycle(lrs)
        grouped = with_discriminative_lrs(opt_func, [model.body, model.head], lrs)
        learn = Learner(model, dls, lr=lrs[-1], opt_func=grouped,
                        cbs=[ParamScheduler(scheds), Recorder("lr")], logger=None).fit(2)
        results.append(learn)
    ours, theirs = results
    for p, q in zip(ours.model.parameters(), theirs.model.parameters()): test_near(p, q, atol=1e-5, rtol=1e-5)
    expected = [[s(i / 4) for s in scheds["lr"]] for i in range(4)]
    test_near(torch.tensor(ours.recorder.hypers["lr"]), torch.tensor(expected))
    test_near(torch.tensor(ours.recorder.hypers["lr"])[:, 1] / torch.tensor(ours.recorder.hypers["lr"])[:, 0],
              torch.full((4,), 10.))


def test_discriminative_errors():
    model = transfer_model(pretrained_model(), 5, XB)
    with pytest.raises(ValueError, match="2 parts but 1 learning rates"):
        discriminative_groups([model.body, model.head], [1e-3])
    with pytest.raises(ValueError, match=r"must be numbers > 0, got \[0.0, 0.01\]"):
        discriminative_groups([model.body, model.head], [0.0, 1e-2])
    with pytest.raises(ValueError, match="part 1 shares parameters with an earlier part"):
        discriminative_groups([model, model.head], [1e-3, 1e-2])
    with pytest.raises(ValueError, match="part 0 has no parameters"):
        discriminative_groups([nn.ReLU()], [1e-3])
    make = with_discriminative_lrs(AdamW, [model.head], [1e-2])
    n_body = len(list(model.body.parameters()))
    with pytest.raises(ValueError, match=f"{n_body} of the model's parameter tensors are in none of the 1"):
        make(model.parameters(), lr=1e-2)


def test_fine_tune_head_phase_trains_only_the_head():
    "With `epochs=0`, fine_tune is just the head phase: the body is bit-identical afterwards, and trainable."
    x, y = torch.randn(32, 1, 8, 8), torch.arange(32) % 5
    model = transfer_model(pretrained_model(), 5, x)
    before = copy.deepcopy(model.state_dict())
    dls = DataLoaders.from_tensors(x, y, x, y, batch_size=16, seed=0)
    head_learn, learn = fine_tune(model, dls, 0, 1e-2, freeze_epochs=2, train_bn=False, logger=None)
    assert len(head_learn.metrics.log) == 2 and len(learn.metrics.log) == 0
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != name.startswith("head."), name
        assert p.requires_grad
    assert [g["lr"] for g in learn.opt.param_groups] == [1e-2 / 3, 1e-2]


def test_fine_tune_needs_body_and_head():
    dls = DataLoaders.from_tensors(XB, YB, XB, YB, batch_size=4)
    with pytest.raises(TypeError, match="needs a model with .body and .head.*this XResNet has no .body"):
        fine_tune(pretrained_model(), dls, 1, 1e-2)


# --- few-label tasks ---

def test_take_classes_relabels():
    x, y = torch.arange(10.).view(10, 1), torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    xs, ys = take_classes(x, y, [7, 5])
    assert xs.flatten().tolist() == [5., 7.] and ys.tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"no items with label\(s\) \[12\]; the labels present are \[0, 1"):
        take_classes(x, y, [5, 12])
    with pytest.raises(ValueError, match="at least one class"):
        take_classes(x, y, [])


def test_few_per_class():
    y = torch.tensor([0] * 5 + [1] * 7 + [2] * 3)
    chosen, rest = few_per_class(y, 3, seed=1)
    assert torch.bincount(y[chosen]).tolist() == [3, 3, 3]
    assert sorted(torch.cat([chosen, rest]).tolist()) == list(range(len(y)))
    assert torch.equal(few_per_class(y, 3, seed=1)[0], chosen)
    assert not torch.equal(few_per_class(y, 3, seed=2)[0], chosen)
    with pytest.raises(ValueError, match="label 2 has only 3 items, fewer than n_per_class=4"):
        few_per_class(y, 4)
    with pytest.raises(ValueError, match="n_per_class must be an integer >= 1, got 0"):
        few_per_class(y, 0)


# --- the lesson's claim, on a label draw the lesson does not use ---

def transfer_experiment(seeds, n_per_class=3, epochs=30, freeze_epochs=10, cut=5):
    "The lesson's run on the digits, pretrained once: `[(fine-tuned, same model from scratch)]` per seed."
    x_train, y_train, x_valid, y_valid = load_digits()
    mean, std = x_train.mean(), x_train.std()
    def prepare(x): return ((x - mean) / std).view(-1, 1, 8, 8)
    xs, ys = take_classes(x_train, y_train, range(5))
    xsv, ysv = take_classes(x_valid, y_valid, range(5))
    xt, yt = take_classes(x_train, y_train, range(5, 10))
    xtv, ytv = take_classes(x_valid, y_valid, range(5, 10))
    def fit(model, dls, n_epochs, lr):
        learn = Learner(model, dls, lr=lr, opt_func=AdamW, metrics=accuracy, logger=None,
                        cbs=[ParamScheduler(one_cycle(lr))])
        return learn.fit(n_epochs)
    pretrained = pretrained_model(100)
    source = DataLoaders.from_tensors(prepare(xs), ys, prepare(xsv), ysv, batch_size=64, seed=0)
    fit(pretrained, source, 8, 1e-2)
    results = []
    for seed in seeds:
        chosen, rest = few_per_class(yt, n_per_class, seed=seed)
        x_few, y_few = prepare(xt[chosen]), yt[chosen]
        evaluation = DataLoader(Dataset(prepare(torch.cat([xt[rest], xtv])), torch.cat([yt[rest], ytv])), 512)
        def loaders(x=x_few, y=y_few, seed=seed):  # no validation: measured once, after training
            return DataLoaders(DataLoader(Dataset(x, y), 16, shuffle=True, seed=seed))
        torch.manual_seed(seed)
        tuned = transfer_model(pretrained, 5, x_few, cut=cut, pool=False)
        _, learn = fine_tune(tuned, loaders(), epochs - freeze_epochs, 1e-2, freeze_epochs=freeze_epochs,
                             head_lr=3e-2, metrics=accuracy, logger=None)
        torch.manual_seed(seed)
        scratch_model = transfer_model(xresnet_small(image_size=8, n_out=5), 5, x_few, cut=cut, pool=False)
        scratch = fit(scratch_model, loaders(), epochs, 1e-2)
        results.append((learn.validate(evaluation)["accuracy"], scratch.validate(evaluation)["accuracy"]))
    return results


MARGIN = 0.02  # the lesson's MARGIN


@pytest.mark.slow
def test_fine_tuning_beats_scratch_on_other_label_draws():
    "Label draws the lesson does not use (it uses 0 to 7): fine-tuning wins on average, and on most draws."
    results = transfer_experiment(seeds=range(8, 12))
    gains = [tuned - scratch for tuned, scratch in results]
    assert sum(gains) / len(gains) >= MARGIN, results
    assert sum(g > 0 for g in gains) >= 3, results
