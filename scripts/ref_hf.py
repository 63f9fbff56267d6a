#!/usr/bin/env python3
"""Reference outputs of tiny random Hugging Face models with PEFT LoRA, for tests/test_hf_reference.c.

    python3 scripts/ref_hf.py [--out tests/fixtures/hf]

Writes, for a LlamaForCausalLM ("llama") and a LlavaForConditionalGeneration ("llava"):
  <name>/model/            config.json + model.safetensors (fp32, save_pretrained)
  <name>/adapter/          PEFT adapter, all seven targets of the language model, nonzero B
  <name>/reference.safetensors
      input_ids, labels (I64, (1, T)), logits (F32, (1, T, V)), loss (F32, (1,)),
      and "<adapter key>.grad" for every LoRA tensor: d loss / d tensor
and the same weights in other layouts and dtypes, for the loading tests:
  llama/sharded/           two shards (BF16 then F16) + model.safetensors.index.json
  llava/new_layout/        the model.language_model.* layout of transformers >= 4.52 (its module
                           paths; save_pretrained still writes language_model.model.*), two F32 shards
Forward in fp32 on the CPU, lora_dropout 0. Inputs are fixed; labels mask the first 3 tokens.
"""
import argparse
import json
import os

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionConfig, LlamaConfig, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
INPUT_IDS = [1, 17, 42, 5, 88, 63, 9, 30, 71, 2]


def text_config():
    return LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                       rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                       bos_token_id=1, eos_token_id=2)


def randomize(model, generator):
    """Base weights with more signal than transformers' 0.02 init; norms around 1."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            p.copy_(1 + 0.1 * noise if "norm" in name else 0.15 * noise)


def llama_model(generator):
    model = LlamaForCausalLM(text_config())
    randomize(model, generator)
    return model


def llava_model(generator):
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=16, patch_size=8, projection_dim=16)
    config = LlavaConfig(vision_config=vision, text_config=text_config(), image_token_index=95,
                         tie_word_embeddings=False)
    model = LlavaForConditionalGeneration(config)
    randomize(model, generator)
    return model


def peft_wrap(model, targets, generator):
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, bias="none")
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
    return peft_model


def reference(peft_model, adapter_dir):
    """Logits, loss and LoRA gradients, keyed as in the saved adapter."""
    input_ids = torch.tensor([INPUT_IDS])
    labels = input_ids.clone()
    labels[0, :3] = -100
    out = peft_model(input_ids=input_ids, labels=labels)
    out.loss.backward()
    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    grads = {}
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            key = name.replace(".default", "")
            assert key in saved, f"{key} not among the adapter's keys"
            grads[key + ".grad"] = p.grad.detach().clone().contiguous()
    assert len(grads) == len(saved), "every adapter tensor has a gradient"
    tensors = {"input_ids": input_ids, "labels": labels, "logits": out.logits.detach().float().contiguous(),
               "loss": out.loss.detach().reshape(1)}
    tensors.update(grads)
    return tensors


def write_sharded(state, out_dir, dtypes):
    """state split into len(dtypes) shards in key order, shard i in dtypes[i], with the index."""
    os.makedirs(out_dir, exist_ok=True)
    keys = sorted(state)
    per_shard = (len(keys) + len(dtypes) - 1) // len(dtypes)
    weight_map = {}
    for i, dtype in enumerate(dtypes):
        shard = f"model-{i + 1:05d}-of-{len(dtypes):05d}.safetensors"
        part = {k: state[k].to(dtype).contiguous() for k in keys[i * per_shard:(i + 1) * per_shard]}
        save_file(part, os.path.join(out_dir, shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def build(name, make_model, targets, out_root, seed):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = make_model(generator).eval()
    root = os.path.join(out_root, name)
    model.save_pretrained(os.path.join(root, "model"), safe_serialization=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    peft_model = peft_wrap(model, targets, generator)
    adapter_dir = os.path.join(root, "adapter")
    peft_model.save_pretrained(adapter_dir)
    os.remove(os.path.join(adapter_dir, "README.md"))
    save_file(reference(peft_model, adapter_dir), os.path.join(root, "reference.safetensors"))
    return root, state


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="tests/fixtures/hf")
    args = parser.parse_args()
    root, state = build("llama", llama_model, TARGETS, args.out, 1)
    write_sharded(state, os.path.join(root, "sharded"), [torch.bfloat16, torch.float16])
    llava_targets = r".*language_model.*\.(" + "|".join(TARGETS) + ")"
    root, state = build("llava", llava_model, llava_targets, args.out, 2)
    write_sharded(state, os.path.join(root, "new_layout"), [torch.float32, torch.float32])
    for sub in ("llama/sharded", "llava/new_layout"):
        src = os.path.join(args.out, sub.split("/")[0], "model", "config.json")
        with open(src) as f, open(os.path.join(args.out, sub, "config.json"), "w") as g:
            g.write(f.read())


if __name__ == "__main__":
    main()
