"Tests of exp.learner: events and their order, cancelling, metrics, errors, interruption, determinism."
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import torch.utils.data
from torch import nn

from exp.data import load_digits
from exp.learner import *  # what users do: with exp.training's names, everything a fit needs
from exp.learner import EVENTS, MetricsCallback, NonFiniteLossError, snake_case
from exp.training import *
from exp.training import Optimizer

@pytest.fixture(scope="module")
def digits():
    return load_digits()


def mlp(n_in=64, n_out=10, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, 32), nn.ReLU(), nn.Linear(32, n_out))


def tiny_dls(digits, n_train=100, n_valid=50, batch_size=50, seed=None):
    x_train, y_train, x_valid, y_valid = digits
    return DataLoaders.from_tensors(x_train[:n_train], y_train[:n_train], x_valid[:n_valid],
                                    y_valid[:n_valid], batch_size=batch_size, seed=seed)


class Events(Callback):
    "Record every event."
    def __init__(self): self.seen = []
for _event in EVENTS:
    setattr(Events, _event, lambda self, event=_event: self.seen.append(event))

BATCH = ["before_batch", "after_pred", "after_loss", "after_backward", "after_step", "after_zero_grad",
         "after_batch"]
VALID_BATCH = ["before_batch", "after_pred", "after_loss", "after_batch"]


def test_star_import_gives_what_a_fit_needs():
    for name in ["Learner", "DataLoaders", "Callback", "DataLoader", "Dataset", "cross_entropy", "accuracy",
                 "CancelFitException", "CancelEpochException", "CancelTrainException", "CancelValidException",
                 "CancelBatchException", "set_seed"]:
        assert name in globals(), name


def test_trains_digits_to_90_percent(digits):
    set_seed(1)
    learn = Learner(mlp(), DataLoaders.from_tensors(*digits, seed=1), lr=0.3, metrics=accuracy, logger=None)
    learn.fit(5)
    log = learn.metrics.log
    assert len(log) == 5 and log[-1]["valid_accuracy"] > 0.9
    assert log[-1]["train_loss"] < log[0]["train_loss"]


def test_event_order(digits):
    events = Events()
    Learner(mlp(), tiny_dls(digits), cbs=events, logger=None).fit(2)
    epoch = ["before_epoch", "before_train", *BATCH, *BATCH, "after_train",
             "before_validate", *VALID_BATCH, "after_validate", "after_epoch"]
    assert events.seen == ["before_fit", *epoch, *epoch, "after_fit", "cleanup_fit"]


def test_callbacks_run_by_order_then_insertion():
    said = []
    class Say(Callback):
        def __init__(self, word, order): self.word, self.order = word, order
        def before_fit(self): said.append(self.word)
    dls = DataLoaders.from_tensors(torch.randn(8, 4), torch.zeros(8, dtype=torch.long),
                                   torch.randn(4, 4), torch.zeros(4, dtype=torch.long))
    cbs = [Say("c", 5), Say("a", -5), Say("b1", 0), Say("b2", 0)]
    Learner(nn.Linear(4, 2), dls, logger=None, cbs=cbs).fit(1)
    assert said == ["a", "b1", "b2", "c"]


def test_callbacks_reach_the_learner_as_self_learn_and_by_name(digits):
    seen = []
    class ReadsTheLearner(Callback):
        def after_fit(self): seen.append((self.learn, self.learn.n_epochs))
    learn = Learner(mlp(), tiny_dls(digits), cbs=ReadsTheLearner(), logger=None).fit(3)
    assert seen == [(learn, 3)]
    assert learn.reads_the_learner.__class__ is ReadsTheLearner and isinstance(learn.metrics, MetricsCallback)
    with pytest.raises(AttributeError, match="no attribute or callback"): learn.not_a_callback
    names = [snake_case(n) for n in ["Recorder", "LRFinder", "EarlyStoppingCallback"]]
    assert names == ["recorder", "lr_finder", "early_stopping"]


