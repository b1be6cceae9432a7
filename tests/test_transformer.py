"""The GPT of exp.transformer: against PyTorch in float64, the KV cache, errors, weight tying, training."""
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from exp.attention import causal_mask, copy_to_torch
from exp.learner import Learner
from exp.optimizers import AdamW
from exp.rnn import sequence_loss
from exp.schedule import ParamScheduler, one_cycle
from exp.testing import test_eq, test_near
from exp.training import DataLoaders
from exp.transformer import (
    GPT,
    CausalSelfAttention,
    GradientClipping,
    KVCache,
    RandomWindows,
    TorchGPT,
    gelu,
    generate,
    next_token,
    torch_gpt_name,
    torch_twin,
)

@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    "Tiny models: one thread for these tests only, restored afterwards (the fixture is in conftest.py)."


VOCAB, BLOCK = 23, 12


def small_gpt(dtype=torch.float32, seed=0, **sizes):
    torch.manual_seed(seed)
    options = dict(vocab_size=VOCAB, block_size=BLOCK, embed_dim=16, num_heads=4, num_layers=2)
    return GPT(**{**options, **sizes}).to(dtype)


def test_gelu_equals_torch_in_float64():
    x = torch.linspace(-8, 8, 2001, dtype=torch.float64, requires_grad=True)
    x_torch = x.detach().clone().requires_grad_()
    test_near(gelu(x), F.gelu(x_torch), atol=1e-13, rtol=0)
    (gelu(x) * torch.cos(x)).sum().backward()
    (F.gelu(x_torch) * torch.cos(x_torch)).sum().backward()
    test_near(x.grad, x_torch.grad, atol=1e-13, rtol=0)
    # and it is not the tanh approximation
    assert (gelu(x) - F.gelu(x_torch, approximate="tanh")).abs().max() > 1e-5


def test_causal_self_attention_equals_torch_and_is_causal():
    torch.manual_seed(0)
    ours = CausalSelfAttention(12, 3).double()
    theirs = copy_to_torch(nn.MultiheadAttention(12, 3, batch_first=True).double(), ours)
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    out = ours(x)
    out_torch, _ = theirs(x, x, x, attn_mask=~causal_mask(9, 9), need_weights=False)
    test_near(out, out_torch, atol=1e-12, rtol=0)
    out.sin().sum().backward()
    out_torch.sin().sum().backward()
    test_near(ours.in_proj.weight.grad, theirs.in_proj_weight.grad, atol=1e-12, rtol=0)
    test_near(ours.in_proj.bias.grad, theirs.in_proj_bias.grad, atol=1e-12, rtol=0)
    test_near(ours.out_proj.weight.grad, theirs.out_proj.weight.grad, atol=1e-12, rtol=0)
    changed = x.clone()
    changed[:, 5:] += 1
    after = ours(changed)
    test_near(after[:, :5], out[:, :5], atol=1e-12, rtol=0)
    assert (after[:, 5:] - out[:, 5:]).abs().max() > 1e-3


def test_gpt_equals_torch_modules_in_float64():
    model = small_gpt(torch.float64)
    twin = torch_twin(model)
    assert isinstance(twin, TorchGPT)
    idx = torch.randint(VOCAB, (3, BLOCK), generator=torch.Generator().manual_seed(1))
    logits, logits_torch = model(idx), twin(idx)
    test_eq(logits.shape, (3, BLOCK, VOCAB))
    test_near(logits, logits_torch, atol=1e-12, rtol=0)
    targets = idx.roll(-1, 1)
    F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    F.cross_entropy(logits_torch.flatten(0, 1), targets.flatten()).backward()
    theirs = dict(twin.named_parameters())
    ours = dict(model.named_parameters())
    test_eq(len(ours), len(theirs))
    for name, p in ours.items(): test_near(p.grad, theirs[torch_gpt_name(name)].grad, atol=1e-12, rtol=0)


def test_weight_tying_shares_one_tensor():
    model = small_gpt()
    assert model.head.weight is model.token_embedding.weight
    test_eq(model.head.weight.data_ptr(), model.token_embedding.weight.data_ptr())
    n_params = sum(p.numel() for p in model.parameters())
    untied = sum(p.numel() for m in model.modules() for p in m.parameters(recurse=False))  # counts it twice
    test_eq(untied - n_params, VOCAB * 16)
    # the gradient collects both uses: the embedding's (rows of the ids read) and the head's (every row)
    idx = torch.tensor([[1, 2, 3]])
    model(idx).logsumexp(-1).sum().backward()
    grad = model.token_embedding.weight.grad
    assert grad is model.head.weight.grad and grad[10].abs().sum() > 0  # id 10 is never read: the head's
    # a step moves both, and a reloaded model is still tied
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = model.head.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.head.weight)
    test_eq(model.head.weight, model.token_embedding.weight)
    fresh = small_gpt(seed=5)
    fresh.load_state_dict(model.state_dict())
    assert fresh.head.weight is fresh.token_embedding.weight
    test_eq(fresh.head.weight, model.head.weight)


