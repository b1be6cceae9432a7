"""The from-scratch RNN/LSTM/GRU against PyTorch's, and truncated BPTT's detaching."""

import re

import pytest
import torch
from torch import nn

from exp.learner import Callback, Learner
from exp.rnn import (
    BPTTLSTM,
    GRU,
    LSTM,
    RNN,
    CharModel,
    CharVocab,
    GRUCell,
    LSTMCell,
    LSTMLayerBPTT,
    ResetStateCallback,
    RNNCell,
    SequenceLoader,
    Stateful,
    copy_from_torch,
    copy_to_torch,
    detach_state,
    from_torch,
    gate_tanh,
    graph_size,
    lstm_step,
    sample,
    sequence_loss,
    torch_parameter_name,
)
from exp.testing import test_near
from exp.training import DataLoaders

@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    "Tiny ops: one thread for these tests only, restored afterwards (the fixture is in conftest.py)."


BATCH, STEPS, INPUT, HIDDEN = 3, 6, 4, 5


def as_list(state):
    return list(state) if isinstance(state, tuple) else [state]


def initial_state(kind, layers, generator):
    h = torch.randn(layers, BATCH, HIDDEN, generator=generator)
    return (h, torch.randn(layers, BATCH, HIDDEN, generator=generator)) if kind is nn.LSTM else h


def run_both(ours, theirs, x, state):
    "Outputs, final states, input grads and parameter grads (by PyTorch name) for both modules."
    results = []
    for module in (ours, theirs):
        xg = x.clone().requires_grad_()
        out, final = module(xg, state)
        weights = torch.linspace(-1, 1, out.numel()).view_as(out)
        ((out * weights).sum() + sum((f ** 2).sum() for f in as_list(final))).backward()
        grads = {torch_parameter_name(n): p.grad for n, p in module.named_parameters()}
        results.append((out, as_list(final), xg.grad, grads))
    return results


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("kind,options", [(nn.RNN, {}), (nn.RNN, {"nonlinearity": "relu"}), (nn.LSTM, {}),
                                          (nn.GRU, {}), (nn.LSTM, {"bias": False}),
                                          (nn.GRU, {"bias": False})])
def test_sequence_modules_equal_torch(kind, options, layers):
    torch.manual_seed(layers)
    theirs = kind(INPUT, HIDDEN, num_layers=layers, batch_first=True, **options)
    ours = from_torch(theirs)
    assert type(ours) is {nn.RNN: RNN, nn.LSTM: LSTM, nn.GRU: GRU}[kind]
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, STEPS, INPUT, generator=generator)
    for state in (None, initial_state(kind, layers, generator)):
        for p in list(ours.parameters()) + list(theirs.parameters()): p.grad = None
        (out, finals, x_grad, grads), (t_out, t_finals, t_x_grad, t_grads) = run_both(ours, theirs, x, state)
        test_near(out, t_out)
        assert len(finals) == len(t_finals)
        for a, b in zip(finals, t_finals): test_near(a, b)
        test_near(x_grad, t_x_grad)
        assert grads.keys() == t_grads.keys()
        for name in t_grads: test_near(grads[name], t_grads[name])


@pytest.mark.parametrize("bias", [True, False])
def test_lstm_layer_bptt_gradients_match_numerical_differentiation(bias):
    "Every input's gradient, of every output (sequence, h_n, c_n), against finite differences in float64."
    generator = torch.Generator().manual_seed(2)
    shapes = [(2, 4, 3), (2, 5), (2, 5), (20, 3), (20, 5)] + ([(20,)] if bias else [])
    args = [torch.randn(s, dtype=torch.float64, generator=generator, requires_grad=True) for s in shapes]
    assert torch.autograd.gradcheck(lambda *a: LSTMLayerBPTT.apply(*a, *([] if bias else [None])), args)


@pytest.mark.parametrize("layers,bias", [(1, True), (2, True), (2, False)])
def test_bptt_lstm_equals_torch_lstm(layers, bias):
    torch.manual_seed(layers)
    theirs = nn.LSTM(INPUT, HIDDEN, num_layers=layers, batch_first=True, bias=bias)
    ours = copy_from_torch(BPTTLSTM(INPUT, HIDDEN, num_layers=layers, bias=bias), theirs)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, STEPS, INPUT, generator=generator)
    for state in (None, initial_state(nn.LSTM, layers, generator)):
        for p in list(ours.parameters()) + list(theirs.parameters()): p.grad = None
        (out, finals, x_grad, grads), (t_out, t_finals, t_x_grad, t_grads) = run_both(ours, theirs, x, state)
        test_near(out, t_out)
        for a, b in zip(finals, t_finals, strict=True): test_near(a, b)
        test_near(x_grad, t_x_grad)
        assert grads.keys() == t_grads.keys()
        for name in t_grads: test_near(grads[name], t_grads[name])