def test_save_before_lesson_14_says_where_it_comes_from():
    "In a process that has not imported exp.checkpoint (a fresh one), `learn.save` names the import to add."
    code = ("from torch import nn; from exp.learner import Learner; from exp.training import DataLoaders\n"
            "try: Learner(nn.Linear(1, 1), DataLoaders([], [])).save\n"
            "except AttributeError as e: print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    expected = "has no attribute or callback 'save' (lesson 14 adds it: import exp.checkpoint)"
    assert expected in out.stdout, out.stderr


def test_a_misspelled_event_is_refused_when_the_callback_is_added(digits):
    class Typo(Callback):
        def after_epcoh(self): pass
    class Unknown(Callback):
        def before_everything(self): pass
    class Helper(Callback):  # a method that looks like no event is fine
        def summarise(self): pass
    with pytest.raises(ValueError, match=r"Typo.after_epcoh is not an event.*did you mean 'after_epoch'\?"):
        Learner(mlp(), tiny_dls(digits), cbs=Typo())
    with pytest.raises(ValueError, match="Unknown.before_everything is not an event.*events are before_fit"):
        Learner(mlp(), tiny_dls(digits), logger=None).add_cbs(Unknown())
    Learner(mlp(), tiny_dls(digits), cbs=Helper(), logger=None).fit(1)


def test_learner_methods_grown_over_cells_are_named_as_methods():
    "The lesson adds methods to the class cell by cell: they carry the names a traceback and the docs show."
    for name in ["fit", "add_cbs", "callback", "get_preds", "validate", "set_for_fit", "_one_batch"]:
        method = getattr(Learner, name)
        assert (method.__name__, method.__qualname__) == (name, f"Learner.{name}")
    assert isinstance(MetricsCallback.totals, property)


def test_remove_cbs_and_fit_only_cbs(digits):
    events, once = Events(), Events()
    learn = Learner(mlp(), tiny_dls(digits), cbs=events, logger=None)
    learn.fit(1, cbs=once)
    assert once.seen and once not in learn.cbs and events in learn.cbs
    learn.remove_cbs(events)
    learn.fit(1)
    assert events.seen.count("before_fit") == 1


def test_train_and_eval_modes_and_no_grad(digits):
    modes = []
    class Watch(Callback):
        def before_batch(self):
            modes.append((self.learn.training, self.learn.model.training, torch.is_grad_enabled()))
    learn = Learner(mlp(), tiny_dls(digits), cbs=Watch(), logger=None).fit(1)
    assert modes == [(True, True, True), (True, True, True), (False, False, False)]
    assert not learn.model.training


def params(model): return [p.detach().clone() for p in model.parameters()]


def same(a, b): return all(torch.equal(x, y) for x, y in zip(a, b))


def test_cancel_batch_in_after_pred_skips_the_step(digits):
    class Skip(Callback):
        def after_pred(self): raise CancelBatchException()
    events, model = Events(), mlp()
    before = params(model)
    Learner(model, tiny_dls(digits), cbs=[Skip(), events], logger=None).fit(2)
    assert same(before, params(model))
    assert "after_loss" not in events.seen and events.seen.count("after_batch") == 6  # after_batch still runs


def test_cancel_train_skips_training_but_not_validation(digits):
    class NoTraining(Callback):
        def before_train(self): raise CancelTrainException()
    events, model = Events(), mlp()
    before = params(model)
    learn = Learner(model, tiny_dls(digits), cbs=[NoTraining(), events], logger=None).fit(1)
    assert same(before, params(model)) and "after_step" not in events.seen
    assert "after_train" in events.seen and events.seen.count("after_batch") == 1  # one validation batch
    assert learn.metrics.log[-1]["valid_loss"] > 0


def test_cancel_valid_skips_validation(digits):
    class NoValid(Callback):
        def before_validate(self): raise CancelValidException()
    events = Events()
    Learner(mlp(), tiny_dls(digits), cbs=[NoValid(), events], logger=None).fit(2)
    assert events.seen.count("after_step") == 4 and events.seen.count("after_validate") == 2
    assert events.seen.count("after_batch") == 4


def test_cancel_epoch_skips_rest_of_epoch_only(digits):
    class ShortFirstEpoch(Callback):
        def after_step(self):
            if self.learn.epoch == 0: raise CancelEpochException()
    events = Events()
    Learner(mlp(), tiny_dls(digits), cbs=[events, ShortFirstEpoch()], logger=None).fit(2)
    assert events.seen.count("after_step") == 1 + 2        # one step in epoch 0, all in epoch 1
    assert events.seen.count("before_validate") == 1        # epoch 0's validation skipped
    assert events.seen.count("after_epoch") == 2 and events.seen[-2:] == ["after_fit", "cleanup_fit"]


def test_cancel_fit_stops_everything_and_after_fit_runs(digits):
    class StopNow(Callback):
        def after_step(self): raise CancelFitException()
    events = Events()
    Learner(mlp(), tiny_dls(digits), cbs=[events, StopNow()], logger=None).fit(5)
    assert events.seen.count("after_step") == 1 and events.seen.count("before_epoch") == 1
    assert events.seen[-2:] == ["after_fit", "cleanup_fit"] and "after_epoch" not in events.seen


def test_cancel_raised_in_after_event_is_swallowed_by_its_phase(digits):
    class EndInAfterEpoch(Callback):
        def after_epoch(self): raise CancelEpochException()
    class StopInAfterEpoch(Callback):
        def after_epoch(self):
            if self.learn.epoch == 1: raise CancelFitException()
    events = Events()
    Learner(mlp(), tiny_dls(digits), cbs=[events, EndInAfterEpoch()], logger=None).fit(2)
    assert events.seen.count("after_epoch") == 2
    events = Events()
    # early stopping's pattern
    Learner(mlp(), tiny_dls(digits), cbs=[events, StopInAfterEpoch()], logger=None).fit(5)
    assert events.seen.count("before_epoch") == 2 and events.seen[-2:] == ["after_fit", "cleanup_fit"]


def test_metrics_weighted_by_batch_size_with_uneven_last_batch(digits):
    x_train, y_train, x_valid, y_valid = digits
    dls = DataLoaders.from_tensors(x_train, y_train, x_valid[:250], y_valid[:250], batch_size=50)
    assert [len(b[1]) for b in dls.valid] == [100, 100, 50]
    set_seed(0)
    learn = Learner(mlp(), dls, lr=0.3, metrics=accuracy, logger=None).fit(1)
    with torch.no_grad():
        preds = learn.model(x_valid[:250])
        whole_acc = accuracy(preds, y_valid[:250]).item()
        whole_loss = cross_entropy(preds, y_valid[:250]).item()
        batch_mean = sum(accuracy(learn.model(xb), yb).item() for xb, yb in dls.valid) / 3
    row = learn.metrics.log[-1]
    assert abs(row["valid_accuracy"] - whole_acc) < 1e-6 and abs(row["valid_loss"] - whole_loss) < 1e-5
    assert abs(batch_mean - whole_acc) > 1e-4  # the plain mean of batch means is wrong here (seed 0)


def test_named_metrics_and_logger(digits):
    rows = []
    error = lambda preds, y: 1 - accuracy(preds, y)
    learn = Learner(mlp(), tiny_dls(digits), metrics={"error": error}, logger=rows.append).fit(2)
    expected = 1 - accuracy(learn.model(digits[2][:50]), digits[3][:50]).item()
    assert len(rows) == 2 and abs(rows[-1]["valid_error"] - expected) < 1e-6
    assert learn.metrics.values("valid_error") == [r["valid_error"] for r in rows]


def test_print_stats_prints_a_table(digits, capsys):
    Learner(mlp(), tiny_dls(digits), metrics=accuracy).fit(2)
    lines = capsys.readouterr().out.strip().split("\n")
    columns = ["epoch", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "time"]
    assert lines[0].split() == columns
    assert len(lines) == 3 and lines[2].split()[0] == "1"


def test_print_stats_header_starts_every_fit_also_a_resumed_one(digits, capsys):
    learn = Learner(mlp(), tiny_dls(digits), metrics=accuracy)
    learn.fit(3)
    learn.fit(3, start_epoch=1)  # carries on from epoch 1: a new table, not rows glued under the last one
    learn.fit(3, start_epoch=2)
    lines = capsys.readouterr().out.strip().split("\n")
    assert [line.split()[0] for line in lines] == ["epoch", "0", "1", "2", "epoch", "1", "2", "epoch", "2"]


def test_torch_dataloaders_and_torch_optimizers(digits):
    x_train, y_train, x_valid, y_valid = digits
    set_seed(0)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_train, y_train), 64, shuffle=True)
    valid = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_valid, y_valid), 128)
    learn = Learner(mlp(), (train, valid), loss_func=F.cross_entropy, lr=1e-2, opt_func=torch.optim.Adam,
                    metrics=accuracy, logger=None).fit(4)
    assert isinstance(learn.opt, torch.optim.Adam) and learn.metrics.log[-1]["valid_accuracy"] > 0.9


