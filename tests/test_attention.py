"""Our attention, multi-head attention and positions against PyTorch's (in float64) and closed forms."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from exp.attention import (
    LearnedPositions,
    MultiHeadAttention,
    SinusoidalPositions,
    apply_rotary,
    causal_mask,
    copy_from_torch,
    copy_to_torch,
    merge_heads,
    scaled_dot_product_attention,
    sinusoidal_positions,
    split_heads,
)
from exp.testing import test_near

@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    "Tiny ops: one thread for these tests only, restored afterwards (the fixture is in conftest.py)."


def weighted_sum(out):
    "A loss whose gradient differs at every output element, so a swapped element cannot hide."
    return (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()


def attention_and_grads(attend, q, k, v, **options):
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attend(*inputs, **options)
    weighted_sum(out).backward()
    return [out] + [t.grad for t in inputs]


def random_qkv(batch, L, S, E=8, Ev=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*batch, L, E, generator=g, dtype=dtype),
            torch.randn(*batch, S, E, generator=g, dtype=dtype),
            torch.randn(*batch, S, Ev, generator=g, dtype=dtype))


def padding_mask():
    mask = torch.ones(2, 1, 4, 6, dtype=torch.bool)
    mask[0, :, :, 4:] = False        # padded keys
    mask[1, :, 2, :] = False         # a query that may see nothing: PyTorch gives it a zero output
    return mask


CASES = {
    "plain": dict(L=4, S=6),
    "causal square": dict(L=5, S=5, is_causal=True),
    "causal, more keys (cache)": dict(L=3, S=7, is_causal=True),
    "causal, more queries": dict(L=6, S=3, is_causal=True),
    "bool mask, broadcast over heads": dict(L=4, S=6, attn_mask=padding_mask()),
    "bool mask (L, S)": dict(L=4, S=6, attn_mask=torch.rand(4, 6, generator=torch.Generator().manual_seed(3))
                             > 0.4),
    "float mask": dict(L=4, S=6, attn_mask=torch.randn(4, 6, dtype=torch.float64)),
    "float mask with -inf": dict(L=4, S=6, attn_mask=torch.zeros(4, 6, dtype=torch.float64).index_fill(
        1, torch.tensor([0, 3]), -math.inf)),
    "scale": dict(L=4, S=6, scale=0.3),
    "no batch dims": dict(L=4, S=6, batch=()),
    "one batch dim, Ev = E": dict(L=4, S=6, batch=(3,), Ev=8),
}


@pytest.mark.parametrize("name", CASES)
def test_attention_equals_torch_float64(name):
    options = dict(CASES[name])
    shape = {"batch": options.pop("batch", (2, 3)), "L": options.pop("L"), "S": options.pop("S"),
             "Ev": options.pop("Ev", 5)}
    q, k, v = random_qkv(**shape)
    ours = attention_and_grads(scaled_dot_product_attention, q, k, v, **options)
    theirs = attention_and_grads(F.scaled_dot_product_attention, q, k, v, **options)
    assert ours[0].shape == (*shape["batch"], shape["L"], shape["Ev"])
    for a, b in zip(ours, theirs):
        assert not a.isnan().any()
        test_near(a, b, atol=1e-12, rtol=1e-12)


def test_fully_masked_query_gets_zero_output_and_zero_gradient():
    q, k, v = random_qkv((2, 3), 4, 6)
    out, q_grad, k_grad, v_grad = attention_and_grads(scaled_dot_product_attention, q, k, v,
                                                      attn_mask=padding_mask())
    assert (out[1, :, 2] == 0).all() and (q_grad[1, :, 2] == 0).all()
    assert (k_grad[0, :, 4:] == 0).all() and (v_grad[0, :, 4:] == 0).all()     # padded keys get no gradient


def test_causal_means_no_look_ahead():
    q, k, v = random_qkv((1,), 6, 6)
    out = scaled_dot_product_attention(q, k, v, is_causal=True)
    v2 = v.clone()
    v2[..., 4:, :] += 100.0              # changing the future leaves the past unchanged
    out2 = scaled_dot_product_attention(q, k, v2, is_causal=True)
    test_near(out[..., :4, :], out2[..., :4, :], atol=1e-12)
    assert (out[..., 4:, :] - out2[..., 4:, :]).abs().min() > 1.0


def test_causal_mask_offset_is_what_a_key_value_cache_needs():
    q, k, v = random_qkv((2, 3), 7, 7)
    full = scaled_dot_product_attention(q, k, v, is_causal=True)
    # the last 3 queries against all 7 keys: the triangle aligned bottom-right (offset S - L)
    tail = scaled_dot_product_attention(q[..., 4:, :], k, v, attn_mask=causal_mask(3, 7, offset=4))
    test_near(tail, full[..., 4:, :], atol=1e-12)
    last = scaled_dot_product_attention(q[..., 6:, :], k, v)    # one new query sees every cached key
    test_near(last, full[..., 6:, :], atol=1e-12)
    assert causal_mask(2, 4).tolist() == [[True, False, False, False], [True, True, False, False]]
    assert causal_mask(2, 4, offset=2).tolist() == [[True, True, True, False], [True, True, True, True]]


def test_attention_float32_and_bfloat16_near_torch():
    q, k, v = random_qkv((2, 4), 16, 16, E=32, Ev=32, dtype=torch.float32)
    test_near(scaled_dot_product_attention(q, k, v, is_causal=True),
              F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-5)
    ours = scaled_dot_product_attention(*(t.bfloat16() for t in (q, k, v)), is_causal=True)
    assert ours.dtype == torch.bfloat16
    test_near(ours.float(), F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=0.05, rtol=0.05)


def test_dropout_zeroes_weights_and_rescales_the_rest():
    torch.manual_seed(0)
    q, k, _ = random_qkv((4,), 32, 32)
    eye = torch.eye(32, dtype=torch.float64).expand(4, 32, 32)    # value = identity: output = weights
    weights = scaled_dot_product_attention(q, k, eye)
    dropped = scaled_dot_product_attention(q, k, eye, dropout_p=0.25)
    kept = dropped != 0
    assert 0.70 < kept.double().mean() < 0.80
    test_near(dropped[kept], weights[kept] / 0.75, atol=1e-12)


def test_attention_errors_name_the_problem_and_shapes():
    q, k, v = random_qkv((2,), 4, 6)
    with pytest.raises(ValueError, match=r"attn_mask of shape \(6, 4\) does not broadcast to the attention "
                                         r"scores' shape \(2, 4, 6\)"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(6, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"attn_mask of shape \(3, 4, 6\)"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(3, 4, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="either attn_mask or is_causal=True, not both"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(4, 6, dtype=torch.bool), is_causal=True)
    with pytest.raises(ValueError, match="query's last dim 8 must equal key's 7"):
        scaled_dot_product_attention(q, k[..., :7], v)
    with pytest.raises(ValueError, match=r"same length S: key \(2, 6, 8\), value \(2, 5, 5\)"):
        scaled_dot_product_attention(q, k, v[..., :5, :])
    with pytest.raises(TypeError, match="bool .* or floating .*, not torch.int64"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(4, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"need shapes \(\.\.\., L, E\)"):
        scaled_dot_product_attention(q[0, 0], k, v)


def test_split_and_merge_heads_are_inverse():
    x = torch.randn(2, 5, 12)
    heads = split_heads(x, 3)
    assert heads.shape == (2, 3, 5, 4)
    test_near(heads[:, 1], x[..., 4:8])
    assert torch.equal(merge_heads(heads), x)


def mha_pair(embed_dim=12, num_heads=3, bias=True, seed=0):
    torch.manual_seed(seed)
    theirs = nn.MultiheadAttention(embed_dim, num_heads, bias=bias, batch_first=True).double()
    with torch.no_grad():                       # non-zero biases, so a misplaced bias would show
        for p in theirs.parameters(): p.add_(torch.randn_like(p) * 0.1)
    return copy_from_torch(MultiHeadAttention(embed_dim, num_heads, bias=bias).double(), theirs), theirs


def mha_grads(module, inputs, **options):
    inputs = [x.clone().requires_grad_() for x in inputs]
    out = module(*inputs, **options)
    if isinstance(out, tuple): out = out[0]
    weighted_sum(out).backward()
    names = {"in_proj.weight": "in_proj_weight", "in_proj.bias": "in_proj_bias"}
    return out, [x.grad for x in inputs], {names.get(n, n): p.grad for n, p in module.named_parameters()}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", ["self", "causal", "cross", "cross masked"])
def test_multi_head_attention_equals_torch(kind, bias):
    ours, theirs = mha_pair(bias=bias)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 12, generator=g, dtype=torch.float64)
    memory = [torch.randn(2, 7, 12, generator=g, dtype=torch.float64) for _ in "kv"]
    mask = torch.rand(5, 7, generator=g) > 0.3
    if kind == "self":
        ours_result, theirs_result = mha_grads(ours, [x]), mha_grads(theirs, [x, x, x], need_weights=False)
    elif kind == "causal":     # PyTorch's module needs the mask itself (True = masked out there)
        ours_result = mha_grads(ours, [x], is_causal=True)
        theirs_result = mha_grads(theirs, [x, x, x], attn_mask=~causal_mask(5, 5), is_causal=True,
                                  need_weights=False)
    elif kind == "cross":
        ours_result = mha_grads(ours, [x] + memory)
        theirs_result = mha_grads(theirs, [x] + memory, need_weights=False)
    else:
        ours_result = mha_grads(ours, [x] + memory, attn_mask=mask)
        theirs_result = mha_grads(theirs, [x] + memory, attn_mask=~mask, need_weights=False)
    (out, x_grads, grads), (t_out, t_x_grads, t_grads) = ours_result, theirs_result
    assert out.shape == (2, 5, 12)
    test_near(out, t_out, atol=1e-12, rtol=1e-12)
    if len(x_grads) == 1: t_x_grads = [sum(t_x_grads)]    # PyTorch was given x three times
    for a, b in zip(x_grads, t_x_grads): test_near(a, b, atol=1e-12, rtol=1e-12)
    assert sorted(grads) == sorted(t_grads) and len(grads) == (4 if bias else 2)
    for name in grads: test_near(grads[name], t_grads[name], atol=1e-12, rtol=1e-12)


def test_multi_head_attention_dropout_only_in_training():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, dropout=0.5)
    x = torch.randn(2, 8, 16)
    mha.eval()
    test_near(mha(x), mha(x), atol=0)
    mha.train()
    assert not torch.allclose(mha(x), mha(x))


def test_copy_to_torch_round_trip_and_init_like_torch():
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 4).double()
    theirs = copy_to_torch(nn.MultiheadAttention(16, 4, batch_first=True).double(), ours)
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    test_near(ours(x), theirs(x, x, x, need_weights=False)[0], atol=1e-12)
    torch.manual_seed(0)
    fresh = MultiHeadAttention(64, 4)
    bound = math.sqrt(6 / (64 + 3 * 64))           # Xavier-uniform on the packed (3E, E) weight, as PyTorch
    assert fresh.in_proj.weight.abs().max() <= bound and fresh.in_proj.weight.abs().max() > 0.9 * bound
    assert (fresh.in_proj.bias == 0).all() and (fresh.out_proj.bias == 0).all()


def test_copy_and_module_errors():
    ours = MultiHeadAttention(12, 3)
    with pytest.raises(ValueError, match="batch_first=True"):
        copy_from_torch(ours, nn.MultiheadAttention(12, 3))
    with pytest.raises(ValueError, match="kdim/vdim"):
        copy_from_torch(ours, nn.MultiheadAttention(12, 3, kdim=5, vdim=5, batch_first=True))
    with pytest.raises(ValueError, match="embed_dim, num_heads: theirs 12, 4; ours 12, 3"):
        copy_from_torch(ours, nn.MultiheadAttention(12, 4, batch_first=True))
    with pytest.raises(TypeError, match="expected an nn.MultiheadAttention, got Linear"):
        copy_from_torch(ours, nn.Linear(12, 12))
    with pytest.raises(ValueError, match="embed_dim 12 is not divisible by num_heads 5"):
        MultiHeadAttention(12, 5)
    with pytest.raises(ValueError, match=r"embed_dim=12 features last; got query \(2, 4, 10\)"):
        ours(torch.randn(2, 4, 10))
    with pytest.raises(ValueError, match=r"attn_mask of shape \(4, 5\) does not broadcast"):
        ours(torch.randn(2, 4, 12), attn_mask=torch.ones(4, 5, dtype=torch.bool))


def test_sinusoidal_positions_closed_form():
    table = sinusoidal_positions(50, 16, offset=3)
    for p, i in [(0, 0), (7, 3), (46, 7), (20, 5)]:
        angle = (p + 3) / 10000 ** (2 * i / 16)
        assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    module = SinusoidalPositions(64, 16)
    x = torch.randn(2, 50, 16)
    test_near(module(x, offset=3), x + table)
    with pytest.raises(ValueError, match="dim must be even, not 7"):
        sinusoidal_positions(4, 7)


def test_learned_positions_offset_and_limit():
    positions = LearnedPositions(10, 4)
    x = torch.zeros(3, 4, 4)
    assert torch.equal(positions(x, offset=6)[1], positions.weight[6:10].detach())
    positions(x).sum().backward()
    assert (positions.weight.grad[:4] == 3).all() and (positions.weight.grad[4:] == 0).all()
    with pytest.raises(ValueError, match="positions 8..11 do not fit: this table has max_length=10"):
        positions(x, offset=8)


def test_rotary_equals_complex_rotation_and_sees_only_distance():
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    frequencies = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    angles = torch.arange(4, 13, dtype=torch.float64)[:, None] * frequencies
    expected = torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (4, 2)).contiguous()) * torch.polar(
        torch.ones_like(angles), angles)).flatten(-2)
    test_near(apply_rotary(x, offset=4), expected, atol=1e-12)
    test_near(apply_rotary(x).norm(dim=-1), x.norm(dim=-1), atol=1e-12)          # a rotation keeps lengths
    test_near(apply_rotary(x)[:, 4:], apply_rotary(x[:, 4:], offset=4), atol=1e-12)
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    def score(i, j): return apply_rotary(q[None], offset=i)[0] @ apply_rotary(k[None], offset=j)[0]
    test_near(score(3, 10), score(503, 510), atol=1e-9)
    assert abs(score(3, 10) - score(3, 11)) > 1e-3
