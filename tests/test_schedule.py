"Schedules, ParamScheduler, Recorder, LR finder, early stopping and save-best, against torch's schedulers."
import math
from functools import partial

import pytest
import torch
import torch.nn as nn

from exp.learner import Callback, Learner
from exp.schedule import (
    EarlyStopping,
    MonitorCallback,
    ParamScheduler,
    Recorder,
    SaveBestModel,
    combine_scheds,
    lr_find,
    one_cycle,
    sched_cos,
    sched_exp,
    sched_lin,
    sched_no,
    smooth,
)
from exp.testing import test_eq, test_near
from exp.training import DataLoaders

def torch_lrs(make_scheduler, n_steps, lr=0.5):
    "The lr a torch scheduler sets at each of `n_steps` steps."
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler, lrs = make_scheduler(opt), []
    for _ in range(n_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return lrs


# --- schedule functions ---------------------------------------------------------------------------

@pytest.mark.parametrize("maker", [sched_lin, sched_cos, sched_exp])
def test_schedules_start_and_end(maker):
    f = maker(0.5, 0.002)
    assert f(0) == pytest.approx(0.5) and f(1) == pytest.approx(0.002)

def test_schedule_middles():
    assert sched_lin(1, 3)(0.5) == pytest.approx(2)
    assert sched_cos(1, 3)(0.5) == pytest.approx(2)      # the cosine's midpoint is the mean
    assert sched_cos(1, 3)(0.25) == pytest.approx(1 + (1 - math.cos(math.pi / 4)))  # slow start
    assert sched_exp(1, 100)(0.5) == pytest.approx(10)   # geometric mean
    assert sched_no(7, 1)(0.3) == 7

def test_cosine_equals_torch():
    T = 16
    ours = [sched_cos(0.5, 0.01)(t / T) for t in range(T + 1)]
    cosine = lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=T, eta_min=0.01)
    test_near(ours, torch_lrs(cosine, T + 1))

def test_linear_and_exponential_equal_torch():
    T = 10
    test_near([sched_lin(0.05, 0.5)(t / T) for t in range(T + 1)],
              torch_lrs(lambda o: torch.optim.lr_scheduler.LinearLR(o, 0.1, 1.0, total_iters=T), T + 1))
    test_near([sched_exp(0.5, 0.5 * 0.8 ** T)(t / T) for t in range(T + 1)],
              torch_lrs(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.8), T + 1))

def test_combine_scheds_boundaries():
    f = combine_scheds([0.25, 0.5, 0.25], [sched_lin(0, 1), sched_no(5), sched_lin(1, 0)])
    assert f(0) == 0 and f(0.125) == pytest.approx(0.5)
    assert f(0.25) == 5 and f(0.5) == 5          # at a boundary the later phase starts
    assert f(0.75) == pytest.approx(1) and f(0.875) == pytest.approx(0.5) and f(1) == pytest.approx(0)
    assert f(0.2499999) == pytest.approx(1, abs=1e-5)

def test_combine_scheds_rejects_bad_fractions():
    with pytest.raises(ValueError, match="add up to 1"):
        combine_scheds([0.5, 0.6], [sched_no(1), sched_no(2)])
    with pytest.raises(ValueError, match="fractions for"): combine_scheds([1.0], [sched_no(1), sched_no(2)])

def test_one_cycle_shape():
    s = one_cycle(1.0, pct_start=0.3, div=10, div_final=1000)
    assert [s["lr"](0), s["lr"](0.3), s["lr"](1)] == pytest.approx([0.1, 1, 1e-3])
    assert [s["mom"](0), s["mom"](0.3), s["mom"](1)] == pytest.approx([0.95, 0.85, 0.95])
    lrs = [s["lr"](p / 100) for p in range(101)]
    peak = max(range(101), key=lambda i: lrs[i])
    assert peak == 30
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))   # rises, then falls
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))

