#!/usr/bin/env python3
"""A tiny random OpenVLA (OpenVLAForActionPrediction's layout) and its reference numbers.

OpenVLA's own classes need trust_remote_code and timm < 1.0, so the model is put together from the
pieces they use: timm's towers (vit_large_patch14_reg4_dinov2, vit_so400m_patch14_siglip_224, shrunk
as scripts/ref_timm_towers.py does), transformers' LlamaForCausalLM, the projector as nn.Linear / nn.GELU
(PrismaticProjector with use_fused_vision_backbone: fc1 D -> 4D, GELU, fc2 4D -> C, GELU, fc3 C -> C,
biases), and the glue written here as prismatic/extern/hf/modeling_prismatic.py's forward does it:
each tower on its 3 of the 6 channels, get_intermediate_layers(n={depth - 2}) (the second-to-last
block, prefix tokens dropped), the two concatenated along channels (DINOv2 first), projected, inserted
right after BOS; labels IGNORE_INDEX on the patches; transformers shifts them for the loss.

Runs in the test venv (.venv/, scripts/python_env.sh: torch, timm 1.0.31, transformers, peft, safetensors as
scripts/requirements-test.txt pins them), which gives the committed outputs bit for bit (adapter_config.json's
target_modules aside, a set in PEFT's own order); the tests read the outputs, and scripts/check_openvla_adapter.py
builds on this script's modules:

    .venv/bin/python3 scripts/ref_openvla.py

Writes tests/fixtures/openvla/:
  model/config.json        OpenVLA's keys (architectures, model_type openvla, use_fused_vision_backbone,
                           timm_model_ids, image_sizes, n_action_bins, norm_stats, pad_to_multiple_of,
                           text_config), the towers shrunk to 16 x 16 pixels, patch 4 (16 patches):
                           DINOv2 width 32, 3 blocks; SigLIP width 24, 4 blocks; Llama width 48, 2 layers
  model/model-0000K-of-00002.safetensors + model.safetensors.index.json: bf16, OpenVLA's names
                           (vision_backbone.featurizer.* with LayerScale's scale_factor, .fused_featurizer.*,
                           projector.fc1..3.*, language_model.model.*, language_model.lm_head.weight)
  adapter/                 PEFT's save_pretrained of LoraConfig(r 4, alpha 8, target_modules all-linear) on
                           the model, less the towers' adapters (their A and B are in reference.safetensors):
                           every lora_B random (not PEFT's zeros) so that every gradient is non-trivial, the
                           towers' B zero for the main reference (the towers then give their frozen features)
  reference.safetensors    input_ids (2, 13) without image placeholders, labels, pixel_values (2, 6, 16, 16);
                           dinov2_features (2, 16, 32), siglip_features (2, 16, 24), projector_out (2, 16, 48),
                           logits (2, 29, 256), loss (the mean over label tokens), feature_grads (2, 16, 56):
                           dloss/d(the concatenated features), grad.<adapter key> of every adapter that
                           takes part (decoder, projector, towers); and with the towers' B random as well,
                           towers_b.*: the towers' adapters (A, B), features, logits, loss, gradients
"""
import json
import os

import timm
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM, PretrainedConfig, PreTrainedModel

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "openvla")
TIMM_IDS = ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"]
TOWERS = [dict(embed_dim=32, depth=3, num_heads=4), dict(embed_dim=24, depth=4, num_heads=4)]
IMAGE, PATCH, VOCAB, BOS, EOS, IGNORE = 16, 4, 256, 1, 2, -100
TEXT = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=10000.0,
            tie_word_embeddings=False, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=0)


class TinyOpenVLAConfig(PretrainedConfig):
    model_type = "tiny_openvla"


