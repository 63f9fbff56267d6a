#!/usr/bin/env python3
"""Loads a merged folder written by `lora-train export --format merged` with transformers and checks
its logits against the PEFT reference of scripts/ref_hf.py (base + adapter, unmerged).

    python3 scripts/check_merged_hf.py MERGED_DIR tests/fixtures/hf/llama/reference.safetensors

Exits 1 when the relative error max|ours - ref| / max|ref| is 1e-4 or more.
"""
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, LlavaForConditionalGeneration


def main():
    merged_dir, reference_path = sys.argv[1], sys.argv[2]
    ref = load_file(reference_path)
    config = AutoConfig.from_pretrained(merged_dir)
    cls = LlavaForConditionalGeneration if config.model_type == "llava" else AutoModelForCausalLM
    model = cls.from_pretrained(merged_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"]).logits
    error = ((logits - ref["logits"]).abs().max() / ref["logits"].abs().max()).item()
    print(f"merged model in transformers vs PEFT reference: relative error {error:.3g}")
    sys.exit(0 if error < 1e-4 else 1)


if __name__ == "__main__":
    main()