def test_one_cycle_equals_torch_one_cycle_lr():
    T, pct = 40, 0.3
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2.0, total_steps=T, pct_start=pct)
    expected = []
    for _ in range(T):
        expected.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]))
        opt.step()
        sched.step()
    # torch counts steps 0..T-1 and ends its warm-up at step pct*T - 1
    ours = one_cycle(2.0, pct_start=(pct * T - 1) / (T - 1), div=25, div_final=25e4)
    test_near([(ours["lr"](s / (T - 1)), ours["mom"](s / (T - 1))) for s in range(T)], expected)


# --- callbacks on a real Learner ----------------------------------------------------------------

def make_dls(n_train=256, n_valid=128, batch_size=32, seed=0):
    "A small learnable problem: labels from a fixed random linear map of the inputs."
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n_train + n_valid, 20, generator=g)
    y = (x @ torch.randn(20, 4, generator=g)).argmax(1)
    return DataLoaders.from_tensors(x[:n_train], y[:n_train], x[n_train:], y[n_train:], batch_size=batch_size,
                                    seed=seed)

def make_model(seed=0, width=32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, width), nn.ReLU(), nn.Linear(width, 4))

class SeenHypers(Callback):
    "What the optimizer holds when the step happens (after every before_batch ran)."
    order = 99
    def before_fit(self): self.seen = []
    def after_backward(self):
        g = self.learn.opt.param_groups
        self.seen.append([(grp["lr"], grp.get("momentum"), grp.get("betas")) for grp in g])

def test_param_scheduler_sets_param_groups_each_batch():
    dls = make_dls()
    model = make_model()
    def two_groups(params, lr):  # one group per linear layer (the Learner's `params` are ignored)
        layers = [{"params": model[0].parameters()}, {"params": model[2].parameters()}]
        return torch.optim.SGD(layers, lr=lr, momentum=0.9)
    learn = Learner(model, dls, lr=0.1, opt_func=two_groups, logger=None)
    seen = SeenHypers()
    n_epochs = 2
    scheduler = ParamScheduler(lr=[sched_lin(0.1, 0.0), sched_cos(0.2, 0.0)], mom=sched_lin(0.9, 0.8))
    learn.fit(n_epochs, cbs=[scheduler, seen])
    total = n_epochs * len(dls.train)
    test_eq(len(seen.seen), total)
    for t, groups_seen in enumerate(seen.seen):
        (lr0, mom0, _), (lr1, mom1, _) = groups_seen
        assert lr0 == pytest.approx(0.1 * (1 - t / total))
        assert lr1 == pytest.approx(sched_cos(0.2, 0)(t / total))
        assert mom0 == pytest.approx(0.9 - 0.1 * t / total) and mom1 == mom0

def test_param_scheduler_equals_torch_cosine_scheduler():
    dls = make_dls()
    learn = Learner(make_model(), dls, lr=0.1, cbs=[Recorder()], logger=None)
    learn.fit(3, cbs=[ParamScheduler(lr=sched_cos(0.1, 0.001))])
    T = 3 * len(dls.train)
    cosine = lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=T, eta_min=0.001)
    test_near(learn.recorder.lrs, torch_lrs(cosine, T, lr=0.1))
    test_eq(len(learn.recorder.losses), T)
    test_eq(learn.recorder.epoch_ends, [len(dls.train) * (i + 1) for i in range(3)])

def test_param_scheduler_drives_adam_beta1_only():
    learn = Learner(make_model(), make_dls(), opt_func=torch.optim.Adam, logger=None)
    seen = SeenHypers()
    learn.fit(1, cbs=[ParamScheduler(one_cycle(0.01, pct_start=0.5, moms=(0.95, 0.85, 0.95))), seen])
    betas = [s[0][2] for s in seen.seen]
    assert betas[0] == (pytest.approx(0.95), 0.999) and all(b[1] == 0.999 for b in betas)
    assert min(b[0] for b in betas) == pytest.approx(0.85, abs=0.01)

def test_param_scheduler_rejects_unknown_hyper_parameter():
    learn = Learner(make_model(), make_dls(), logger=None)
    with pytest.raises(KeyError, match="no hyper-parameter 'betas'"):
        learn.fit(1, cbs=[ParamScheduler(betas=sched_no(0.9))])

