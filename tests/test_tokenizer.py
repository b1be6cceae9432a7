"""The byte-level BPE tokenizer: merges against a naive recount and against Hugging Face `tokenizers`,
exact round trips on unseen text, special tokens, the JSON file and its errors."""
import json
import random
import re
import warnings

import pytest
import torch

from exp.data import load_tinyshakespeare
from exp.tokenizer import (
    GPT2_SPLIT_PATTERN,
    BPETokenizer,
    count_chunks,
    count_pairs,
    encode_chunk,
    learn_merges,
    merge_pair,
    split_on_special,
)

EOT = "<|endoftext|>"
UNSEEN = ["", " ", "café naïve", "🙂👍🏽 emoji", "東京は晴れ", "Ünïcödé\t\r\n  trailing ", "x² ½ Ⅻ e\u0301",
          "ÀÉÎÕÜ", "\x00\x7f control", "1234567890 3.14159", "a" * 500, "don't you'll I'M"]


@pytest.fixture(scope="module")
def corpus():
    return load_tinyshakespeare()


@pytest.fixture(scope="module")
def small(corpus):
    "A tokenizer trained on the first 100,000 characters at 400 ids, one of them `<|endoftext|>`."
    return BPETokenizer.train(corpus[:100_000], 400, special_tokens=[EOT])


def test_count_pairs_and_merge_pair():
    assert count_pairs([1, 2, 1, 2, 3]) == {(1, 2): 2, (2, 1): 1, (2, 3): 1}
    assert count_pairs([7]) == {}
    assert merge_pair([1, 2, 1, 2, 3], (1, 2), 9) == [9, 9, 3]
    assert merge_pair([5, 5, 5], (5, 5), 9) == [9, 5]  # left to right, never overlapping
    assert merge_pair([], (1, 2), 9) == []


def naive_merges(chunk_counts, n_merges):
    "Recount every pair of every chunk before each merge: slow and obviously right."
    words = {chunk: list(chunk.encode("utf-8")) for chunk in chunk_counts}
    merges = []
    for new_id in range(256, 256 + n_merges):
        counts = {}
        for chunk, ids in words.items():
            for pair in zip(ids, ids[1:]): counts[pair] = counts.get(pair, 0) + chunk_counts[chunk]
        if not counts: break
        best = max(counts.values())
        pair = min(p for p, c in counts.items() if c == best)  # ties: the smallest pair
        merges.append(pair)
        words = {chunk: merge_pair(ids, pair, new_id) for chunk, ids in words.items()}
    return merges


def test_incremental_merges_equal_a_naive_recount(corpus):
    counts = count_chunks(corpus[:30_000])
    assert learn_merges(counts, 80) == naive_merges(counts, 80)
    weird = {"aaaaaaa": 3, " aaa": 2, "abab": 5, "ba": 1, "🙂🙂": 2}  # overlapping and repeated pairs
    assert learn_merges(weird, 50) == naive_merges(weird, 50)
    assert len(learn_merges(weird, 50)) < 50  # it stops when no pair is left


def test_the_split_pattern_matches_gpt2s_regex_in_hugging_face(corpus):
    pre_tokenizers = pytest.importorskip("tokenizers").pre_tokenizers
    theirs = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    def hf_chunks(s): return [s[start:end] for _, (start, end) in theirs.pre_tokenize_str(s)]
    for s in [corpus[:200_000], "Hello world, it's 2026!   Café 🙂 東京 don't\n\nFirst  \t x", *UNSEEN[:6]]:
        assert re.findall(GPT2_SPLIT_PATTERN, s) == hf_chunks(s)
    # the known approximation: a numeric character that is not a decimal digit counts as a letter
    assert re.findall(GPT2_SPLIT_PATTERN, " x²") == [" x²"] and hf_chunks(" x²") == [" x", "²"]


def test_round_trip_is_exact_on_any_text(small, corpus):
    for s in UNSEEN + [corpus[-20_000:]]:
        ids = small.encode(s)
        assert all(type(i) is int and 0 <= i < len(small) for i in ids)
        assert small.decode(ids) == s
    rng = random.Random(0)
    for _ in range(200):  # random code points from every plane, surrogates excluded (they are not UTF-8)
        ranges = [(0, 0x80), (0x80, 0xD800), (0xE000, 0x110000)]
        code_points = [rng.randrange(*rng.choice(ranges)) for _ in range(rng.randrange(30))]
        s = "".join(map(chr, code_points))
        assert small.decode(small.encode(s)) == s
    assert small.encode("") == []
    assert small.decode([]) == ""