def test_our_optimizer_as_opt_func(digits):
    set_seed(0)
    learn = Learner(mlp(), DataLoaders.from_tensors(*digits, seed=0), lr=0.5, opt_func=Optimizer,
                    metrics=accuracy, logger=None).fit(6)
    assert isinstance(learn.opt, Optimizer) and learn.metrics.log[-1]["valid_accuracy"] > 0.9


def test_optimizer_kept_across_fits_and_lr(digits):
    opt_func = lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9)
    learn = Learner(mlp(), tiny_dls(digits), lr=0.1, opt_func=opt_func, logger=None)
    learn.fit(1)
    opt = learn.opt
    learn.fit(1, lr=0.01)
    assert learn.opt is opt and opt.param_groups[0]["lr"] == 0.01 and learn.lr == 0.01
    assert any(opt.state[p] for p in learn.model.parameters())  # momentum buffers carried over
    learn.fit(1, reset_opt=True)
    assert learn.opt is not opt


def test_xb_yb_are_views_of_batch(digits):
    class Double(Callback):
        def before_batch(self): self.learn.xb = self.learn.xb * 0
        def after_pred(self): assert torch.equal(self.learn.batch[0], torch.zeros_like(self.learn.batch[0]))
    model = mlp()
    learn = Learner(model, tiny_dls(digits), cbs=Double(), logger=None).fit(1)
    with torch.no_grad(): expected = model(torch.zeros(1, 64))
    assert torch.allclose(learn.preds, expected.expand_as(learn.preds))


