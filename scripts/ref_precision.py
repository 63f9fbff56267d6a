#!/usr/bin/env python3
"""float64 ground truth for the CPU backend's precision test (tests/test_precision.c).

    python3 scripts/ref_precision.py OUT_DIR

A one-layer Llama with Llama 3's vocabulary (128,256 tokens, hidden 64) and a PEFT LoRA on all seven
targets (r 8, nonzero B), one sequence of 128 tokens. The weights are drawn in fp32 and saved as
such; the loss and the LoRA gradients are then computed twice by transformers + PEFT from those
exact values: in float64 (the truth) and in float32 (what PyTorch's CPU build gives). Writes
  OUT_DIR/model/            config.json + model.safetensors (F32)
  OUT_DIR/adapter/          the PEFT adapter (F32)
  OUT_DIR/reference.safetensors
      input_ids, labels (I64, (1, T)); loss64, loss32 (F64, (1,));
      "<adapter key>.grad64" (F64) and "<adapter key>.grad32" (F32) for every LoRA tensor
The lm_head's backward sums over the whole vocabulary, which is what the test is about.
"""
import argparse
import os

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
T = 128


def config():
    return LlamaConfig(vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                       rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
                       bos_token_id=128000, eos_token_id=128001)


def build(out, generator):
    model = LlamaForCausalLM(config())
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            p.copy_(1 + 0.1 * noise if "norm" in name else 0.15 * noise)
    model.save_pretrained(os.path.join(out, "model"), safe_serialization=True)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS)
    peft = get_peft_model(model, lora)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))
    peft.save_pretrained(os.path.join(out, "adapter"))


def loss_and_grads(out, dtype, input_ids, labels):
    base = LlamaForCausalLM.from_pretrained(os.path.join(out, "model"), torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(base, os.path.join(out, "adapter"), is_trainable=True).to(dtype)
    model.train()
    loss = model(input_ids=input_ids, labels=labels).loss
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            grads[name.replace(".default", "")] = p.grad.detach().clone()
    return loss.detach(), grads


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    build(args.out, generator)
    input_ids = torch.randint(0, 128256, (1, T), generator=generator)
    labels = input_ids.clone()
    labels[0, :4] = -100
    tensors = {"input_ids": input_ids, "labels": labels}
    for dtype, suffix in ((torch.float64, "64"), (torch.float32, "32")):
        loss, grads = loss_and_grads(args.out, dtype, input_ids, labels)
        tensors["loss" + suffix] = loss.to(torch.float64).reshape(1)
        for name, g in grads.items():
            tensors[name + ".grad" + suffix] = g.contiguous()
    save_file(tensors, os.path.join(args.out, "reference.safetensors"))


if __name__ == "__main__":
    main()
