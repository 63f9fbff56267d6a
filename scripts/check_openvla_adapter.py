#!/usr/bin/env python3
"""Logits of an OpenVLA-shaped model with a PEFT adapter lora-train saved, through PEFT.

    python3 scripts/check_openvla_adapter.py MODEL_DIR ADAPTER_DIR INPUTS OUT

The model is put together as scripts/ref_openvla.py does (its TinyOpenVLA: OpenVLA's module names, timm's
towers, the projector, transformers' LlamaForCausalLM from config.json's text_config), its weights from
MODEL_DIR's safetensors (one file or shards; LayerScale's scale_factor as timm's gamma). INPUTS (safetensors)
holds input_ids (B, T) without placeholders and either
  pixel_values (B, 6, S, S): the whole model, the towers timm's with config.json's tower_shapes (lora-train's
      tiny folders: hf_save_openvla writes them, and only the towers' layers the features use: the missing
      weights must be exactly those of the unused last block, the final norm and SigLIP's attention-pool head), or
  features (B, P, D): the towers' features (tests/fixtures/openvla has no tower_shapes); the towers left out.
The projected patches go in right after BOS as modeling_prismatic.py does.

The adapter is loaded by PeftModel.from_pretrained(model, ADAPTER_DIR) from its adapter_config.json and
adapter_model.safetensors (task_type set to None: the model is no generation model). Every tensor of the file
must land on a LoRA module's parameter, value for value, and every LoRA module PEFT made must get its tensors
(no missing key). With the towers, the modules PEFT's target_modules="all-linear" (OpenVLA's recipe) would wrap
and the adapter leaves out must be exactly those lora-train never trains: each tower's last block (the features
are the second-to-last block's) and SigLIP's attention-pool head. Writes OUT (safetensors): logits
(B, P + T, V). Needs torch, timm, transformers, peft and safetensors (the test venv).
"""
import json
import os
import sys
import warnings

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from ref_openvla import Projector, TinyOpenVLA, TinyOpenVLAConfig

BLOCK_LINEARS = ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]
ATTN_POOL_LINEARS = ["q", "kv", "proj", "mlp.fc1", "mlp.fc2"]  # timm's AttentionPoolLatent (SigLIP's head)
TOWERS = ["vision_backbone.featurizer", "vision_backbone.fused_featurizer"]


class TextSide(PreTrainedModel):
    """OpenVLAForActionPrediction less its vision_backbone: the towers' features come in."""
    config_class = TinyOpenVLAConfig

    def __init__(self, config, text, vision_dim):
        super().__init__(config)
        self.projector = Projector(vision_dim, text["hidden_size"])
        text = LlamaConfig(**text)
        text._attn_implementation = "eager"
        self.language_model = LlamaForCausalLM(text)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def forward(self, input_ids, features):
        projected = self.projector(features)
        embeddings = self.language_model.get_input_embeddings()(input_ids)
        embeddings = torch.cat([embeddings[:, :1], projected, embeddings[:, 1:]], dim=1)
        return dict(logits=self.language_model(inputs_embeds=embeddings).logits)


def load_weights(model_dir):
    """Every tensor of the folder as fp32, timm's names (OpenVLA's scale_factor is timm's LayerScale gamma)."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state = {}
    for file in files:
        state.update(load_file(os.path.join(model_dir, file)))
    return {(k[: -len("scale_factor")] + "gamma" if k.endswith(".scale_factor") else k): v.float()
            for k, v in state.items()}


def tower_shapes(config):
    """timm.create_model's shape arguments of each tower from lora-train's tower_shapes, and the patch size."""
    shapes = config["tower_shapes"]
    towers = [dict(embed_dim=s["hidden_size"], depth=s["num_hidden_layers"], num_heads=s["num_attention_heads"],
                   mlp_ratio=(s["intermediate_size"] + 0.5) / s["hidden_size"]) for s in shapes]
    assert shapes[0]["patch_size"] == shapes[1]["patch_size"], shapes
    assert config["image_sizes"][0] == config["image_sizes"][1], config["image_sizes"]
    return towers, shapes[0]["patch_size"], config["image_sizes"][0]


def unused_tower_modules(depths):
    """The towers' modules get_intermediate_layers(n={depth - 2}) never runs."""
    modules = [f"{tower}.blocks.{depth - 1}" for tower, depth in zip(TOWERS, depths)]
    return modules + [f"{TOWERS[0]}.norm", f"{TOWERS[1]}.norm", f"{TOWERS[1]}.attn_pool"]


def read_config(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f)