def test_nan_loss_names_epoch_batch_and_lr(digits):
    x_train, y_train, x_valid, y_valid = digits
    bad = x_train[:200].clone()
    bad[130, 3] = float("nan")  # sits in the third training batch (no shuffle: batch_size 64 → batch 2)
    dls = DataLoaders(DataLoader(Dataset(bad, y_train[:200]), 64), DataLoader(Dataset(x_valid, y_valid), 64))
    learn = Learner(mlp(), dls, lr=0.05, logger=None)
    with pytest.raises(NonFiniteLossError, match=r"Epoch 0, training batch 2: the loss is nan") as info:
        learn.fit(3)
    assert "0.05" in str(info.value) and "inputs contain NaN" in str(info.value)
    assert learn.last_good_lr == 0.05
    assert isinstance(info.value, FloatingPointError)


def test_diverging_lr_stops_with_last_good_lr(digits):
    set_seed(0)
    learn = Learner(mlp(), DataLoaders.from_tensors(*digits, seed=0), lr=1e10, logger=None)
    match = "The last learning rate with a finite loss was 10000000000.0"
    with pytest.raises(NonFiniteLossError, match=match):
        learn.fit(2)


def test_check_loss_can_be_turned_off(digits):
    x_train, y_train, x_valid, y_valid = digits
    bad = x_train[:100].clone()
    bad[0, 0] = float("nan")
    dls = DataLoaders.from_tensors(bad, y_train[:100], x_valid[:50], y_valid[:50])
    learn = Learner(mlp(), dls, logger=None, check_loss=False)
    learn.fit(1)  # no error: the user asked for it


def test_shape_mismatch_names_batch_shape_and_layer(digits):
    x_train, y_train, x_valid, y_valid = digits
    dls = DataLoaders.from_tensors(x_train[:, :60], y_train, x_valid[:, :60], y_valid, batch_size=64)
    with pytest.raises(RuntimeError) as info:
        Learner(mlp(), dls, logger=None).fit(1)
    msg = str(info.value)
    assert "(64, 60)" in msg and "layer '0'" in msg and "expects 64 features" in msg
    assert "Epoch 0, training batch 0" in msg
    assert isinstance(info.value.__cause__, RuntimeError) and "mat1 and mat2" in msg