class Backbone(torch.nn.Module):
    """PrismaticVisionBackbone's fused forward: each tower on its 3 channels, features side by side.
    towers: timm.create_model's shape arguments of each (embed_dim, depth, num_heads, and mlp_ratio where not
    the model's own)."""

    def __init__(self, towers=TOWERS, image=IMAGE, patch=PATCH):
        super().__init__()
        self.featurizer, self.fused_featurizer = (
            timm.create_model(name.split(".")[0], pretrained=False, img_size=image, patch_size=patch, num_classes=0,
                              **shape) for name, shape in zip(TIMM_IDS, towers))

    @staticmethod
    def features(tower, pixels):
        (out,) = tower.get_intermediate_layers(pixels, n={len(tower.blocks) - 2})
        return out

    def forward(self, pixel_values):
        img, img_fused = torch.split(pixel_values, [3, 3], dim=1)
        return self.features(self.featurizer, img), self.features(self.fused_featurizer, img_fused)


class Projector(torch.nn.Module):
    def __init__(self, vision_dim, llm_dim):
        super().__init__()
        self.fc1 = torch.nn.Linear(vision_dim, 4 * vision_dim)
        self.fc2 = torch.nn.Linear(4 * vision_dim, llm_dim)
        self.fc3 = torch.nn.Linear(llm_dim, llm_dim)
        self.act_fn1, self.act_fn2 = torch.nn.GELU(), torch.nn.GELU()

    def forward(self, x):
        return self.fc3(self.act_fn2(self.fc2(self.act_fn1(self.fc1(x)))))


class TinyOpenVLA(PreTrainedModel):
    """OpenVLAForActionPrediction's module names and multimodal forward (PEFT all-linear needs a PreTrainedModel).
    The shapes default to this script's; scripts/check_openvla_adapter.py passes a folder's."""
    config_class = TinyOpenVLAConfig

    def __init__(self, config, towers=TOWERS, text=TEXT, image=IMAGE, patch=PATCH):
        super().__init__(config)
        self.vision_backbone = Backbone(towers, image, patch)
        self.projector = Projector(sum(t["embed_dim"] for t in towers), text["hidden_size"])
        text = LlamaConfig(**text)
        text._attn_implementation = "eager"
        self.language_model = LlamaForCausalLM(text)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def forward(self, input_ids, pixel_values, labels=None):
        dinov2, siglip = self.vision_backbone(pixel_values)
        features = torch.cat([dinov2, siglip], dim=2)
        if features.requires_grad:
            features.retain_grad()
        projected = self.projector(features)
        embeddings = self.language_model.get_input_embeddings()(input_ids)
        embeddings = torch.cat([embeddings[:, :1], projected, embeddings[:, 1:]], dim=1)
        if labels is not None:
            patch_labels = torch.full(projected.shape[:2], IGNORE, dtype=labels.dtype)
            labels = torch.cat([labels[:, :1], patch_labels, labels[:, 1:]], dim=1)
        out = self.language_model(inputs_embeds=embeddings, labels=labels)
        return dict(dinov2=dinov2, siglip=siglip, features=features, projector=projected, logits=out.logits,
                    loss=out.loss)


def randomize(model, generator):
    """Every weight random with more signal than the init (norm weights around 1), rounded to bf16 as stored."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            is_norm_weight = "norm" in name and name.endswith("weight")
            p.copy_((1.0 + 0.1 * noise if is_norm_weight else 0.1 * noise).bfloat16().float())


def openvla_state_dict(model):
    """The checkpoint's names: timm's LayerScale gamma as OpenVLA's scale_factor, bf16."""
    out = {}
    for name, t in model.state_dict().items():
        if name.endswith(".gamma"):
            name = name[: -len("gamma")] + "scale_factor"
        out[name] = t.detach().bfloat16().contiguous()
    return out


