#!/usr/bin/env python3
"""Logits of tests/fixtures/openvla's tiny OpenVLA with a PEFT adapter lora-train saved, through PEFT.

    python3 scripts/check_openvla_adapter.py MODEL_DIR ADAPTER_DIR INPUTS OUT

The language model (transformers' LlamaForCausalLM from config.json's text_config) and the projector
(nn.Linear / nn.GELU as PrismaticProjector) under OpenVLA's module names, their weights from MODEL_DIR's
shards; the towers are left out (no timm here): INPUTS (safetensors) holds the towers' features
(B, P, D) and the input_ids (B, T) without placeholders, and the projected patches go in right after
BOS as modeling_prismatic.py does. The adapter's tensors are put in by PEFT's own
set_peft_model_state_dict on a PeftModel made from ADAPTER_DIR's adapter_config.json; an adapter tensor
that is no module's of the model, or a LoRA module left without its tensor, fails the check. Writes
OUT (safetensors): logits (B, P + T, V). Needs transformers, peft and safetensors (the test venv).
"""
import json
import os
import sys

import torch
from peft import LoraConfig, PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM, PretrainedConfig, PreTrainedModel


class TextSideConfig(PretrainedConfig):
    model_type = "openvla_text_side"


class Projector(torch.nn.Module):
    def __init__(self, vision_dim, llm_dim):
        super().__init__()
        self.fc1 = torch.nn.Linear(vision_dim, 4 * vision_dim)
        self.fc2 = torch.nn.Linear(4 * vision_dim, llm_dim)
        self.fc3 = torch.nn.Linear(llm_dim, llm_dim)
        self.act_fn1, self.act_fn2 = torch.nn.GELU(), torch.nn.GELU()

    def forward(self, x):
        return self.fc3(self.act_fn2(self.fc2(self.act_fn1(self.fc1(x)))))


class TextSide(PreTrainedModel):
    """OpenVLAForActionPrediction less its vision_backbone."""
    config_class = TextSideConfig

    def __init__(self, config, text, vision_dim):
        super().__init__(config)
        self.projector = Projector(vision_dim, text.hidden_size)
        self.language_model = LlamaForCausalLM(text)

    def forward(self, input_ids, features):
        projected = self.projector(features)
        embeddings = self.language_model.get_input_embeddings()(input_ids)
        embeddings = torch.cat([embeddings[:, :1], projected, embeddings[:, 1:]], dim=1)
        return self.language_model(inputs_embeds=embeddings).logits


def load_weights(model_dir):
    with open(os.path.join(model_dir, "model.safetensors.index.json")) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    state = {}
    for file in files:
        state.update(load_file(os.path.join(model_dir, file)))
    return {k: v.float() for k, v in state.items() if k.startswith(("projector.", "language_model."))}


def main():
    model_dir, adapter_dir, inputs_path, out_path = sys.argv[1:5]
    with open(os.path.join(model_dir, "config.json")) as f:
        text = LlamaConfig(**json.load(f)["text_config"])
    text._attn_implementation = "eager"
    inputs = load_file(inputs_path)
    features, input_ids = inputs["features"], inputs["input_ids"].long()
    model = TextSide(TextSideConfig(), text, features.shape[-1]).eval()
    missing, unexpected = model.load_state_dict(load_weights(model_dir), strict=False)
    assert not unexpected and all(k.endswith("rotary_emb.inv_freq") for k in missing), (missing, unexpected)

    config = LoraConfig.from_pretrained(adapter_dir)
    config.task_type = None  # the model is no generation model: PeftModel itself, not PeftModelForCausalLM
    peft_model = PeftModel(model, config)
    adapter = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    result = set_peft_model_state_dict(peft_model, adapter)
    assert not result.unexpected_keys, result.unexpected_keys
    lora = [n for n, _ in peft_model.named_parameters() if "lora_" in n]
    assert len(lora) == len(adapter), f"{len(lora)} LoRA tensors in the model, {len(adapter)} in the adapter"
    with torch.no_grad():
        logits = peft_model.get_base_model()(input_ids, features)
    save_file({"logits": logits.float().contiguous()}, out_path)
    print(f"{len(adapter)} adapter tensors loaded; logits {tuple(logits.shape)}")


if __name__ == "__main__":
    main()