def test_shape_mismatch_inside_a_deeper_layer_is_named():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 7 * 7, 10))
    x, y = torch.randn(20, 1, 8, 8), torch.randint(0, 10, (20,))
    dls = DataLoaders.from_tensors(x, y, x, y, batch_size=10)
    match = r"layer '3' .* got input of shape \(10, 256\) and expects 196 features"
    with pytest.raises(RuntimeError, match=match):
        Learner(model, dls, logger=None).fit(1)
    bad_channels = DataLoaders.from_tensors(torch.randn(20, 3, 7, 7), y, x, y, batch_size=10)
    with pytest.raises(RuntimeError, match=r"\(10, 3, 7, 7\).*layer '0'.*expects 1 channels"):
        Learner(model, bad_channels, logger=None).fit(1)
    assert model[0].training is False  # the learner's cleanup left eval mode; the diagnosis changed nothing


def test_loss_shape_mismatch_names_shapes(digits):
    x_train, y_train, x_valid, y_valid = digits
    dls = DataLoaders.from_tensors(x_train, y_train, x_valid, y_valid)
    match = r"loss function failed on predictions of shape \(64, 5\) and targets of shape \(64,\)"
    with pytest.raises(IndexError, match=match):
        Learner(mlp(n_out=5), dls, logger=None, loss_func=F.cross_entropy).fit(1)


def test_callback_exception_keeps_type_and_names_callback(digits):
    class Faulty(Callback):
        def after_loss(self):
            if self.learn.iter == 1: raise ValueError("bad value")
    with pytest.raises(ValueError, match="bad value") as info:
        Learner(mlp(), tiny_dls(digits), cbs=Faulty(), logger=None).fit(1)
    note = " ".join(info.value.__notes__)
    assert "Faulty" in note and "after_loss" in note and "batch 1" in note and "epoch 0" in note


def test_keyboard_interrupt_leaves_learner_usable(digits):
    class CtrlC(Callback):
        def after_backward(self):
            if self.learn.train_iter == 3: raise KeyboardInterrupt
    cleaned = []
    class Cleanup(Callback):
        def cleanup_fit(self): cleaned.append(True)
    set_seed(0)
    once = CtrlC()
    learn = Learner(mlp(), DataLoaders.from_tensors(*digits, seed=0), lr=0.3, metrics=accuracy, cbs=Cleanup(),
                    logger=None)
    with pytest.raises(KeyboardInterrupt):
        learn.fit(3, cbs=once)
    assert cleaned == [True] and once not in learn.cbs
    assert not learn.model.training and not learn.training
    assert all(p.grad is None for p in learn.model.parameters())  # no stale gradient leaks into the next step
    learn.fit(6)
    assert learn.metrics.log[-1]["valid_accuracy"] > 0.9


def loss_curve(digits, seed):
    losses = []
    class Keep(Callback):
        def after_loss(self):
            if self.learn.training: losses.append(self.learn.loss.detach().clone())
    set_seed(seed)
    model = mlp(seed=seed)
    Learner(model, DataLoaders.from_tensors(*digits, seed=seed), lr=0.3, cbs=Keep(), logger=None).fit(2)
    return torch.stack(losses), params(model)


def test_same_seed_same_loss_curve_bit_for_bit(digits):
    (a, pa), (b, pb) = loss_curve(digits, 3), loss_curve(digits, 3)
    assert torch.equal(a, b) and same(pa, pb)
    c, _ = loss_curve(digits, 4)
    assert not torch.equal(a, c)


def test_pct_train_and_counters(digits):
    seen = []
    class Watch(Callback):
        def before_batch(self):
            learn = self.learn
            if learn.training: seen.append((learn.epoch, learn.iter, learn.n_iters, learn.pct_train))
    Learner(mlp(), tiny_dls(digits), cbs=Watch(), logger=None).fit(2)
    assert seen == [(0, 0, 2, 0.0), (0, 1, 2, 0.25), (1, 0, 2, 0.5), (1, 1, 2, 0.75)]


