"Data-parallel training: 2 gloo processes × batch b equal 1 process × batch 2b; the callback alone."
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from exp.distributed import (
    DistributedCallback,
    default_backend,
    is_main_process,
    rank,
    shard_loader,
    world_size,
)
from exp.learner import Callback, Learner
from exp.training import DataLoader, DataLoaders, set_seed

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import ddp_train  # noqa: E402

def free_port():
    "A free TCP port on the loopback interface."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_with_double_batch(tmp_path):
    steps, batch = 4, 16
    out = tmp_path / "params.pt"
    # --standalone: torchrun's agent binds a free port itself, so no other process can take the port between
    # our choosing it and torchrun binding it (free_port() has that race on a busy machine).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "benchmarks" / "ddp_train.py"),
           "--steps", str(steps), "--batch-size", str(batch), "--save", str(out)]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(ROOT)}
    # Bounded, so a hung rendezvous fails the test; but generous: on a loaded 2-core machine the three Python
    # processes importing torch alone took 50 s, and the old 60 s limit failed a correct run.
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world_size=2" in result.stdout and f"samples={2 * steps * batch}" in result.stdout, result.stdout
    ddp = torch.load(out, weights_only=True)
    reference = ddp_train.reference_params(steps, 2 * batch)
    assert ddp.keys() == reference.keys()
    for name, p in reference.items(): torch.testing.assert_close(ddp[name], p, atol=1e-5, rtol=1e-5)
    # and the comparison can fail: one process with batch b differs
    other = ddp_train.reference_params(steps, batch)
    assert max((other[n] - p).abs().max().item() for n, p in reference.items()) > 1e-3


@pytest.fixture
def world_of_one(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _data(n=200):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return x, (x.sum(1) > 0).long()


def _model():
    set_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def test_callback_in_a_world_of_one(world_of_one):
    x, y = _data()
    dls = DataLoaders.from_tensors(x, y, x[:50], y[:50], batch_size=16)
    learn = Learner(_model(), dls, lr=0.1, cbs=DistributedCallback(seed=3), logger=None).fit(2)
    assert isinstance(learn.model, nn.Sequential)  # unwrapped after the fit
    assert learn.dls.train is dls.train  # original loaders back

    sampler = DistributedSampler(dls.train.dataset, num_replicas=1, rank=0, seed=3)
    class SetEpoch(Callback):
        def before_epoch(self): sampler.set_epoch(self.learn.epoch)
    plain = Learner(_model(), DataLoaders(DataLoader(dls.train.dataset, 16, sampler=sampler), dls.valid),
                    lr=0.1, cbs=SetEpoch(), logger=None).fit(2)
    for p, q in zip(plain.model.parameters(), learn.model.parameters()): torch.testing.assert_close(p, q)
    # metrics after the all-reduce are those of the whole validation set
    assert learn.metrics.values("valid_loss") == pytest.approx(plain.metrics.values("valid_loss"), rel=1e-5)


def test_rank_helpers(world_of_one):
    assert (rank(), world_size(), is_main_process()) == (0, 1, True)


def test_rank_helpers_without_process_group():
    assert (rank(), world_size(), is_main_process()) == (0, 1, True)
    assert default_backend() == ("nccl" if torch.cuda.is_available() else "gloo")


def test_callback_needs_a_process_group():
    x, y = _data()
    learn = Learner(_model(), DataLoaders.from_tensors(x, y, x, y), cbs=DistributedCallback(), logger=None)
    with pytest.raises(RuntimeError, match="setup_distributed"): learn.fit(1)


def test_shard_loader_splits_the_data():
    x, y = _data(40)
    dl = DataLoader(DataLoaders.from_tensors(x, y, x, y).train.dataset, 5)
    def targets(rank):
        return torch.cat([yb for _, yb in shard_loader(dl, shuffle=False, rank=rank, world_size=2)])
    shards = [targets(rank) for rank in range(2)]
    assert [len(s) for s in shards] == [20, 20]
    torch.testing.assert_close(shards[0], y[0::2])
    torch.testing.assert_close(shards[1], y[1::2])
    torch_dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    ys = torch.cat([yb for _, yb in shard_loader(torch_dl, shuffle=False, rank=1, world_size=2)])
    torch.testing.assert_close(ys, y[1::2])
