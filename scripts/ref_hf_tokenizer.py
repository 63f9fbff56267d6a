"""Reference cases for data/hf_tokenizer*.c, made by Hugging Face `tokenizers` (Rust).

Trains three small BPE tokenizers whose tokenizer.json use the components the
shared gpt2/mistral fixtures do not: Llama 3's layout (tiktoken Split regex,
ByteLevel without regex, ignore_merges, special tokens, BOS template), a
SentencePiece-like one (NFC, Metaspace "first", byte_fallback, added tokens
with lstrip/rstrip/single_word/normalized) and a word-piece-like one
(end_of_word_suffix / continuing_subword_prefix, unk with fuse_unk, Split
behaviors, Strip/NFKC, BertProcessing, no decoder). Writes
tests/fixtures/hf_tokenizer/<name>/{tokenizer.json,reference.json}.

    python3 scripts/ref_hf_tokenizer.py
"""
import json
import os

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "hf_tokenizer")

TIKTOKEN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.",
    "I'm sure it's what they'd've wanted, isn't it? You'll see, we're fine.",
    "def train(model, lr=2e-4):\n    for step in range(10):\n        loss = model(x)\n        loss.backward()\n",
    "Describe the image. What is shown in this picture? A cat sitting on a mat next to a window.",
    "café naïve Ångström Äpfel résumé façade Zürich São Paulo",
    "Привет мир! Γειά σου Κόσμε! こんにちは世界 안녕하세요 数字和模型",
    "numbers 0 1 2 3 12 123 1234 3.14159 1,000,000 2024-01-31",
    "URLs like https://example.com/path?q=1&r=2 and emails a.b@c.org",
    "tabs\tand\nnewlines\r\nand more   spaces\u00a0here",
]

CASES = [
    "Hello world",
    " Hello world",
    "",
    "  leading spaces and trailing spaces   ",
    "tabs\tand\nnewlines\r\nand\n\n\nmore",
    "I'm sure it's what they'd've wanted, isn't it? YOU'LL SEE. DON'T. ſ's",
    "The quick brown fox jumps over the lazy dog. 1234567890",
    "def train(model, lr=2e-4):\n    for step in range(10):\n        loss = model(x)\n",
    "emoji 🦙🚀✨ and accents: café, naïve, Ångström, Äpfel",
    "decomposed: cafe\u0301 Ångstro\u0308m; compat: ﬁ ① Ⅻ ｆｕｌｌ",
    "Привет мир! Γειά σου Κόσμε! こんにちは世界 안녕하세요",
    "a\u00a0non-breaking\u2003em space\u200bzero-width\u0085next-line",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "text<|eot_id|>more <|eot_id|> spaced  <|eot_id|>  end",
    "<s>[INST] Describe the image. [/INST] A cat on a mat.</s>",
    "an <image> here, <image>glued, x<image>y, and  <mask>  stripped",
    "[WORD] alone, in[WORD]side, [WORD]x and café",
    "!!!???...,,,;;;:::---___===+++",
    "1 22 333 4444 55555 666666 7777777",
    "unseen: ✓ ☃ ᚠᛇᚻ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0001f9ff",
]


def byte_level_llama3():
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(TIKTOKEN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok.add_special_tokens(specials)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))]),
    ])
    return tok


def sentencepiece_like():
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="first"),
                                     decoders.ByteFallback(), decoders.Fuse()])
    byte_tokens = ["<0x%02X>" % b for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=900, min_frequency=1, show_progress=False,
                                  special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens)
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.add_special_tokens([AddedToken("<image>", lstrip=True, rstrip=False, normalized=False)])
    tok.add_tokens([AddedToken("<mask>", lstrip=True, rstrip=True, normalized=False),
                    AddedToken("[WORD]", single_word=True, normalized=False),
                    AddedToken("café", normalized=True)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    return tok


def wordpiece_like():
    tok = Tokenizer(models.BPE(unk_token="[UNK]", fuse_unk=True, continuing_subword_prefix="##",
                               end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Strip(),
                                           normalizers.Replace(Regex(r"\s+"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", behavior="removed"),
        pre_tokenizers.Split(Regex(r"\p{P}"), behavior="merged_with_previous"),
        pre_tokenizers.Split(Regex(r"\d"), behavior="contiguous"),
        pre_tokenizers.Split(Regex(r"[aeiou]+"), behavior="merged_with_next", invert=True),
    ])
    trainer = trainers.BpeTrainer(vocab_size=700, min_frequency=1, show_progress=False,
                                  special_tokens=["[UNK]", "[CLS]", "[SEP]"],
                                  continuing_subword_prefix="##", end_of_word_suffix="</w>")
    tok.train_from_iterator(CORPUS[:4] * 4, trainer)
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                   ("[CLS]", tok.token_to_id("[CLS]")))
    return tok


def cases(tok):
    out = []
    for text in CASES:
        plain = tok.encode(text, add_special_tokens=False)
        special = tok.encode(text, add_special_tokens=True)
        out.append({"text": text, "ids": plain.ids, "ids_with_special": special.ids,
                    "tokens": [tok.id_to_token(i) for i in plain.ids],
                    "decoded": tok.decode(plain.ids, skip_special_tokens=False),
                    "decoded_skip_special": tok.decode(special.ids, skip_special_tokens=True)})
    return out


def main():
    for name, build in [("llama3_style", byte_level_llama3), ("sentencepiece_style", sentencepiece_like),
                        ("wordpiece_style", wordpiece_like)]:
        tok = build()
        folder = os.path.join(OUT, name)
        os.makedirs(folder, exist_ok=True)
        tok.save(os.path.join(folder, "tokenizer.json"))
        reference = {"reference": "Hugging Face tokenizers %s (Rust), made by scripts/ref_hf_tokenizer.py"
                                  % tokenizers.__version__, "cases": cases(tok)}
        with open(os.path.join(folder, "reference.json"), "w", encoding="utf-8") as f:
            json.dump(reference, f, ensure_ascii=False, indent=1)
        print(name, tok.get_vocab_size(), "tokens,", len(CASES), "cases")


if __name__ == "__main__":
    main()