def trained_learner():
    sgd_mom = partial(torch.optim.SGD, momentum=0.9)
    learn = Learner(make_model(), make_dls(), lr=0.05, opt_func=sgd_mom, logger=None)
    learn.fit(1)
    return learn

def snapshot(learn):
    import copy
    return copy.deepcopy(learn.model.state_dict()), copy.deepcopy(learn.opt.state_dict())

def assert_same_state(learn, saved):
    model_state, opt_state = saved
    for k, v in learn.model.state_dict().items(): assert torch.equal(v, model_state[k]), k
    now = learn.opt.state_dict()
    assert now["param_groups"] == opt_state["param_groups"]
    for i, s in opt_state["state"].items():
        assert torch.equal(now["state"][i]["momentum_buffer"], s["momentum_buffer"])

def test_lr_find_restores_model_and_optimizer_exactly_and_training_continues_identically():
    learn, twin = trained_learner(), trained_learner()
    saved = snapshot(learn)
    finder = lr_find(learn, num_it=30, show_plot=False)
    assert len(finder.lrs) > 5
    assert_same_state(learn, saved)
    assert learn.lr == 0.05 and learn.check_loss and learn.logger is None
    # the next fit is the one it would have been without the finder (fresh loaders with the same seed)
    learn.dls, twin.dls = make_dls(seed=3), make_dls(seed=3)
    learn.fit(1)
    twin.fit(1)
    for a, b in zip(learn.model.parameters(), twin.model.parameters()): assert torch.equal(a, b)

def test_lr_find_stops_on_divergence():
    learn = trained_learner()
    saved = snapshot(learn)
    finder = lr_find(learn, start_lr=1e-3, end_lr=1e6, num_it=200, show_plot=False)
    assert len(finder.lrs) < 200 and finder.lrs[-1] < 1e6
    last = finder.losses[-1]
    assert not math.isfinite(last) or finder.smoothed[-1] > 4 * finder.best
    assert_same_state(learn, saved)
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())

def test_lr_find_without_divergence_runs_num_it_batches_with_exponential_lrs():
    learn = trained_learner()
    finder = lr_find(learn, start_lr=1e-6, end_lr=1e-4, num_it=20, show_plot=False)
    test_eq(len(finder.lrs), 20)
    test_near(finder.lrs, [1e-6 * 100 ** (i / 20) for i in range(20)], rtol=1e-9)
    sugg = finder.suggestions()
    assert 1e-6 <= sugg["steep"] <= 1e-4

class ValidLossScript(Callback):
    "Overwrite the epoch's valid_loss with a scripted sequence, to test the monitors exactly."
    order = 100.5
    def __init__(self, values): self.values = values
    def after_epoch(self): self.learn.metrics.log[-1]["valid_loss"] = self.values[self.learn.epoch]

def test_early_stopping_stops_after_patience_epochs(capsys):
    script = [1.0, 0.8, 0.9, 0.7, 0.75, 0.72, 0.71, 0.6, 0.5]
    learn = Learner(make_model(), make_dls(), logger=None)
    early = EarlyStopping(patience=3)
    learn.fit(len(script), cbs=[ValidLossScript(script), early])
    test_eq((early.best_epoch, early.stopped_epoch), (3, 6))
    test_eq(len(learn.metrics.log), 7)
    assert "stopped after epoch 6" in capsys.readouterr().out
    # min_delta: 0.8 after 1.0 is an improvement, 0.7 after 0.8 is not enough of one
    early = EarlyStopping(patience=2, min_delta=0.15, verbose=False)
    learn.fit(len(script), cbs=[ValidLossScript(script), early])
    test_eq((early.best_epoch, early.stopped_epoch), (1, 3))

def test_save_best_model_keeps_the_best_weights(tmp_path):
    script = [1.0, 0.5, 0.7, 0.9]
    learn = Learner(make_model(), make_dls(), lr=0.1, logger=None)

    class Snapshots(Callback):
        order = 102
        def before_fit(self): self.states = []
        def after_epoch(self):
            self.states.append({k: v.clone() for k, v in self.learn.model.state_dict().items()})

    snaps, best = Snapshots(), SaveBestModel(path=tmp_path / "best.pt")
    learn.fit(len(script), cbs=[ValidLossScript(script), best, snaps])
    test_eq(best.best_epoch, 1)
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, snaps.states[1][k]) and not torch.equal(v, snaps.states[-1][k])
    on_disk = torch.load(tmp_path / "best.pt")
    for k, v in snaps.states[1].items(): assert torch.equal(on_disk[k], v)

