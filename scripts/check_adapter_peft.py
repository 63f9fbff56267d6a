#!/usr/bin/env python3
"""Loads a lora-train model folder with transformers and its adapter with PEFT,
and prints the logits of a fixed input: proof that PEFT accepts both. The base
may be a LlamaForCausalLM or a LlavaForConditionalGeneration (text-only input).

    python3 scripts/check_adapter_peft.py MODEL_DIR ADAPTER_DIR [--tokens 1,2,3] [--out logits.json]

--out writes {"tokens": [...], "shape": [1, T, V], "logits": [flat fp32 values]}.
"""
import argparse
import json

import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, LlavaForConditionalGeneration


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("adapter_dir")
    parser.add_argument("--tokens", default="1,5,9,2,7,3,8,4")
    parser.add_argument("--out")
    args = parser.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    llava = AutoConfig.from_pretrained(args.model_dir).model_type == "llava"
    cls = LlavaForConditionalGeneration if llava else AutoModelForCausalLM
    base = cls.from_pretrained(args.model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, args.adapter_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tokens])).logits.float()
    torch.set_printoptions(precision=6, threshold=64)
    print(f"logits {list(logits.shape)}:\n{logits}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"tokens": tokens, "shape": list(logits.shape), "logits": logits.flatten().tolist()}, f)


if __name__ == "__main__":
    main()