def test_merges_shorten_the_text_and_encoding_replays_training(small, corpus):
    held_out = corpus[-20_000:]
    assert len(small.encode(held_out)) < 0.7 * len(held_out.encode("utf-8"))
    assert len(small) == 400 and len(small.merges) == 400 - 256 - 1
    # encoding a chunk replays the merges in order: a token's own bytes encode to that token
    for token_id in range(256, 256 + len(small.merges)):
        assert encode_chunk(list(small.vocab[token_id]), small.ranks) == [token_id]


def test_a_smaller_vocabulary_is_a_prefix_of_the_merges(corpus):
    text = corpus[:50_000]
    assert BPETokenizer.train(text, 300).merges == BPETokenizer.train(text, 420).merges[:44]


def test_special_tokens_are_single_ids_never_merged():
    text = (f"the cat sat{EOT}the dog sat{EOT}" * 200) + "<|notspecial|> the end"
    tokenizer = BPETokenizer.train(text, 270, special_tokens=[EOT, "<pad>"])
    eot, pad = tokenizer.special_tokens[EOT], tokenizer.special_tokens["<pad>"]
    assert (eot, pad) == (268, 269) and len(tokenizer) == 270
    assert tokenizer.encode(EOT) == [eot]
    expected = tokenizer.encode("a") + [eot, eot, pad] + tokenizer.encode("b")
    assert tokenizer.encode(f"a{EOT}{EOT}<pad>b") == expected
    assert tokenizer.decode(tokenizer.encode(text)) == text
    plain = tokenizer.encode_ordinary(f"a{EOT}")  # user text that must not smuggle in a special token
    assert eot not in plain and len(plain) > 2 and tokenizer.decode(plain) == f"a{EOT}"
    # the special token occurs 400 times, yet no merge learnt its pieces
    assert not any(b"endoftext" in token or b"|>" in token for token in tokenizer.vocab[256:eot])
    assert split_on_special(f"{EOT}x{EOT}", [EOT]) == [EOT, "x", EOT]
    assert split_on_special("<a><ab>", ["<a", "<ab>"]) == ["<a", ">", "<ab>"]  # the longest first


def test_decode_accepts_tensors_and_replaces_cut_characters(small):
    ids = small.encode("🙂 ok")
    assert small.decode(torch.tensor(ids)) == "🙂 ok"
    assert small.decode(ids[:1]) == "\ufffd"  # the emoji's first byte alone is not a character


def test_save_and_load_a_plain_json_file(small, tmp_path, corpus):
    path = small.save(tmp_path / "tok.json")
    state = json.loads(path.read_text(encoding="utf-8"))
    assert state["special_tokens"] == [EOT] and len(state["merges"]) == len(small.merges)
    assert state["pattern"] == GPT2_SPLIT_PATTERN
    loaded = BPETokenizer.load(path)
    assert loaded.merges == small.merges and loaded.special_tokens == small.special_tokens
    sample = corpus[-5_000:] + EOT + "🙂 東京"
    assert loaded.encode(sample) == small.encode(sample)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no temporary file left


@pytest.mark.parametrize("content,expected", [
    ("", "not JSON text"),
    ('{"format": "foundations BPETokenizer", "vers', "not JSON text"),
    ("[1, 2]", "does not say format"),
    ('{"format": "tiktoken"}', "does not say format"),
    ('{"format": "foundations BPETokenizer", "version": 2}', "version 2, this code reads version 1"),
    ('{"format": "foundations BPETokenizer", "version": 1, "merges": []}', "no split pattern"),
    ('{"format": "foundations BPETokenizer", "version": 1, "pattern": "x", "special_tokens": []}',
     "no list of merges"),
    ('{"format": "foundations BPETokenizer", "version": 1, "pattern": "x", "merges": [[1, 2], [3, 257]], '
     '"special_tokens": []}', "merge 1 is [3, 257], want two ids below 257"),
    ('{"format": "foundations BPETokenizer", "version": 1, "pattern": "x", "merges": [[1, 2, 3]], '
     '"special_tokens": []}', "merge 0 is [1, 2, 3]"),
    ('{"format": "foundations BPETokenizer", "version": 1, "pattern": "x", "merges": [[1.0, 2]], '
     '"special_tokens": []}', "merge 0 is [1.0, 2]"),
    ('{"format": "foundations BPETokenizer", "version": 1, "pattern": "x", "merges": [], '
     '"special_tokens": "a"}',
     "no list of special tokens"),
    ('{"format": "foundations BPETokenizer", "version": 1, "pattern": "x", "merges": [], '
     '"special_tokens": ["a", "a"]}', "special tokens must be distinct"),
])
def test_loading_a_corrupt_file_says_which_and_what(tmp_path, content, expected):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(expected)) as error:
        BPETokenizer.load(path)
    assert str(path) in str(error.value) and "BPETokenizer.save" in str(error.value)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="not JSON text"): BPETokenizer.load(path)