def test_save_best_model_without_restore_and_max_mode():
    from exp.training import accuracy
    learn = Learner(make_model(), make_dls(), lr=0.1, metrics=[accuracy], logger=None)
    best = SaveBestModel("valid_accuracy", restore=False)
    learn.fit(3, cbs=[best])
    accs = [row["valid_accuracy"] for row in learn.metrics.log]
    test_eq((best.mode, best.best), ("max", max(accs)))
    for k, v in learn.model.state_dict().items():
        assert best.best_state[k].data_ptr() != v.data_ptr()  # a copy

def test_is_improvement_only_answers_and_set_best_records():
    learn = Learner(make_model(), make_dls(), logger=None)
    monitor = MonitorCallback(min_delta=0.05)
    monitor.learn = learn
    monitor.before_fit()
    assert monitor.is_improvement(10.0) and monitor.best == math.inf  # asking changes nothing
    learn.epoch = 4
    monitor.set_best(1.0)
    assert (monitor.best, monitor.best_epoch) == (1.0, 4)
    assert [monitor.is_improvement(v) for v in (1.2, 0.96, 0.94)] == [False, False, True]
    assert monitor.best == 1.0
    high = MonitorCallback("valid_accuracy")
    high.learn = learn
    high.before_fit()
    high.set_best(0.9)
    assert high.mode == "max" and high.is_improvement(0.91) and not high.is_improvement(0.9)
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"): MonitorCallback(mode="lowest")

def test_early_stopping_and_save_best_track_the_same_best_epoch():
    script = [1.0, 0.6, 0.7, 0.5, 0.8, 0.9, 0.95, 0.4]
    learn = Learner(make_model(), make_dls(), logger=None)
    best, early = SaveBestModel(), EarlyStopping(patience=3, verbose=False)
    learn.fit(len(script), cbs=[ValidLossScript(script), best, early])
    assert (best.best_epoch, early.best_epoch, early.stopped_epoch) == (3, 3, 6)
    assert best.best == early.best == 0.5

def test_save_best_model_file_is_replaced_whole_and_leaves_no_temporary_file(tmp_path):
    script = [1.0, 0.5, 0.7, 0.2]
    learn = Learner(make_model(), make_dls(), lr=0.1, logger=None)
    best = SaveBestModel(path=tmp_path / "best.pt")
    learn.fit(len(script), cbs=[ValidLossScript(script), best])
    assert best.best_epoch == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]
    on_disk = torch.load(tmp_path / "best.pt", weights_only=True)
    for k, v in learn.model.state_dict().items(): assert torch.equal(on_disk[k], v)

def test_smooth_is_the_debiased_average_of_the_lr_finder():
    assert smooth([2.0] * 4) == pytest.approx([2.0] * 4)  # debiased: a constant stays constant
    learn = trained_learner()
    finder = lr_find(learn, num_it=30, show_plot=False)
    assert finder.smoothed == pytest.approx(smooth(finder.losses))

def test_lr_finder_plot_marks_the_suggestions_and_ignores_the_exploded_end():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    finder = lr_find(trained_learner(), start_lr=1e-3, end_lr=1e6, num_it=200, show_plot=False)
    ax = finder.plot()
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:2] == ["loss", "smoothed"] and any(lab.startswith("steep: ") for lab in labels)
    assert ax.get_ylim()[1] < max(finder.losses) or max(finder.losses) == max(finder.losses[:-5])
    plt.close(ax.figure)

def test_monitor_names_a_missing_metric():
    learn = Learner(make_model(), make_dls(), logger=None)
    with pytest.raises(KeyError, match="valid_f1"): learn.fit(1, cbs=[EarlyStopping("valid_f1")])