def graph_targets(fn, *args):
    "The operations `torch.compile` traces `fn` into (an FX graph, run as traced, nothing compiled)."
    targets = []
    def capture(gm, example_inputs):
        targets.extend(node.target for node in gm.graph.nodes if node.op == "call_function")
        return gm
    torch._dynamo.reset()
    torch.compile(fn, backend=capture)(*args)
    return targets


def test_gate_tanh_is_tanh_traced_as_a_sigmoid_when_compiled():
    x = torch.linspace(-12, 12, 2001)
    assert torch.equal(gate_tanh(x), x.tanh())  # eagerly: tanh's own kernel
    targets = graph_targets(gate_tanh, x)
    assert torch.sigmoid in targets and torch.tanh not in targets, targets
    test_near(torch.compile(gate_tanh, backend="aot_eager")(x), x.tanh())
    x64 = x.double()
    assert (2 * torch.sigmoid(2 * x64) - 1 - x64.tanh()).abs().max() < 1e-15


@pytest.mark.parametrize("layers", [1, 2])
def test_compiled_bptt_lstm_equals_torch_lstm(layers):
    "The traced forward and backward (sigmoid-form tanh) against nn.LSTM; AOTAutograd runs them as traced."
    torch.manual_seed(layers)
    theirs = nn.LSTM(INPUT, HIDDEN, num_layers=layers, batch_first=True)
    ours = copy_from_torch(BPTTLSTM(INPUT, HIDDEN, num_layers=layers), theirs)
    torch._dynamo.reset()
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)  # a graph break would run eagerly
    x = torch.randn(BATCH, STEPS, INPUT, generator=torch.Generator().manual_seed(1))
    state = initial_state(nn.LSTM, layers, torch.Generator().manual_seed(2))
    (out, finals, x_grad, _), (t_out, t_finals, t_x_grad, t_grads) = run_both(compiled, theirs, x, state)
    test_near(out, t_out)
    for a, b in zip(finals, t_finals, strict=True): test_near(a, b)
    test_near(x_grad, t_x_grad)
    grads = {torch_parameter_name(n): p.grad for n, p in ours.named_parameters()}  # compiled shares them
    assert grads.keys() == t_grads.keys()
    for name in t_grads: test_near(grads[name], t_grads[name])


@pytest.mark.parametrize("shape", [(3, 4), (3, 0, INPUT), (3, 6, INPUT + 1)])
def test_bptt_lstm_names_a_wrong_input_shape(shape):
    expected = f"(batch, time >= 1, {INPUT} features), got shape {tuple(shape)}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        BPTTLSTM(INPUT, HIDDEN)(torch.randn(shape))


def test_bptt_lstm_initial_state_gets_its_gradient():
    torch.manual_seed(0)
    theirs = nn.LSTM(INPUT, HIDDEN, batch_first=True)
    ours = copy_from_torch(BPTTLSTM(INPUT, HIDDEN), theirs)
    x = torch.randn(BATCH, STEPS, INPUT)  # data that asks for no gradient: the layer skips d_x
    grads = []
    for module in (ours, theirs):
        h0, c0 = (torch.randn(1, BATCH, HIDDEN, generator=torch.Generator().manual_seed(k)).requires_grad_()
                  for k in (3, 4))
        out, _ = module(x, (h0, c0))
        out.pow(2).sum().backward()
        grads.append((h0.grad, c0.grad))
    for a, b in zip(*grads): test_near(a, b)


@pytest.mark.parametrize("ours_class,theirs_class",
                         [(RNNCell, nn.RNNCell), (LSTMCell, nn.LSTMCell), (GRUCell, nn.GRUCell)])
def test_cells_equal_torch_cells(ours_class, theirs_class):
    torch.manual_seed(0)
    theirs = theirs_class(INPUT, HIDDEN)
    ours = copy_from_torch(ours_class(INPUT, HIDDEN), theirs)
    x, h, c = torch.randn(BATCH, INPUT), torch.randn(BATCH, HIDDEN), torch.randn(BATCH, HIDDEN)
    state = (h, c) if ours_class is LSTMCell else h
    for a, b in zip(as_list(ours(x, state)), as_list(theirs(x, state))): test_near(a, b)