def save_sharded(state, out_dir):
    """Two shards and their index, as save_pretrained writes them."""
    names = sorted(state)
    shards = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: state[k] for k in shard}, os.path.join(out_dir, file), metadata={"format": "pt"})
        weight_map.update({k: file for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def write_config(out_dir):
    norm_stats = {"tiny_robot": {"action": {
        "mean": [0.0] * 7, "std": [1.0] * 7, "max": [1.0] * 7, "min": [-1.0] * 7,
        "q01": [-0.9, -0.8, -0.7, -0.6, -0.5, -0.4, 0.0], "q99": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 1.0],
        "mask": [True] * 6 + [False]}, "num_transitions": 10, "num_trajectories": 2}}
    text = dict(TEXT, model_type="llama", architectures=["LlamaForCausalLM"], torch_dtype="bfloat16")
    config = {"architectures": ["OpenVLAForActionPrediction"], "model_type": "openvla",
              "auto_map": {"AutoConfig": "configuration_prismatic.OpenVLAConfig",
                           "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction"},
              "vision_backbone_id": "dinosiglip-vit-so-224px", "llm_backbone_id": "llama2-7b-pure",
              "arch_specifier": "no-align+fused-gelu-mlp", "use_fused_vision_backbone": True,
              "timm_model_ids": TIMM_IDS, "timm_override_act_layers": [None, None],
              "image_sizes": [IMAGE, IMAGE], "image_resize_strategy": "resize-naive",
              "n_action_bins": 256, "norm_stats": norm_stats, "pad_to_multiple_of": 64, "pad_token_id": 0,
              "output_projector_features": False, "torch_dtype": "bfloat16", "text_config": text}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def sample(generator):
    """openvla_sample's shape: BOS, a prompt, 7 action tokens (the vocabulary's last 256 ids), EOS; labels on
    the actions and EOS. Ids 4 .. 199 for the prompt, so id 3 is free for the tests' image placeholders."""
    prompt = torch.randint(4, 200, (2, 4), generator=generator)
    actions = torch.randint(VOCAB - 56, VOCAB, (2, 7), generator=generator)
    bos, eos = torch.full((2, 1), BOS), torch.full((2, 1), EOS)
    input_ids = torch.cat([bos, prompt, actions, eos], dim=1)
    labels = input_ids.clone()
    labels[:, :5] = IGNORE
    return input_ids, labels


def run(model, input_ids, pixels, labels, prefix=""):
    model.zero_grad()
    out = model(input_ids, pixels, labels)
    out["loss"].backward()
    ref = {prefix + "dinov2_features": out["dinov2"], prefix + "siglip_features": out["siglip"],
           prefix + "projector_out": out["projector"], prefix + "logits": out["logits"],
           prefix + "loss": out["loss"].reshape(1), prefix + "feature_grads": out["features"].grad}
    for name, p in model.named_parameters():
        if "lora_" in name and p.grad is not None: # none: the unused last blocks and SigLIP's attention pool
            ref[prefix + "grad." + name.replace(".default", "")] = p.grad
    return {k: v.detach().float().contiguous() for k, v in ref.items()}


def set_lora_b(model, generator, towers):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name and name.startswith("base_model.model.vision_backbone.") == towers:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))


def main():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = TinyOpenVLA(TinyOpenVLAConfig()).eval()
    randomize(model, generator)
    model_dir, adapter_dir = os.path.join(OUT, "model"), os.path.join(OUT, "adapter")
    os.makedirs(model_dir, exist_ok=True)
    save_sharded(openvla_state_dict(model), model_dir)
    write_config(model_dir)

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    set_lora_b(peft_model, generator, towers=False)
    input_ids, labels = sample(generator)
    pixels = torch.randn(2, 6, IMAGE, IMAGE, generator=generator)
    ref = {"input_ids": input_ids.int(), "labels": labels.int(), "pixel_values": pixels}
    ref.update(run(peft_model, input_ids, pixels, labels))
    peft_model.save_pretrained(adapter_dir)
    adapter_file = os.path.join(adapter_dir, "adapter_model.safetensors")
    adapter = load_file(adapter_file)
    save_file({k: v for k, v in adapter.items() if ".vision_backbone." not in k}, adapter_file,
              metadata={"format": "pt"})
    os.remove(os.path.join(adapter_dir, "README.md"))

    set_lora_b(peft_model, generator, towers=True)
    ref.update(run(peft_model, input_ids, pixels, labels, prefix="towers_b."))
    for name, p in peft_model.named_parameters():
        if "lora_" in name and ".vision_backbone." in name:
            ref["towers_b." + name.replace(".default", "")] = p.detach().contiguous()
    save_file(ref, os.path.join(OUT, "reference.safetensors"))
    print({k: tuple(v.shape) for k, v in ref.items() if "grad" not in k and "lora" not in k})
    print("loss", ref["loss"].item(), "towers_b.loss", ref["towers_b.loss"].item())


if __name__ == "__main__":
    main()
