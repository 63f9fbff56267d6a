"""Writes a synthetic tokenizer.json shaped like Llama 3's (for timing the C loader).

128,000 byte-level BPE tokens built by merges, plus the other splits of the same
tokens as extra merges (about 129,000 merges, 7 MB; Llama 3 has 280,000 merges,
9 MB), the tiktoken Split regex, ignore_merges, 256 special
tokens from 128000 and the BOS template. Random, not a real vocabulary.

    python3 scripts/make_large_tokenizer.py /tmp/large_tokenizer.json
"""
import json
import random
import sys

TIKTOKEN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def byte_chars():
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def main(path, n_tokens=128000, n_merges=280000):
    rng = random.Random(0)
    tokens = byte_chars()
    vocab = {t: i for i, t in enumerate(tokens)}
    merges, splits = [], {}
    while len(tokens) < n_tokens:
        a, b = rng.choice(tokens[: 2000 + len(tokens) // 2]), rng.choice(tokens[:2000])
        if len(a) + len(b) > 16 or a + b in vocab:
            continue
        vocab[a + b] = len(tokens)
        tokens.append(a + b)
        merges.append([a, b])
        splits.setdefault(a + b, {a})
    seen = {tuple(m) for m in merges}
    for t in tokens[256:]:  # other splits of existing tokens, as Llama 3 has
        for cut in range(1, len(t)):
            pair = (t[:cut], t[cut:])
            if len(merges) < n_merges and pair[0] in vocab and pair[1] in vocab and pair not in seen:
                seen.add(pair)
                merges.append(list(pair))
    specials = ["<|begin_of_text|>", "<|end_of_text|>"] + ["<|reserved_special_token_%d|>" % i for i in range(254)]
    added = [{"id": n_tokens + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, s in enumerate(specials)]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": TIKTOKEN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "TemplateProcessing", "single": [
            {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [], "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [n_tokens],
                                                                  "tokens": ["<|begin_of_text|>"]}}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": [" ".join(m) for m in merges]},
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1])