def test_start_epoch_counters_and_bad_values(digits):
    seen = []
    class Watch(Callback):
        def before_batch(self):
            if self.learn.training: seen.append((self.learn.epoch, self.learn.iter, self.learn.pct_train))
    learn = Learner(mlp(), tiny_dls(digits), cbs=Watch(), logger=None).fit(4, start_epoch=2)
    assert seen == [(2, 0, 0.5), (2, 1, 0.625), (3, 0, 0.75), (3, 1, 0.875)]
    assert [row["epoch"] for row in learn.metrics.log] == [2, 3]
    for bad in (-1, 5):
        with pytest.raises(ValueError, match=f"start_epoch={bad} is outside the fit's epochs 0..4"):
            learn.fit(4, start_epoch=bad)


def test_fit_from_start_epoch_carries_on_a_longer_fit(digits):
    "Epochs 2-3 of a scheduled 4-epoch fit, resumed after epoch 1, end on the whole fit's weights."
    import copy
    import functools

    from exp.schedule import ParamScheduler, sched_cos
    x_train, y_train, _, _ = digits
    dataset = torch.utils.data.TensorDataset(x_train[:200], y_train[:200])
    train = torch.utils.data.DataLoader(dataset, batch_size=50)
    opt_func = functools.partial(torch.optim.SGD, momentum=0.9)
    after_epoch_1 = {}
    class Snapshot(Callback):
        def after_epoch(self):
            if self.learn.epoch == 1: after_epoch_1.update(model=copy.deepcopy(self.learn.model.state_dict()),
                                                           opt=copy.deepcopy(self.learn.opt.state_dict()))
    whole = Learner(mlp(), DataLoaders(train), opt_func=opt_func,
                    cbs=[ParamScheduler(lr=sched_cos(0.2, 0.01)), Snapshot()], logger=None).fit(4)
    model = mlp(seed=1)
    model.load_state_dict(after_epoch_1["model"])
    rest = Learner(model, DataLoaders(train), opt_func=opt_func, cbs=ParamScheduler(lr=sched_cos(0.2, 0.01)),
                   logger=None)
    rest.create_opt().load_state_dict(after_epoch_1["opt"])
    rest.fit(4, start_epoch=2)
    for p, q in zip(whole.model.parameters(), model.parameters()): assert torch.equal(p, q)
    rest.fit(4, start_epoch=3)  # one more epoch: now they differ, so the equality above is not vacuous
    assert not all(torch.equal(p, q) for p, q in zip(whole.model.parameters(), model.parameters()))


