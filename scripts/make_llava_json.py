#!/usr/bin/env python3
"""Writes a synthetic LLaVA-1.5 mix665k-sized dataset (default 665,298 records,
about 1 GB) for bench_llava_index: records shaped like llava_v1_5_mix665k.json
(id, image, multi-turn human/gpt conversations, ~1 in 6 text-only), streamed to
disk so this script itself stays small in memory.

usage: scripts/make_llava_json.py OUT.json [--records N] [--jsonl]
"""
import argparse
import json
import random


def record(i, rng):
    turns = []
    for t in range(rng.randint(1, 6)):
        question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) + "?"
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 220))) + "."
        if t == 0 and i % 6:
            question = "<image>\n" + question
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    r = {"id": f"{i:012d}", "conversations": turns}
    if i % 6:
        r["image"] = f"coco/train2017/{i:012d}.jpg"
    return r


WORDS = ("the a image shows person red blue cat dog street table {brace} [bracket] \"quoted\" "
         "back\\slash caf\u00e9 window car tree sky two three left right").split()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--records", type=int, default=665298)
    parser.add_argument("--jsonl", action="store_true")
    args = parser.parse_args()
    rng = random.Random(0)
    with open(args.out, "w", encoding="utf-8") as f:
        if not args.jsonl:
            f.write("[\n")
        for i in range(args.records):
            text = json.dumps(record(i, rng), indent=None if args.jsonl else 2)
            if args.jsonl:
                f.write(text + "\n")
            else:
                f.write(("  " if i == 0 else ",\n  ") + text)
        if not args.jsonl:
            f.write("\n]\n")


if __name__ == "__main__":
    main()
