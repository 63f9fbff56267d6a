#!/usr/bin/env python3
"""Reference token ids, label masks and loader batches for tests/test_data.c.

    python3 scripts/ref_data.py   # writes tests/fixtures/data/{records.jsonl,expected.json}

The byte tokenizer's ids are Python's UTF-8 bytes of the text plus the special
ids of data/data.h; chats render as <bos> (<|role|> content [<eos>])*, labels on
assistant content and its <eos>. The loader's next-token targets are computed
as Hugging Face's causal-LM loss shifts them (labels[..., 1:]), with sequences
padded by torch.nn.utils.rnn.pad_sequence, and n_label_tokens counted by torch.
"""
import json
import os

import torch
from torch.nn.utils.rnn import pad_sequence

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "data")
IGNORE_INDEX = -100
SPECIALS = ["<bos>", "<eos>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
BOS, EOS, PAD = 256, 257, 258
ROLE_MARKER = {"system": 259, "user": 260, "assistant": 261}
MAX_SEQ_LEN = 40

RECORDS = [
    {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
    ]},
    {"text": "Caf\u00e9 \u2615 \u65e5\u672c \U0001F600"},
    {"messages": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "6, \u00e9t\u00e9"},
    ]},
    {"messages": [
        {"role": "user", "content": "Tell me a long story, please, with many words in it."},
        {"role": "assistant", "content": "Once upon a time there was a very long answer."},
    ]},
    {"text": "short"},
]

# (micro_batch, grad_accum, world_size, rank): first step of an unshuffled epoch.
LOADER_CASES = [(2, 2, 1, 0), (1, 2, 2, 1)]


def render(record):
    if "text" in record:
        body = list(record["text"].encode("utf-8"))
        return [BOS] + body + [EOS], [IGNORE_INDEX] + body + [EOS]
    ids, labels = [BOS], [IGNORE_INDEX]
    for message in record["messages"]:
        trained = message["role"] == "assistant"
        body = list(message["content"].encode("utf-8"))
        ids += [ROLE_MARKER[message["role"]]] + body
        labels += [IGNORE_INDEX] + (body if trained else [IGNORE_INDEX] * len(body))
        if trained:
            ids.append(EOS)
            labels.append(EOS)
    return ids, labels


def decode(ids):
    out = bytearray()
    for i in ids:
        out += bytes([i]) if i < 256 else SPECIALS[i - 256].encode()
    return out.decode("utf-8")


def loader_step(samples, micro_batch, grad_accum, world_size, rank):
    """The first optimizer step of an unshuffled epoch, as HF would shift it."""
    rows = [samples[row * world_size + rank] for row in range(micro_batch * grad_accum)]
    ids = pad_sequence([torch.tensor(s["ids"]) for s in rows], batch_first=True, padding_value=PAD)
    labels = pad_sequence([torch.tensor(s["labels"]) for s in rows], batch_first=True,
                          padding_value=IGNORE_INDEX)
    ids = torch.nn.functional.pad(ids, (0, MAX_SEQ_LEN - ids.shape[1]), value=PAD)
    labels = torch.nn.functional.pad(labels, (0, MAX_SEQ_LEN - labels.shape[1]), value=IGNORE_INDEX)
    shift_labels = torch.nn.functional.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)
    return {
        "micro_batch": micro_batch, "grad_accum": grad_accum, "world_size": world_size, "rank": rank,
        "tokens": ids.flatten().tolist(),
        "targets": shift_labels.flatten().tolist(),
        "n_label_tokens": int((shift_labels != IGNORE_INDEX).sum()),
    }


def main():
    os.makedirs(FIXTURES, exist_ok=True)
    samples = []
    for record in RECORDS:
        ids, labels = render(record)
        samples.append({"ids": ids[:MAX_SEQ_LEN], "labels": labels[:MAX_SEQ_LEN],
                        "truncated": len(ids) > MAX_SEQ_LEN, "decoded": decode(ids[:MAX_SEQ_LEN])})
    expected = {
        "max_seq_len": MAX_SEQ_LEN,
        "samples": samples,
        "loader": [loader_step(samples, *case) for case in LOADER_CASES],
    }
    with open(os.path.join(FIXTURES, "records.jsonl"), "w", encoding="utf-8") as f:
        for record in RECORDS:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.write("\n")
    with open(os.path.join(FIXTURES, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