def test_error_in_models_own_forward_names_the_last_layer():
    class Reshaper(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(64, 10)
        def forward(self, x): return self.lin(x).view(-1, 3, 3)  # 10 does not split into 3×3
    x, y = torch.randn(20, 64), torch.randint(0, 10, (20,))
    with pytest.raises(RuntimeError, match=r"\(10, 64\); the error came after layer 'lin'"):
        Learner(Reshaper(), DataLoaders.from_tensors(x, y, x, y, batch_size=10), logger=None).fit(1)


def test_get_preds_and_validate_equal_direct_computation(digits):
    x_train, y_train, x_valid, y_valid = digits
    set_seed(0)
    dls = DataLoaders.from_tensors(*digits, seed=0)
    learn = Learner(mlp(), dls, lr=0.3, metrics=accuracy, logger=None).fit(2)
    log_before = dict(learn.metrics.log[-1])
    preds, targets = learn.get_preds()
    with torch.no_grad(): direct = learn.model(x_valid)
    assert torch.allclose(preds, direct, atol=1e-6) and torch.equal(targets, y_valid)
    results = learn.validate()
    assert abs(results["accuracy"] - accuracy(direct, y_valid).item()) < 1e-7
    assert abs(results["loss"] - log_before["valid_loss"]) < 1e-5 and learn.metrics.log[-1] == log_before
    train_preds, _ = learn.get_preds(learn.dls.train)
    assert len(train_preds) == len(x_train)
    unlabeled = DataLoader(torch.utils.data.TensorDataset(x_valid[:10]), 4)
    preds, targets = learn.get_preds(unlabeled)
    assert preds.shape == (10, 10) and targets is None


# --- devices, and no host-device synchronisation per batch -----------------------------------------

SYNCING = ["item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"]


class SyncCounter:
    "Counts the tensor methods that need a value on the host (a host-device sync on a GPU) while active."
    def __init__(self, monkeypatch): self.monkeypatch, self.count, self.names = monkeypatch, 0, []

    def __enter__(self):
        for name in SYNCING:
            original = getattr(torch.Tensor, name)
            def counted(tensor, *args, _original=original, _name=name, **kwargs):
                self.count += 1
                self.names.append(_name)
                return _original(tensor, *args, **kwargs)
            self.monkeypatch.setattr(torch.Tensor, name, counted)
        return self

    def __exit__(self, *exc): self.monkeypatch.undo()


def syncs_of_a_fit(monkeypatch, digits, n_train, n_epochs=1, **kwargs):
    x_train, y_train, x_valid, y_valid = digits
    dls = DataLoaders.from_tensors(x_train[:n_train], y_train[:n_train], x_valid[:40], y_valid[:40],
                                   batch_size=20, seed=0)
    learn = Learner(mlp(), dls, lr=0.1, metrics=accuracy, **kwargs)  # the default logger prints, too
    learn.fit(0)  # the first fit builds the optimizer: count only the training
    with SyncCounter(monkeypatch) as counter: learn.fit(n_epochs)
    return counter


def test_default_fit_makes_no_sync_per_batch(monkeypatch, digits, capsys):
    small = syncs_of_a_fit(monkeypatch, digits, 200)           # 10 training batches an epoch
    large = syncs_of_a_fit(monkeypatch, digits, 800)           # 40
    assert large.count == small.count, (small.names, large.names)
    assert 0 < small.count <= 12, small.names  # a few per epoch: metrics, loss check
    two_epochs = syncs_of_a_fit(monkeypatch, digits, 800, n_epochs=2)
    assert two_epochs.count == 2 * large.count


def test_loss_check_reads_once_every_check_every_batches(monkeypatch, digits, capsys):
    class Every5(Learner): check_every = 5
    x_train, y_train, x_valid, y_valid = digits
    counts = []
    for n_train in (200, 800):
        dls = DataLoaders.from_tensors(x_train[:n_train], y_train[:n_train], x_valid[:40], y_valid[:40],
                                       batch_size=20)
        learn = Every5(mlp(), dls, logger=None)
        learn.fit(0)
        with SyncCounter(monkeypatch) as counter: learn.fit(1)
        counts.append(counter.names.count("__bool__"))
    assert counts[1] - counts[0] == (40 - 10) // 5  # one read per 5 batches, one sync per read


def test_nan_found_in_bulk_still_names_the_first_bad_batch(digits):
    x_train, y_train, x_valid, y_valid = digits
    bad = x_train[:400].clone()
    bad[5 * 20 + 3, 7] = float("nan")  # epoch 0 (no shuffle), training batch 5 of 20; NaN weights after it
    seen = []
    class Count(Callback):
        def after_batch(self): seen.append((self.learn.epoch, self.learn.iter))
    dls = DataLoaders(DataLoader(Dataset(bad, y_train[:400]), 20), DataLoader(Dataset(x_valid, y_valid), 100))
    class Learner7(Learner): check_every = 7
    learn = Learner7(mlp(), dls, lr=0.05, cbs=Count(), logger=None)
    with pytest.raises(NonFiniteLossError, match=r"^Epoch 0, training batch 5: the loss is nan; .* 0\.05\. "
                                                 r"The batch's inputs contain NaN"):
        learn.fit(2)
    assert seen[-1] == (0, 5)  # read at batch 6's loss (7th record), before its step
    dls = DataLoaders.from_tensors(x_train[:100], y_train[:100], x_valid, y_valid)
    learn = Learner(mlp(), dls, lr=1e10, logger=None)
    with pytest.raises(NonFiniteLossError, match="Try a lower learning rate"): learn.fit(3)


def test_learner_device_default_and_explicit(monkeypatch, digits):
    monkeypatch.delenv("EXP_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert default_device().type == expected and Learner(mlp(), tiny_dls(digits)).device.type == expected
    assert Learner(mlp(), tiny_dls(digits), device="cpu").device == torch.device("cpu")
    monkeypatch.setenv("EXP_DEVICE", "meta")
    assert Learner(mlp(), tiny_dls(digits)).device == torch.device("meta")
    x = torch.ones(3)
    moved = to_device((x, [x], {"y": x}), torch.device("cpu"), non_blocking=True)
    assert moved[0] is x and moved[1][0] is x and moved[2]["y"] is x  # already there: not copied


def test_fit_moves_model_and_batches_to_the_learners_device(digits):
    "A default fit on `meta` (no values, device checks as strict as CUDA's): nothing on the wrong device."
    seen = []
    class Where(Callback):
        def before_batch(self): seen.append((self.learn.xb.device.type, self.learn.yb.device.type))
    model = mlp()
    learn = Learner(model, tiny_dls(digits), device="meta", metrics=accuracy, cbs=Where(), logger=None).fit(1)
    assert next(model.parameters()).is_meta and set(seen) == {("meta", "meta")} and len(seen) == 3
    assert learn.opt.param_groups[0]["params"][0].is_meta
    preds, targets = learn.get_preds()
    assert preds.is_meta and targets.is_meta and preds.shape == (50, 10)


def test_metrics_held_back_equal_per_batch_metrics():
    "Held-back batches are computed on their concatenation, one run of a shape at a time: the same sums."
    torch.manual_seed(0)
    class Fake: pass
    learn, cb = Fake(), MetricsCallback(accuracy)
    cb.learn, cb.every = learn, 4
    cb._start_epoch(0)
    expected, count = 0., 0
    shapes = [(8, 10), (8, 10), (5, 10), (8, 3), (8, 3), (8, 10), (8, 10), (8, 10), (8, 10), (2, 10)]
    for phase_training, shape in zip([True] * 7 + [False] * 3, shapes):
        learn.training, learn.preds = phase_training, torch.randn(shape)
        learn.batch = (torch.randn(shape[0], 4), torch.randint(0, shape[1], (shape[0],)))
        learn.yb, learn.loss = learn.batch[1], torch.tensor(1.0)
        cb.after_loss()
        if phase_training:
            expected += accuracy(learn.preds, learn.yb).item() * shape[0]
            count += shape[0]
    assert len(cb.pending) < cb.every and cb.counts == {"train": count, "valid": 18}
    assert abs(float(cb.totals["train"]["accuracy"]) - expected) < 1e-5 and cb.pending == []
    assert float(cb.totals["train"]["loss"]) == count


def test_nan_inputs_of_a_large_batch_are_found_from_their_sum(monkeypatch, digits):
    "Batches too large to hold by reference are summed on the device: the sum is NaN too."
    from exp.learner import LossCheck
    monkeypatch.setattr(LossCheck, "max_held", 0)
    x_train, y_train, x_valid, y_valid = digits
    bad = x_train[:200].clone()
    bad[130, 3] = float("inf")
    dls = DataLoaders(DataLoader(Dataset(bad, y_train[:200]), 64), DataLoader(Dataset(x_valid, y_valid), 64))
    with pytest.raises(NonFiniteLossError, match=r"Epoch 0, training batch 2: .*inputs contain NaN or inf"):
        Learner(mlp(), dls, lr=0.05, logger=None).fit(1)


def test_to_device_pins_and_copies_without_blocking_to_cuda(monkeypatch):
    "CPU to CUDA goes through pinned memory with non_blocking=True (calls recorded, not run: no GPU here)."
    calls = []
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self, *a: False)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a: calls.append("pin") or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: calls.append((str(a[0]), k)) or self)
    to_device((torch.ones(2), {"y": torch.ones(1)}), torch.device("cuda"), non_blocking=True)
    assert calls == ["pin", ("cuda", {"non_blocking": True})] * 2
    calls.clear()
    to_device(torch.ones(2), torch.device("cuda"))  # a blocking copy needs no pinning
    assert calls == [("cuda", {"non_blocking": False})]