def test_gru_reset_gate_applies_to_hidden_bias():
    "PyTorch's GRU computes tanh(W_in x + b_in + r * (W_hn h + b_hn)): a change to b_hn is scaled by r."
    torch.manual_seed(0)
    theirs = nn.GRUCell(INPUT, HIDDEN)
    ours = from_torch(theirs)
    with torch.no_grad():
        for module in (ours, theirs): module.bias_hh[2 * HIDDEN:] += 3.0
    x, h = torch.randn(BATCH, INPUT), torch.randn(BATCH, HIDDEN)
    test_near(ours(x, h), theirs(x, h))


def test_copy_to_torch_round_trip_and_shape_check():
    torch.manual_seed(0)
    ours = GRU(INPUT, HIDDEN, num_layers=2)
    theirs = copy_to_torch(nn.GRU(INPUT, HIDDEN, num_layers=2, batch_first=True), ours)
    x = torch.randn(BATCH, STEPS, INPUT)
    test_near(ours(x)[0], theirs(x)[0])
    with pytest.raises(ValueError, match="shape"): copy_to_torch(nn.LSTM(INPUT, HIDDEN, num_layers=2), ours)
    with pytest.raises(ValueError, match="no parameter"): copy_from_torch(GRU(INPUT, HIDDEN, num_layers=3),
                       theirs)
    with pytest.raises(ValueError,
                       match="not implemented"): from_torch(nn.LSTM(INPUT, HIDDEN, bidirectional=True))


def test_torch_parameter_names():
    assert torch_parameter_name("cells.1.weight_ih") == "weight_ih_l1"
    assert torch_parameter_name("cells.0.bias_hh") == "bias_hh_l0"
    assert torch_parameter_name("weight_hh") == "weight_hh"


def test_sequence_loader_streams_continue_across_batches():
    data = torch.arange(103)
    loader = SequenceLoader(data, batch_size=4, bptt=7)
    batches = list(loader)
    assert len(batches) == len(loader) == 4  # 25 steps per stream: 7 + 7 + 7 + 4
    rows_x = torch.cat([x for x, _ in batches], dim=1)
    rows_y = torch.cat([y for _, y in batches], dim=1)
    assert torch.equal(rows_x, data[:100].view(4, 25))  # row b of batch k+1 continues row b of batch k
    assert torch.equal(rows_y, rows_x + 1)
    with pytest.raises(ValueError): SequenceLoader(torch.arange(3), batch_size=4, bptt=2)


def test_sequence_loader_keeps_feature_dims():
    data = torch.randn(41, 3)
    x, y = next(iter(SequenceLoader(data, batch_size=2, bptt=5)))
    assert x.shape == y.shape == (2, 5, 3)
    assert torch.equal(y[0, 0], data[1]) and torch.equal(x[1, 0], data[20])


def reaches(tensor, node):
    "Whether `node` (an autograd node) is in the graph behind `tensor`."
    seen, todo = set(), [tensor.grad_fn]
    while todo:
        current = todo.pop()
        if current is None or current in seen: continue
        if current is node: return True
        seen.add(current)
        todo.extend(n for n, _ in current.next_functions)
    return False


def carried_states(detach, n_batches=6):
    "Run an LSTM over consecutive full windows, carrying the state; the states and graph sizes per batch."
    torch.manual_seed(0)
    model = LSTM(2, 4)
    loader = SequenceLoader(torch.randn(6 * 5 * 2 + 1, 2), batch_size=2, bptt=5)
    states, sizes, state = [], [], None
    for x, _ in loader:
        out, state = model(x, state)
        states.append(state)
        sizes.append(graph_size(state[0]))
        if detach: state = detach_state(state)
    return states, sizes


def test_detached_state_does_not_reach_previous_batch():
    states, sizes = carried_states(detach=True)
    assert len(set(sizes)) == 1  # the graph behind the state has the same size every batch
    for previous, current in zip(states, states[1:]):
        assert not reaches(current[0], previous[0].grad_fn) and not reaches(current[1], previous[1].grad_fn)


def test_attached_state_grows_without_detaching():
    "The oracle for the test above: without detaching, the graph does reach back and grows every batch."
    states, sizes = carried_states(detach=False)
    assert all(a < b for a, b in zip(sizes, sizes[1:]))
    assert reaches(states[-1][0], states[0][0].grad_fn)


