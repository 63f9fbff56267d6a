"""Tokenizer throughput beside bench/bench_tokenizer.c, in the same run.

Writes a large mixed text (English prose, code, numbers, accents, Cyrillic,
Greek, CJK, emoji, whitespace runs; documents separated by "\\x1e", seeded),
then for each tokenizer.json encodes every document once, without special
tokens, with Hugging Face `tokenizers` on one thread (encode, document by
document) and runs build/bench/bench_tokenizer on the same file; the ids'
count and sum must agree.

    python3 scripts/bench_tokenizer.py [MB]        (from the repo root, after the build)
"""
import os
import random
import subprocess
import sys
import tempfile
import time

from tokenizers import Tokenizer

TOKENIZERS = [
    "tests/fixtures/hf_tokenizer/llama3_style/tokenizer.json",
    "tests/fixtures/hf_tokenizer/sentencepiece_style/tokenizer.json",
    "../shared/fixtures/tokenizers/gpt2/tokenizer.json",
    "../shared/fixtures/tokenizers/mistral/tokenizer.json",
]

PARAGRAPHS = [
    "The quick brown fox jumps over the lazy dog. I'm sure it's what they'd've wanted, isn't it?",
    "Describe the image in detail. A cat is sitting on a wooden table next to a window; the light is soft.",
    "def train(model, lr=2e-4):\n    for step in range(10):\n        loss = model(x)\n        loss.backward()\n",
    "    if (n_label_tokens > 0) {\n\tgrad_scale = 1.0f / (float)n_label_tokens;\n    }\n",
    "café naïve Ångström Äpfel résumé façade Zürich São Paulo — “quoted” ‘text’ …",
    "Привет мир! Это проверка токенизатора. Γειά σου Κόσμε! こんにちは世界、元気ですか。数字和模型 안녕하세요",
    "numbers 0 1 2 3 12 123 1234 3.14159 1,000,000 2024-01-31 0xDEADBEEF 1e-5",
    "emoji 🦙🚀✨👍🏽 and URLs like https://example.com/path?q=1&r=2 and a.b@c.org",
    "tabs\tand\nnewlines\r\nand   many     spaces\u00a0non-breaking\n\n\n",
]


def make_text(megabytes, seed=0):
    rng = random.Random(seed)
    docs, size = [], 0
    while size < megabytes * 1_000_000:
        words = [rng.choice(PARAGRAPHS) for _ in range(rng.randint(3, 12))]
        words.append(" ".join(str(rng.randint(0, 10**rng.randint(1, 9))) for _ in range(rng.randint(1, 5))))
        doc = " ".join(words)
        docs.append(doc)
        size += len(doc.encode()) + 1
    return "\x1e".join(docs)


def bench_python(path, docs, size):
    start = time.perf_counter()
    tok = Tokenizer.from_file(path)
    load = time.perf_counter() - start
    start = time.perf_counter()
    n_ids = id_sum = 0
    for doc in docs:
        ids = tok.encode(doc, add_special_tokens=False).ids
        n_ids += len(ids)
        id_sum += sum(ids)
    seconds = time.perf_counter() - start
    print(f"tokenizers  {path:<40} load {load:.3f} s  {len(docs)} docs {size / 1e6:.1f} MB -> {n_ids} ids "
          f"(sum {id_sum}) in {seconds:.2f} s: {size / 1e6 / seconds:.2f} MB/s")
    return n_ids, id_sum


def main():
    megabytes = float(sys.argv[1]) if len(sys.argv) > 1 else 4
    os.environ["RAYON_NUM_THREADS"] = "1"
    text = make_text(megabytes)
    data = text.encode()
    with tempfile.NamedTemporaryFile(suffix=".txt", delete=False) as f:
        f.write(data)
    docs = text.split("\x1e")
    status = 0
    for path in TOKENIZERS:
        if not os.path.exists(path):
            print(f"{path}: missing, skipped")
            continue
        n_ids, id_sum = bench_python(path, docs, len(data))
        out = subprocess.run(["build/bench/bench_tokenizer", path, f.name], capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr.strip())
        if f"-> {n_ids} ids (sum {id_sum})" not in out.stdout:
            print("  ids differ from tokenizers'")
            status = 1
    os.unlink(f.name)
    return status


if __name__ == "__main__":
    sys.exit(main())