def build_model(model_dir, inputs):
    config = read_config(model_dir)
    text = config["text_config"]
    if "pixel_values" in inputs:
        towers, patch, image = tower_shapes(config)
        model = TinyOpenVLA(TinyOpenVLAConfig(), towers, text, image, patch)
        for tower, shape in zip(TOWERS, config["tower_shapes"]):
            fc1 = model.get_submodule(tower + ".blocks.0.mlp.fc1")
            assert fc1.out_features == shape["intermediate_size"], (tower, fc1, shape)
    else:
        model = TextSide(TinyOpenVLAConfig(), text, inputs["features"].shape[-1])
    state = load_weights(model_dir)
    if "pixel_values" not in inputs:  # the towers left out
        state = {k: v for k, v in state.items() if not k.startswith("vision_backbone.")}
    missing, unexpected = model.eval().load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
    if "pixel_values" in inputs:
        unused = unused_tower_modules([t["depth"] for t in towers])
        assert all(k.startswith(tuple(m + "." for m in unused)) for k in missing), missing
        assert {m for m in unused if any(k.startswith(m + ".") for k in missing)} == set(unused), missing
        print(f"weights: all but {len(missing)} tensors of the unused {', '.join(unused)}")
    else:
        assert not missing, missing
    return model, text


def all_linear_modules(model_class, *args):
    """The modules PEFT's target_modules="all-linear" wraps on a fresh model of the same shapes."""
    peft_model = get_peft_model(model_class(TinyOpenVLAConfig(), *args), LoraConfig(target_modules="all-linear"))
    return {name.removeprefix("base_model.model.") for name, module in peft_model.named_modules()
            if hasattr(module, "lora_A") and isinstance(module.base_layer, torch.nn.Linear)}


def load_adapter(model, adapter_dir):
    """PeftModel.from_pretrained, then every file tensor on its parameter and no LoRA module without one."""
    config = LoraConfig.from_pretrained(adapter_dir)
    config.task_type = None  # PeftModel itself, not PeftModelForCausalLM
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(model, adapter_dir, config=config).eval()
    problems = [str(w.message) for w in caught if "adapter keys" in str(w.message)]
    assert not problems, problems
    adapter = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    params = dict(peft_model.named_parameters())
    for key, value in adapter.items():
        name = key.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
        assert name in params, f"{key}: no parameter {name} in the PEFT model"
        assert torch.equal(params[name].detach(), value.float()), f"{key}: not loaded"
    lora = [n for n in params if "lora_" in n]
    assert len(lora) == len(adapter), f"{len(lora)} LoRA tensors in the model, {len(adapter)} in the adapter"
    modules = {k[: k.index(".lora_")].removeprefix("base_model.model.") for k in adapter}
    return peft_model, adapter, modules


def main():
    model_dir, adapter_dir, inputs_path, out_path = sys.argv[1:5]
    inputs = load_file(inputs_path)
    input_ids = inputs["input_ids"].long()
    model, text = build_model(model_dir, inputs)
    peft_model, adapter, modules = load_adapter(model, adapter_dir)
    with torch.no_grad():
        if "pixel_values" in inputs:
            logits = peft_model(input_ids=input_ids, pixel_values=inputs["pixel_values"].float())["logits"]
        else:
            logits = peft_model(input_ids=input_ids, features=inputs["features"].float())["logits"]
    save_file({"logits": logits.float().contiguous()}, out_path)
    print(f"{len(adapter)} adapter tensors on {len(modules)} modules loaded by PeftModel.from_pretrained; "
          f"logits {tuple(logits.shape)}")

    if "pixel_values" in inputs:
        towers, patch, image = tower_shapes(read_config(model_dir))
        all_linear = all_linear_modules(TinyOpenVLA, towers, text, image, patch)
        assert modules <= all_linear, sorted(modules - all_linear)
        expected = {f"{tower}.blocks.{t['depth'] - 1}.{linear}" for tower, t in zip(TOWERS, towers)
                    for linear in BLOCK_LINEARS}
        expected |= {f"{TOWERS[1]}.attn_pool.{linear}" for linear in ATTN_POOL_LINEARS}
        left_out = all_linear - modules
        assert left_out == expected, (sorted(left_out - expected), sorted(expected - left_out))
        n_towers = sum(m.startswith("vision_backbone.") for m in modules)
        print(f"all-linear: {len(all_linear)} modules, {n_towers} of the towers' in the adapter; left out, "
              f"never run by the features: {', '.join(sorted(left_out))}")


if __name__ == "__main__":
    main()
