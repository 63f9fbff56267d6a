#!/usr/bin/env python3
"""Reference safetensors files for tests/test_safetensors.c, written by the
`safetensors` package from torch tensors.

    python3 scripts/ref_safetensors.py            # writes tests/fixtures/safetensors/
    python3 scripts/ref_safetensors.py --verify F # F must hold the reference tensors

reference.safetensors holds F32, BF16, F16 and I64 tensors and metadata;
expected.json lists every tensor's dtype, shape and values as torch reads them
(floats widened to fp32 exactly), so the C reader is compared with torch.
"""
import argparse
import json
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "safetensors")
METADATA = {"format": "pt", "producer": "ref_safetensors.py"}


def reference_tensors():
    g = torch.Generator().manual_seed(1234)
    return {
        "embed.weight": torch.randn(5, 3, generator=g),
        "layer.bf16": (torch.randn(2, 3, 4, generator=g) * 10).to(torch.bfloat16),
        "layer.f16": torch.randn(7, generator=g).to(torch.float16),
        "ids": torch.tensor([[0, -1, 2**40 + 3], [-(2**62), 7, 42]], dtype=torch.int64),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }


def write_fixtures():
    os.makedirs(FIXTURES, exist_ok=True)
    tensors = reference_tensors()
    save_file(tensors, os.path.join(FIXTURES, "reference.safetensors"), metadata=METADATA)
    expected = {"metadata": METADATA, "tensors": {}}
    for name, t in tensors.items():
        values = t.flatten().tolist() if t.dtype == torch.int64 else t.float().flatten().tolist()
        expected["tensors"][name] = {"dtype": str(t.dtype).replace("torch.", ""),
                                     "shape": list(t.shape), "values": values}
    with open(os.path.join(FIXTURES, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)


def verify(path):
    reference = load_file(os.path.join(FIXTURES, "reference.safetensors"))
    found = load_file(path)
    if sorted(found) != sorted(reference):
        sys.exit(f"{path}: keys {sorted(found)} differ from {sorted(reference)}")
    for name, want in reference.items():
        got = found[name]
        if got.dtype != want.dtype or got.shape != want.shape or not torch.equal(got, want):
            sys.exit(f"{path}: tensor {name} differs ({got.dtype} {list(got.shape)})")
    with safe_open(path, "pt") as f:
        if f.metadata() != METADATA:
            sys.exit(f"{path}: metadata {f.metadata()} differs from {METADATA}")
    with open(path, "rb") as f:
        header_length = int.from_bytes(f.read(8), "little")
    if (8 + header_length) % 8:
        sys.exit(f"{path}: data starts at {8 + header_length}, not a multiple of 8")
    print(f"{path}: {len(found)} tensors and metadata identical to the reference")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--verify", metavar="FILE")
    args = parser.parse_args()
    verify(args.verify) if args.verify else write_fixtures()
