#!/usr/bin/env python3
"""Reference gradients of LoRA on OpenVLA's two vision towers in timm's layout (tests/test_tower_lora.c).

Runs in the test venv (.venv/, scripts/python_env.sh: timm 1.0.31, peft 0.21.2); its output is
committed and the tests need neither. Seeded (torch's global generator too, which PEFT's gaussian
lora_A draws from), so a rerun writes the same bytes:

    .venv/bin/python3 scripts/ref_tower_lora.py

The towers are the tiny ones of scripts/ref_timm_towers.py, their weights read back from
tests/fixtures/vlm/timm_{dinov2,siglip}.safetensors and the pixels from timm_io.safetensors.
Each is wrapped as OpenVLA wraps its whole model (PEFT LoRA, init_lora_weights="gaussian", no
dropout), here r 4, alpha 8, on every nn.Linear of the blocks: attn.qkv (one module for q, k and
v), attn.proj, mlp.fc1, mlp.fc2. lora_B is then set random (PEFT starts it at zero) so that every
gradient is non-trivial. The features are get_intermediate_layers(n={depth - 2}) as OpenVLA's
featurizers call it, the loss sum(features * G) for a fixed random G, in float64 (saved as fp32).

Writes tests/fixtures/vlm/tower_lora.safetensors, for tower in (dinov2, siglip):
  <tower>.lora.<module>.lora_{A,B}.weight   the adapters, PEFT's names less "base_model.model."
                                            and the adapter name (blocks.0.attn.qkv.lora_A.weight)
  <tower>.grad.<same>                       dL/d of each adapter the features reach (not the last
                                            block's: the features stop before it)
  <tower>.G, <tower>.features               (2, 16, 32): the loss weights and the features

It also prints the modules PEFT's target_modules="all-linear" wraps in each tower (OpenVLA's
recipe): the blocks' four linears, and in SigLIP the attention-pool head's too (attn_pool.q, kv,
proj, mlp.fc1, mlp.fc2), which get_intermediate_layers never runs.
"""
import os
import re

import timm
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "vlm")
TINY = dict(pretrained=False, img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=4, num_classes=0)
TOWERS = {"dinov2": "vit_large_patch14_reg4_dinov2", "siglip": "vit_so400m_patch14_siglip_224"}
BLOCK_LINEARS = r"blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"


def tower(key):
    model = timm.create_model(TOWERS[key], **TINY)
    model.load_state_dict(load_file(os.path.join(FIXTURES, f"timm_{key}.safetensors")))
    return model.to(torch.float64).eval()


def all_linear_modules(key):
    model = get_peft_model(tower(key), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    return sorted(name.removeprefix("base_model.model.") for name, module in model.named_modules()
                  if hasattr(module, "lora_A") and isinstance(module.base_layer, torch.nn.Linear))


def adapter_name(peft_name):
    """base_model.model.blocks.0.attn.qkv.lora_A.default.weight -> blocks.0.attn.qkv.lora_A.weight"""
    return peft_name.removeprefix("base_model.model.").replace(".default.", ".")


def reference(key, pixels, generator):
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=BLOCK_LINEARS,
                        init_lora_weights="gaussian")
    model = get_peft_model(tower(key), config)
    adapters = {name: p for name, p in model.named_parameters() if "lora_" in name}
    with torch.no_grad():
        for name, p in adapters.items():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator, dtype=torch.float64))
    inner = model.base_model.model
    (features,) = inner.get_intermediate_layers(pixels.to(torch.float64), n={len(inner.blocks) - 2})
    G = torch.randn(features.shape, generator=generator, dtype=torch.float64)
    (features * G).sum().backward()
    out = {f"{key}.G": G, f"{key}.features": features.detach()}
    for name, p in adapters.items():
        out[f"{key}.lora.{adapter_name(name)}"] = p.detach()
        if p.grad is not None:
            out[f"{key}.grad.{adapter_name(name)}"] = p.grad
    n_grads = sum(1 for k in out if ".grad." in k)
    print(f"{key}: {len(adapters)} adapter matrices, {n_grads} with gradients")
    return out


def main():
    torch.manual_seed(15)  # PEFT's gaussian lora_A and timm's (overwritten) initialisation draw from it
    generator = torch.Generator().manual_seed(15)
    pixels = load_file(os.path.join(FIXTURES, "timm_io.safetensors"))["pixel_values"]
    fixture = {}
    for key in TOWERS:
        fixture.update(reference(key, pixels, generator))
        print(f"{key}: all-linear wraps {all_linear_modules(key)}")
    assert all(re.match(BLOCK_LINEARS, k.split(".", 2)[2]) for k in fixture if ".lora." in k)
    save_file({k: v.to(torch.float32).contiguous() for k, v in fixture.items()},
              os.path.join(FIXTURES, "tower_lora.safetensors"))


if __name__ == "__main__":
    main()