def test_init_follows_gpt2():
    model = small_gpt(num_layers=8, embed_dim=64, vocab_size=500)
    assert abs(model.token_embedding.weight.std().item() - 0.02) < 0.002
    residual = model.blocks[0].attention.out_proj.weight.std().item()
    assert abs(residual - 0.02 / 4) < 0.001   # sqrt(2 * 8 layers) = 4
    assert abs(model.blocks[0].attention.in_proj.weight.std().item() - 0.02) < 0.002
    assert model.blocks[0].feed_forward.expand.bias.abs().max() == 0


def test_cached_logits_equal_a_full_forward():
    model = small_gpt().eval()
    idx = torch.randint(VOCAB, (2, BLOCK))
    caches = [KVCache() for _ in model.blocks]
    pieces = [model(idx[:, :4], caches), model(idx[:, 4:7], caches)]  # a prefill, then 3 new tokens at once
    pieces += [model(idx[:, i:i + 1], caches) for i in range(7, BLOCK)]
    test_eq(len(caches[0]), BLOCK)
    test_near(torch.cat(pieces, 1), model(idx), atol=1e-5, rtol=0)


def context_sensitive_gpt():
    "A random GPT whose greedy continuations depend on the context (at GPT-2's init they settle on one id)."
    model = small_gpt()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and not name.startswith("token_embedding"): p.mul_(20)
    return model


class ForgetfulCache(KVCache):
    "A broken cache that keeps nothing: generation with it must differ."
    def append(self, keys, values): return keys, values


@pytest.mark.parametrize("prompt_length,new_tokens", [(1, 5), (3, BLOCK - 3), (5, 40)])
def test_greedy_generation_with_cache_equals_without(prompt_length, new_tokens, monkeypatch):
    model = context_sensitive_gpt()
    prompt = torch.randint(VOCAB, (3, prompt_length), generator=torch.Generator().manual_seed(2))
    cached = generate(model, prompt, new_tokens, top_k=1)
    plain = generate(model, prompt, new_tokens, top_k=1, use_cache=False)
    test_eq(cached.shape, (3, prompt_length + new_tokens))
    test_eq(cached[:, :prompt_length], prompt)
    test_eq(cached, plain)
    # the reference by hand: argmax over a full forward of the last block, step by step
    idx = prompt
    with torch.no_grad():
        for _ in range(new_tokens):
            idx = torch.cat([idx, model(idx[:, -BLOCK:])[:, -1].argmax(-1, keepdim=True)], 1)
    test_eq(cached, idx)
    # the comparison can fail: a cache that forgets changes the tokens
    monkeypatch.setattr("exp.transformer.KVCache", ForgetfulCache)
    assert not torch.equal(generate(model, prompt, new_tokens, top_k=1), plain)


def test_sampled_generation_with_cache_equals_without_in_float64():
    model = small_gpt(torch.float64)
    prompt = torch.randint(VOCAB, (2, 2))
    draws = [generate(model, prompt, 30, temperature=0.9, top_k=5, use_cache=use_cache,
                      generator=torch.Generator().manual_seed(3)) for use_cache in (True, False)]
    test_eq(draws[0], draws[1])


def test_generate_restores_training_mode_and_leaves_prompt():
    model = small_gpt().train()
    prompt = torch.tensor([[1, 2]])
    generate(model, prompt, 3)
    assert model.training
    test_eq(prompt, torch.tensor([[1, 2]]))
    test_eq(generate(model, prompt, 0), prompt)


def test_next_token_top_k_and_temperature():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    test_eq(next_token(logits, top_k=1), torch.tensor([[1]]))
    generator = torch.Generator().manual_seed(0)
    drawn = {next_token(logits, top_k=2, generator=generator).item() for _ in range(200)}
    test_eq(drawn, {1, 3})
    cold = [next_token(logits, temperature=0.05, generator=generator).item() for _ in range(50)]
    test_eq(set(cold), {1})


