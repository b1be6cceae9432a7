"Checkpoints: exact resume after a crash, atomic writes, clear errors on bad files."
import random

import numpy as np
import pytest
import torch
from torch import nn

from exp.checkpoint import (
    CheckpointCallback,
    CheckpointError,
    atomic_save,
    get_rng_states,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    set_rng_states,
)
from exp.learner import Callback, Learner
from exp.schedule import ParamScheduler, sched_cos
from exp.training import DataLoaders, accuracy, set_seed

class SimulatedCrash(Exception): pass


def _data(n_train=300, n_valid=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_valid, 16, generator=g)
    y = (x[:, :4].sum(1) > 0).long() + 2 * (x[:, 4] > 0).long()
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def make_learner(cbs=None, seed=42):
    set_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4))
    dls = DataLoaders.from_tensors(*_data(), batch_size=32, seed=seed)
    opt_func = lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9)
    return Learner(model, dls, lr=0.1, opt_func=opt_func, metrics=accuracy, logger=None,
                   cbs=[ParamScheduler(lr=sched_cos(0.1, 0.01))] + (cbs or []))


def params_equal(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


class CrashAt(Callback):
    def __init__(self, epoch, batch=0): self.at = (epoch, batch)
    def before_batch(self):
        if self.learn.training and (self.learn.epoch, self.learn.iter) == self.at: raise SimulatedCrash()


def test_resume_after_epoch_is_bit_identical(tmp_path):
    reference = make_learner().fit(3)
    path = tmp_path / "last.pt"
    with pytest.raises(SimulatedCrash):
        make_learner(cbs=[CheckpointCallback(path)]).fit(3, cbs=CrashAt(epoch=2))
    assert read_checkpoint(path)["epoch"] == 2
    resumed = make_learner(cbs=[CheckpointCallback(path, resume=path)], seed=7).fit(3)
    assert params_equal(reference, resumed)
    assert not params_equal(reference, make_learner(seed=7).fit(3))  # the comparison can fail
    assert [row["epoch"] for row in resumed.metrics.log] == [0, 1, 2]
    # the momentum buffers too
    for p, q in zip(reference.opt.state.values(), resumed.opt.state.values()):
        assert torch.equal(p["momentum_buffer"], q["momentum_buffer"])


def test_resume_mid_epoch_is_bit_identical(tmp_path):
    reference = make_learner().fit(3)
    path = tmp_path / "mid.pt"
    cb = lambda **kw: CheckpointCallback(path, every_epochs=None, every_batches=4, keep_best=False, **kw)
    with pytest.raises(SimulatedCrash):
        make_learner(cbs=[cb()]).fit(3, cbs=CrashAt(epoch=1, batch=6))
    ckpt = read_checkpoint(path)
    # 10 batches an epoch, saved after step 16
    assert (ckpt["epoch"], ckpt["iter"], ckpt["train_iter"]) == (1, 6, 16)
    resumed = make_learner(cbs=[cb(resume=path)], seed=3).fit(3)
    assert params_equal(reference, resumed)


def test_keeps_best(tmp_path):
    learn = make_learner(cbs=[CheckpointCallback(tmp_path / "last.pt")])
    learn.fit(3)
    best = read_checkpoint(tmp_path / "last_best.pt")
    losses = learn.metrics.values("valid_loss")
    assert best["extra"]["best"] == pytest.approx(min(losses))
    assert best["epoch"] == losses.index(min(losses)) + 1


def test_learn_facing_save_load(tmp_path):
    learn = make_learner(cbs=[CheckpointCallback(tmp_path / "x.pt")]).fit(1)
    learn.checkpoint.save()
    other = make_learner(cbs=[CheckpointCallback(tmp_path / "x.pt")], seed=1)
    other.checkpoint.load()
    assert params_equal(learn, other)
    assert other.opt.state_dict()["state"].keys() == learn.opt.state_dict()["state"].keys()


def test_learner_save_and_load_methods(tmp_path):
    "`learn.save` / `learn.load` need no callback: what `from exp.learner import *` users reach for."
    learn = make_learner().fit(2)
    path = learn.save(tmp_path / "sub" / "model.pt")
    assert path == tmp_path / "sub" / "model.pt" and read_checkpoint(path)["train_iter"] == learn.train_iter
    other = make_learner(seed=1)
    assert not params_equal(learn, other)
    assert other.load(path) is other and params_equal(learn, other)
    for p, q in zip(learn.opt.state.values(), other.opt.state.values()):
        assert torch.equal(p["momentum_buffer"], q["momentum_buffer"])
    assert torch.equal(learn.get_preds()[0], other.get_preds()[0])
    weights_only = make_learner(seed=1).load(path, with_opt=False)
    assert params_equal(learn, weights_only) and weights_only.opt is None
    with pytest.raises(CheckpointError, match="does not exist"): other.load(tmp_path / "missing.pt")


def test_rng_states_round_trip_through_weights_only(tmp_path):
    dl = DataLoaders.from_tensors(*_data(), batch_size=32, seed=0).train
    save_path = tmp_path / "rng.pt"
    atomic_save({"rng": get_rng_states(dl)}, save_path)
    draw = lambda: (torch.rand(3).tolist(), random.random(), float(np.random.rand()),
                    dl.sampler.order().tolist())
    first = draw()
    set_rng_states(torch.load(save_path, weights_only=True)["rng"], dl)
    assert draw() == first


def test_truncated_and_corrupted_files_name_the_file(tmp_path):
    learn = make_learner().fit(1)
    good = save_checkpoint(learn, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt"): load_checkpoint(learn, truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match="garbage.pt"): read_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="missing.pt"): read_checkpoint(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="other.pt"): read_checkpoint(other)


def test_code_in_a_pickle_is_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "exp.checkpoint/1", "payload": SimulatedCrash}, evil)  # a class: needs code to load
    with pytest.raises(CheckpointError, match="evil.pt"): read_checkpoint(evil)


def test_failing_save_keeps_last_good(tmp_path, monkeypatch):
    learn = make_learner().fit(1)
    path = save_checkpoint(learn, tmp_path / "last.pt")
    before = path.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("No space left on device (simulated)")
    monkeypatch.setattr(torch, "save", failing_save)
    learn.fit(1)
    with pytest.raises(OSError, match="No space"): save_checkpoint(learn, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind
