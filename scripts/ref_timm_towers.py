#!/usr/bin/env python3
"""Reference numbers for OpenVLA's two vision towers in timm's layout, on tiny random configs.

Runs in the test venv (.venv/, scripts/python_env.sh: timm 1.0.31 and torchvision beside the
pinned torch); its outputs are committed and the tests need no timm:

    .venv/bin/python3 scripts/ref_timm_towers.py

Writes tests/fixtures/vlm/:
  timm_dinov2.safetensors   state dict of timm's vit_large_patch14_reg4_dinov2 (class token, 4
                            registers, layer scale, pos_embed over the patches alone, nn.GELU,
                            LayerNorm eps 1e-6) shrunk to 16x16 pixels, patch 4, width 32, 3 blocks
  timm_siglip.safetensors   state dict of timm's vit_so400m_patch14_siglip_224 (no class token,
                            nn.GELU (timm's, not the tanh approximation), attention-pool head)
                            shrunk alike (mlp_ratio kept: fc1 119 wide)
  timm_io.safetensors       pixel_values (2, 3, 16, 16) and each tower's features (2, 16, 32):
                            get_intermediate_layers(n={depth - 2}) as OpenVLA's featurizers call
                            it (the second-to-last block's output, prefix tokens dropped, no norm)
"""
import os

import timm
import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "vlm")
TINY = dict(pretrained=False, img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=4, num_classes=0)


def randomize(model, generator):
    """Every parameter random (norm weights around 1), so no path is trivial."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            is_norm_weight = "norm" in name and name.endswith("weight")
            p.copy_(1.0 + 0.1 * noise if is_norm_weight else 0.1 * noise)


def tower(name, generator):
    model = timm.create_model(name, **TINY).eval()
    randomize(model, generator)
    return model


def features(model, pixels):
    with torch.no_grad():
        (out,) = model.get_intermediate_layers(pixels, n={len(model.blocks) - 2})
    return out.contiguous()


def main():
    generator = torch.Generator().manual_seed(0)
    dinov2 = tower("vit_large_patch14_reg4_dinov2", generator)
    siglip = tower("vit_so400m_patch14_siglip_224", generator)
    pixels = torch.randn(2, 3, 16, 16, generator=generator)
    save_file({k: v.contiguous() for k, v in dinov2.state_dict().items()}, os.path.join(OUT, "timm_dinov2.safetensors"))
    save_file({k: v.contiguous() for k, v in siglip.state_dict().items()}, os.path.join(OUT, "timm_siglip.safetensors"))
    io = {"pixel_values": pixels, "dinov2_features": features(dinov2, pixels), "siglip_features": features(siglip, pixels)}
    save_file(io, os.path.join(OUT, "timm_io.safetensors"))
    print({k: tuple(v.shape) for k, v in io.items()})


if __name__ == "__main__":
    main()