@pytest.mark.parametrize("make_input,message", [
    (lambda: torch.zeros(1, BLOCK + 1, dtype=torch.long), f"13 tokens is longer than block_size={BLOCK}"),
    (lambda: torch.tensor([[0, VOCAB]]), f"token id {VOCAB} is outside the vocabulary: ids must be in 0..22"),
    (lambda: torch.tensor([[-3, 1]]), "token id -3 is outside the vocabulary"),
    (lambda: torch.tensor([1, 2]), "shape (batch, time), not (2,)"),
])
def test_forward_errors_name_the_problem_and_limit(make_input, message):
    with pytest.raises(ValueError) as error: small_gpt()(make_input())
    assert message in str(error.value)


def test_forward_error_for_float_ids_and_cache_overflow():
    model = small_gpt()
    with pytest.raises(TypeError, match="integer tensor"): model(torch.zeros(1, 3))
    caches = [KVCache() for _ in model.blocks]
    model(torch.zeros(1, BLOCK - 1, dtype=torch.long), caches)
    with pytest.raises(ValueError, match=f"{BLOCK + 1} tokens is longer than block_size={BLOCK}"):
        model(torch.zeros(1, 2, dtype=torch.long), caches)


def test_generate_errors():
    model = small_gpt()
    with pytest.raises(ValueError, match=r"the prompt is empty \(shape \(2, 0\)\)"):
        generate(model, torch.zeros(2, 0, dtype=torch.long), 5)
    with pytest.raises(ValueError, match=f"0..{VOCAB - 1}"): generate(model, torch.tensor([[VOCAB + 4]]), 5)
    with pytest.raises(ValueError, match=f"vocab_size={VOCAB}, not 99"):
        generate(model, torch.tensor([[1]]), 5, top_k=99)
    with pytest.raises(ValueError, match="top_k=1"): generate(model, torch.tensor([[1]]), 5, temperature=0)
    with pytest.raises(ValueError, match="max_new_tokens"): generate(model, torch.tensor([[1]]), -1)
    # a prompt longer than the block is fine: generation reads its last block
    test_eq(generate(model, torch.zeros(1, BLOCK + 5, dtype=torch.long), 2).shape, (1, BLOCK + 7))


def test_heads_must_divide_embed_dim():
    with pytest.raises(ValueError, match="num_heads"): GPT(VOCAB, BLOCK, 10, 4, 1)


def test_random_windows():
    data = torch.arange(100)
    windows = RandomWindows(data, block_size=8, batch_size=5, n_batches=3, seed=0)
    batches = list(windows)
    test_eq(len(batches), 3)
    for x, y in batches:
        test_eq(x.shape, (5, 8))
        test_eq(y, x + 1)   # the data counts up: each target is the next item
        assert x.max() <= 98
    assert not torch.equal(batches[0][0], list(windows)[0][0])   # training: new windows every pass
    replay = RandomWindows(data, 8, 5, 3, seed=0, resample=False)
    test_eq([x for x, _ in replay], [x for x, _ in replay])
    with pytest.raises(ValueError, match="block_size=8"): RandomWindows(torch.arange(8), 8, 2, 1)


def test_gradient_clipping_bounds_the_norm():
    model = nn.Linear(4, 3)
    x, y = torch.randn(16, 4) * 100, torch.randint(3, (16,))
    learn = Learner(model, DataLoaders([(x, y)]), lr=0.0, cbs=[GradientClipping(0.5)], logger=None)
    norms = []
    learn.step = lambda: norms.append(torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item())
    learn.fit(1)
    assert abs(norms[0] - 0.5) < 1e-5


def test_a_short_training_run_reduces_the_loss():
    text = "to be or not to be, that is the question. " * 40
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    model = small_gpt(vocab_size=len(chars), block_size=16, embed_dim=32)
    train = RandomWindows(data, 16, batch_size=16, n_batches=30, seed=0)
    valid = RandomWindows(data, 16, batch_size=16, n_batches=4, seed=1, resample=False)
    learn = Learner(model, DataLoaders(train, valid), loss_func=sequence_loss, lr=1e-2,
                    opt_func=partial(AdamW, betas=(0.9, 0.99), weight_decay=0.1),
                    cbs=[ParamScheduler(one_cycle(1e-2)), GradientClipping(1.0)], logger=None)
    before = learn.validate()["loss"]
    learn.fit(2)
    after = learn.validate()["loss"]
    assert abs(before - torch.log(torch.tensor(float(len(chars)))).item()) < 0.1
    assert after < before - 1.0, (before, after)


def test_dropout_only_in_training():
    model = small_gpt(dropout=0.2)
    idx = torch.randint(VOCAB, (2, BLOCK))
    model.train()
    assert not torch.equal(model(idx), model(idx))
    model.eval()
    test_eq(model(idx), model(idx))
    test_eq(generate(model, idx[:, :2], 6, top_k=1), generate(model, idx[:, :2], 6, top_k=1, use_cache=False))