def test_bad_input_gets_clear_errors(small):
    with pytest.raises(ValueError, match=r"cannot decode id 400: .* ids are 0 to 399 \(vocab_size=400\)"):
        small.decode([1, 2, 400])
    with pytest.raises(ValueError, match="cannot decode id -1"): small.decode([-1])
    with pytest.raises(TypeError): small.decode([1.5])
    with pytest.raises(TypeError, match="expected a str to tokenize, got bytes"): small.encode(b"abc")
    too_small = r"vocab_size=256 is too small: .* 1 special token\(s\), so vocab_size >= 257"
    with pytest.raises(ValueError, match=too_small):
        BPETokenizer.train("some text", 256, special_tokens=[EOT])
    with pytest.raises(ValueError, match="vocab_size >= 256"): BPETokenizer.train("some text", 100)
    with pytest.raises(ValueError, match="distinct"):
        BPETokenizer.train("text", 300, special_tokens=[EOT, EOT])
    with pytest.raises(ValueError, match="non-empty strings"):
        BPETokenizer.train("text", 300, special_tokens=[""])
    with pytest.raises(TypeError, match="got list"): BPETokenizer.train(["text"], 300)


def test_a_text_too_small_for_the_vocabulary_warns():
    expected = "ran out of pairs to merge after 3 of 44 merges: the vocabulary has 259 tokens, not 300"
    with pytest.warns(UserWarning, match=expected):
        tokenizer = BPETokenizer.train("abcd", 300)
    assert len(tokenizer) == 259 and tokenizer.encode("abcd") == [258]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(BPETokenizer.train("", 256)) == 256  # nothing to merge, nothing asked: no warning


def train_hf(text, vocab_size, special_tokens=()):
    "Hugging Face's byte-level BPE, set up as GPT-2's (no prefix space, the 256 bytes as the alphabet)."
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf.train_from_iterator([text], trainer)
    return hf


def test_compression_and_merges_match_hugging_face(corpus):
    pytest.importorskip("tokenizers")
    train, held_out = corpus[:150_000], corpus[-50_000:]
    ours, theirs = BPETokenizer.train(train, 500, [EOT]), train_hf(train, 500, [EOT])
    assert theirs.get_vocab_size() == len(ours) == 500
    ours_per_char = len(ours.encode(held_out)) / len(held_out)
    theirs_per_char = len(theirs.encode(held_out).ids) / len(held_out)
    assert abs(ours_per_char / theirs_per_char - 1) < 0.02, (ours_per_char, theirs_per_char)
    as_bytes = lambda token: theirs.decoder.decode([token]).encode("utf-8")
    their_order = [tuple(as_bytes(t) for t in (m.split(" ") if isinstance(m, str) else m))
                   for m in json.loads(theirs.to_str())["model"]["merges"]]
    their_merges = set(their_order)
    our_merges = [(ours.vocab[a], ours.vocab[b]) for a, b in ours.merges]
    assert len(set(our_merges) & their_merges) >= 0.95 * len(our_merges)
    # the orders differ only among ties: replayed on the chunks, each merge occurs as often in both
    # (leaving out the pairs tied with the last merge: which of those made the cut is a tie too)
    chunk_counts = count_chunks(train)
    ours_counts, theirs_counts = replay_counts(our_merges, chunk_counts), replay_counts(their_order,
                                               chunk_counts)
    assert sorted(ours_counts.values(), reverse=True) == list(ours_counts.values())  # most frequent first
    last = min(ours_counts.values())
    assert min(theirs_counts.values()) == last
    above_last = {merge: count for merge, count in ours_counts.items() if count > last}
    assert above_last == {merge: count for merge, count in theirs_counts.items() if count > last}
    assert len(above_last) > 0.9 * len(ours_counts)
    assert theirs.encode(EOT).ids == [theirs.token_to_id(EOT)] and ours.encode(EOT) == [499]


def replay_counts(merges, chunk_counts):
    """{merge: how often its pair occurs when it is made}, replaying byte-string `merges` on the chunks in
    order."""
    words = [[bytes([b]) for b in chunk.encode("utf-8")] for chunk in chunk_counts]
    weights, chunks = list(chunk_counts.values()), [chunk.encode("utf-8") for chunk in chunk_counts]
    counts = {}
    for pair in merges:
        counts[pair] = 0
        for w, tokens in enumerate(words):
            if pair[0] + pair[1] not in chunks[w]: continue  # a quick test that most chunks fail
            counts[pair] += weights[w] * sum(p == pair for p in zip(tokens, tokens[1:]))
            words[w] = [pair[0] + pair[1] if t == -1 else t for t in merge_pair(tokens, pair, -1)]
    return counts
