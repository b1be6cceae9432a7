"ProgressCallback: headless runs print one line per epoch, console bars work, show=False prints nothing."
import contextlib
import io

import fastprogress.fastprogress as fp
import pytest
import torch
import torch.nn as nn

from exp.learner import Learner, print_stats
from exp.progress import ProgressCallback, interactive
from exp.schedule import EarlyStopping
from exp.training import DataLoaders, accuracy

@pytest.fixture
def console(monkeypatch):
    "fastprogress as in a script (not a notebook), whatever runs the tests."
    monkeypatch.setattr(fp, "IN_NOTEBOOK", False)

def make_learner(cbs, seed=0):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 10, generator=g)
    y = (x @ torch.randn(10, 3, generator=g)).argmax(1)
    dls = DataLoaders.from_tensors(x[:150], y[:150], x[150:], y[150:], batch_size=16, seed=seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    return Learner(model, dls, metrics=[accuracy], cbs=cbs)

def fit_output(cb, n_epochs=3):
    learn = make_learner([cb])
    with contextlib.redirect_stdout(io.StringIO()) as out: learn.fit(n_epochs)
    return learn, out.getvalue()

def test_headless_prints_one_line_per_epoch(console):
    learn, out = fit_output(ProgressCallback())
    lines = out.strip().splitlines()
    assert len(lines) == 1 + 3 and "\r" not in out           # a header, then one row per epoch
    assert lines[0].split() == list(learn.metrics.log[0])   # the metrics' columns
    for line, row in zip(lines[1:], learn.metrics.log):
        assert f"{row['valid_loss']:.4f}" in line

def test_console_bars_write_the_table(console):
    learn, out = fit_output(ProgressCallback(bars=True))
    assert "Epoch 3/3 :" in out                               # the bars, drawn with \r
    lines = out.replace("\r", "\n").splitlines()
    rows = [l for l in lines if l.strip() and "█" not in l and not l.startswith("Epoch ")]
    assert rows[0].split() == list(learn.metrics.log[0])
    assert len(rows) == 4 and f"{learn.metrics.log[-1]['valid_accuracy']:.4f}" in rows[-1]
    assert learn.logger is print_stats                       # given back after the fit

def test_show_false_prints_nothing_and_still_trains(console, capsys):
    learn, out = fit_output(ProgressCallback(show=False))
    assert out == "" and capsys.readouterr().out == ""
    assert len(learn.metrics.log) == 3 and learn.logger is print_stats

def test_same_training_with_and_without_progress(console):
    quiet, _ = fit_output(ProgressCallback(show=False))
    shown, _ = fit_output(ProgressCallback(bars=True))
    for a, b in zip(quiet.model.parameters(), shown.model.parameters()): assert torch.equal(a, b)

def test_notebook_bars_with_live_plot(monkeypatch):
    "The notebook path (HTML bars, table, loss graph) runs outside a notebook with IPython's display stubbed."
    pytest.importorskip("IPython")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = []
    class Handle:
        def update(self, obj): shown.append(obj)
    monkeypatch.setattr(fp, "IN_NOTEBOOK", True)
    def display(obj, display_id=False):
        shown.append(obj)
        return Handle()
    monkeypatch.setattr(fp, "display", display, raising=False)
    monkeypatch.setattr(fp, "HTML", lambda s: s, raising=False)
    monkeypatch.setattr(fp, "clear_output", lambda *a, **k: None, raising=False)
    monkeypatch.setattr(fp, "plt", plt, raising=False)
    cb = ProgressCallback()
    learn, out = fit_output(cb, n_epochs=2)
    assert out == ""                                          # nothing printed: it is all in the display
    assert any(isinstance(s, str) and "valid_loss" in s for s in shown)   # the table
    assert len(cb.losses) == 2 * len(learn.dls.train)           # every training batch's loss, for the plot
    assert cb.valid_losses == learn.metrics.values("valid_loss")
    plt.close("all")

def test_early_stopping_with_progress(console):
    stop = EarlyStopping("train_loss", patience=1, min_delta=10, verbose=False)
    learn = make_learner([ProgressCallback(), stop])
    with contextlib.redirect_stdout(io.StringIO()) as out: learn.fit(5)
    assert len(learn.metrics.log) == 2 and len(out.getvalue().strip().splitlines()) == 3

def test_interactive_only_in_a_notebook_or_a_terminal(console, monkeypatch):
    with contextlib.redirect_stdout(io.StringIO()): assert not interactive()   # a pipe or a log file
    class Terminal(io.StringIO):
        def isatty(self): return True
    with contextlib.redirect_stdout(Terminal()): assert interactive()
    monkeypatch.setattr(fp, "IN_NOTEBOOK", True)
    with contextlib.redirect_stdout(io.StringIO()): assert interactive()