def test_detach_state_keeps_values_and_drops_history():
    h = torch.randn(2, 3, requires_grad=True) * 2
    c = torch.randn(2, 3, requires_grad=True) * 2
    dh, dc = detach_state((h, c))
    assert torch.equal(dh, h) and torch.equal(dc, c)
    assert dh.grad_fn is None and dc.grad_fn is None and not dh.requires_grad
    assert detach_state(h).grad_fn is None


class SineModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.head = LSTM(1, 8), nn.Linear(8, 1)

    def forward(self, x, state=None):
        out, state = self.lstm(x.unsqueeze(-1), state)
        return self.head(out).squeeze(-1), state


def test_stateful_carries_detached_state_between_calls():
    torch.manual_seed(0)
    inner = SineModel()
    model = Stateful(inner)
    x = torch.randn(2, 5)
    first = model(x)
    assert all(s.grad_fn is None for s in model.state)  # kept, but cut loose
    test_near(first, inner(x)[0])
    second = model(x)  # continues from the first call's state...
    test_near(second, inner(x, inner(x)[1])[0])
    assert not reaches(second, first.grad_fn)  # ...without reaching back into its graph
    model.reset()
    assert model.state is None
    test_near(model(x), first)


def test_learner_trains_stateful_model_and_resets_state_each_pass():
    """With the Learner, ResetStateCallback zeroes the state before training and validation, and the loss
    falls."""
    torch.manual_seed(0)
    wave = torch.sin(torch.arange(1001, dtype=torch.float32) * 0.2)
    seen = []

    class Spy(Callback):
        order = ResetStateCallback.order + 1
        def before_train(self): seen.append(("train", self.learn.model.state is None))
        def before_validate(self): seen.append(("valid", self.learn.model.state is None))

    dls = DataLoaders(SequenceLoader(wave[:801], batch_size=8, bptt=10),
                      SequenceLoader(wave[800:], batch_size=2, bptt=10))
    learn = Learner(Stateful(SineModel()), dls, loss_func=sequence_loss, lr=0.02, opt_func=torch.optim.Adam,
                    cbs=[ResetStateCallback(), Spy()], logger=None)
    learn.fit(6)
    assert seen == [("train", True), ("valid", True)] * 6
    train_losses = learn.metrics.values("train_loss")
    assert train_losses[-1] < 0.2 * train_losses[0]
    assert learn.metrics.values("valid_loss")[-1] < 0.2 * learn.metrics.values("valid_loss")[0]


def test_sequence_loss_picks_mse_or_cross_entropy():
    preds, targets = torch.randn(2, 3), torch.randn(2, 3)
    test_near(sequence_loss(preds, targets), nn.functional.mse_loss(preds, targets))
    logits, classes = torch.randn(2, 3, 7), torch.randint(0, 7, (2, 3))
    test_near(sequence_loss(logits, classes),
              nn.functional.cross_entropy(logits.reshape(6, 7), classes.reshape(6)))


def test_lstm_step_runs_on_our_autograd_engine():
    autograd = pytest.importorskip("exp.autograd")
    torch.manual_seed(0)
    cell = LSTMCell(INPUT, HIDDEN)
    x, h, c = torch.randn(BATCH, INPUT), torch.randn(BATCH, HIDDEN), torch.randn(BATCH, HIDDEN)
    h1, c1 = cell(x, (h, c))
    ((h1 * 2).sum() + (c1 * c1).sum()).backward()
    weights = {n: autograd.Variable(p.detach().clone()) for n, p in cell.named_parameters()}
    inputs = [autograd.Variable(t) for t in (x, h, c)]
    h2, c2 = lstm_step(*inputs, weights["weight_ih"], weights["weight_hh"], weights["bias_ih"],
                       weights["bias_hh"], ops=autograd)
    ((h2 * 2).sum() + (c2 * c2).sum()).backward()
    test_near(h2.data, h1)
    test_near(c2.data, c1)
    for name, p in cell.named_parameters(): test_near(weights[name].grad.data, p.grad)


def test_char_vocab_round_trip_and_seeded_sampling():
    text = "Alice was beginning to get very tired."
    vocab = CharVocab(text)
    assert len(vocab) == len(set(text)) and vocab.decode(vocab.encode(text).tolist()) == text
    torch.manual_seed(0)
    model = Stateful(CharModel(len(vocab), embedding_size=4, hidden_size=8))
    first = sample(model, vocab, "Alice ", 30, seed=3)
    assert first.startswith("Alice ") and len(first) == 36 and set(first) <= set(vocab.chars)
    assert sample(model, vocab, "Alice ", 30, seed=3) == first  # seeded, and the state is reset each time
    assert model.state is None
