#!/usr/bin/env python3
"""Logits of a llava-hf model as transformers + PEFT serve what lora-train exported, for
tests/test_llava_hf.c.

    python3 scripts/check_llava_exports.py INPUTS OUT --base MODEL_DIR [--adapter ADAPTER_DIR]
    python3 scripts/check_llava_exports.py INPUTS OUT --merged MERGED_DIR
    python3 scripts/check_llava_exports.py INPUTS OUT --base MODEL_DIR --adapter ADAPTER_DIR --grads
    python3 scripts/check_llava_exports.py IMAGE OUT --processor MODEL_DIR

INPUTS: safetensors with input_ids (I64, (1, T)) and pixel_values (F32, (1, 3, S, S)).
--base: LlavaForConditionalGeneration.from_pretrained(MODEL_DIR), with --adapter wrapped by
PeftModel.from_pretrained (the LoRA and the modules_to_save projector). --merged:
from_pretrained(MERGED_DIR), and AutoProcessor.from_pretrained(MERGED_DIR) must load and
expand one <image> to as many image tokens as INPUTS holds. OUT: safetensors with logits
(F32, (1, T, V)). Forward in fp32 on the CPU. --grads: INPUTS also holds labels (I32, (1, T),
-100 = none, unshifted as transformers takes them); OUT holds loss (F32, (1,)) and, for every
trainable tensor (LoRA and the modules_to_save projector), "<adapter key>.grad". --processor: OUT holds pixel_values (F32,
(1, 3, S, S)) of the image file IMAGE as AutoProcessor.from_pretrained(MODEL_DIR, backend="pil") makes them:
Pillow's image processor, whose arithmetic lora-train's preprocessing follows (with torchvision installed,
transformers would pick its torchvision one, whose resize differs by up to 2 / 255).
"""
import argparse

import torch
from PIL import Image
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor, LlavaForConditionalGeneration


def check_processor(merged_dir, input_ids, image_token_index):
    processor = AutoProcessor.from_pretrained(merged_dir, backend="pil")
    image = torch.zeros(3, 40, 30, dtype=torch.uint8)
    batch = processor(images=[image], text=["<image> hi"], return_tensors="pt")
    expanded = int((batch["input_ids"] == image_token_index).sum())
    wanted = int((input_ids == image_token_index).sum())
    assert expanded == wanted, f"AutoProcessor expands <image> to {expanded} tokens, the inputs hold {wanted}"
    print(f"AutoProcessor.from_pretrained({merged_dir}): {type(processor).__name__}, {expanded} image tokens")


def loss_and_grads(model, inputs):
    """The mean cross-entropy over label tokens and its gradients, keyed as in adapter_model.safetensors."""
    out = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], labels=inputs["labels"].long())
    out.loss.backward()
    tensors = {"loss": out.loss.detach().reshape(1)}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = name.replace(".modules_to_save.default", "").replace(".default", "")
            tensors[key + ".grad"] = p.grad.detach().contiguous()
    return tensors


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("inputs")
    parser.add_argument("out")
    parser.add_argument("--base")
    parser.add_argument("--adapter")
    parser.add_argument("--merged")
    parser.add_argument("--processor")
    parser.add_argument("--grads", action="store_true")
    args = parser.parse_args()
    if args.processor:
        processor = AutoProcessor.from_pretrained(args.processor, backend="pil")
        pixels = processor.image_processor(images=[Image.open(args.inputs).convert("RGB")], return_tensors="pt")
        save_file({"pixel_values": pixels["pixel_values"].float().contiguous()}, args.out)
        return
    inputs = load_file(args.inputs)
    inputs["input_ids"] = inputs["input_ids"].long()
    model = LlavaForConditionalGeneration.from_pretrained(args.merged or args.base, dtype=torch.float32)
    if args.adapter:
        model = PeftModel.from_pretrained(model, args.adapter, is_trainable=args.grads)
    model.eval()
    if args.grads:
        save_file(loss_and_grads(model, inputs), args.out)
        return
    if args.merged:
        check_processor(args.merged, inputs["input_ids"], model.config.image_token_index)
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"]).logits.float()
    save_file({"logits": logits.contiguous()}, args.out)


if __name__ == "__main__":
    main()
