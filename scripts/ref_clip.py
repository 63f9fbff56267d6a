"""Reference numbers for the CLIP vision tower, the mlp2x_gelu projector and
the image-feature splice, from transformers' CLIPVisionModel and
LlavaForConditionalGeneration on tiny random configs.

Writes tests/fixtures/vlm/:
  clip.safetensors          CLIPVisionModel weights (vision_model.* keys, as on the Hub)
  clip_io.safetensors       pixel_values (2, 3, 16, 16), features (2, 16, 32):
                            hidden_states[-2] with the class token dropped
  lm/config.json, lm/model.safetensors   the language model as LlamaForCausalLM
  projector.safetensors     multi_modal_projector.linear_1/2.{weight,bias}
  projector_llava.safetensors   the same under LLaVA's model.mm_projector.0/2
  llava_io.safetensors      input_ids (1, 24) with 16 image tokens, pixel_values
                            (1, 3, 16, 16), logits (1, 24, 64)
"""
import os

import torch
from safetensors.torch import save_file
from transformers import (CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, LlavaConfig,
                          LlavaForConditionalGeneration)

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "vlm")
IMAGE_TOKEN = 63


def vision_config():
    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                            image_size=16, patch_size=4, num_channels=3, hidden_act="quick_gelu",
                            layer_norm_eps=1e-5, projection_dim=32)


def text_config():
    return LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                       bos_token_id=1, eos_token_id=2)


def randomize(module, generator):
    """Every parameter random (norm weights around 1), so no path is trivial."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            is_norm_weight = ("norm" in name or "layrnorm" in name) and name.endswith("weight")
            p.copy_(1.0 + 0.1 * noise if is_norm_weight else 0.1 * noise)


def contiguous(state):
    return {k: v.contiguous() for k, v in state.items()}


def main():
    os.makedirs(os.path.join(OUT, "lm"), exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    config = LlavaConfig(vision_config=vision_config(), text_config=text_config(), image_token_index=IMAGE_TOKEN,
                         projector_hidden_act="gelu", vision_feature_layer=-2,
                         vision_feature_select_strategy="default", multimodal_projector_bias=True)
    llava = LlavaForConditionalGeneration(config).eval()
    randomize(llava, generator)

    # the vision tower alone, as CLIPVisionModel
    clip = CLIPVisionModel(vision_config()).eval()
    tower_state = {k: v for k, v in llava.model.vision_tower.state_dict().items()}
    clip.load_state_dict(tower_state)
    # keys as in openai/clip-vit-large-patch14-336 (CLIPModel): vision_model.*
    save_file(contiguous({"vision_model." + k: v for k, v in clip.state_dict().items() if "position_ids" not in k}),
              os.path.join(OUT, "clip.safetensors"))
    pixels = torch.randn(2, 3, 16, 16, generator=generator)
    with torch.no_grad():
        hidden = clip(pixel_values=pixels, output_hidden_states=True).hidden_states
    features = hidden[-2][:, 1:]
    save_file({"pixel_values": pixels.contiguous(), "features": features.contiguous()},
              os.path.join(OUT, "clip_io.safetensors"))

    # the language model as LlamaForCausalLM, the projector in both namings
    lm = LlamaForCausalLM(text_config()).eval()
    lm.model.load_state_dict(llava.model.language_model.state_dict())
    lm.lm_head.load_state_dict(llava.lm_head.state_dict())
    lm.save_pretrained(os.path.join(OUT, "lm"), safe_serialization=True)
    projector = {f"multi_modal_projector.{k}": v for k, v in llava.model.multi_modal_projector.state_dict().items()}
    save_file(contiguous(projector), os.path.join(OUT, "projector.safetensors"))
    llava_names = {k.replace("multi_modal_projector.linear_1", "model.mm_projector.0")
                    .replace("multi_modal_projector.linear_2", "model.mm_projector.2"): v for k, v in projector.items()}
    save_file(contiguous(llava_names), os.path.join(OUT, "projector_llava.safetensors"))

    # the whole model on text with one image's 16 tokens in the middle
    ids = [1, 5, 9, 12, 7] + [IMAGE_TOKEN] * 16 + [30, 41, 2]
    input_ids = torch.tensor([ids])
    pixels_one = torch.randn(1, 3, 16, 16, generator=generator)
    with torch.no_grad():
        logits = llava(input_ids=input_ids, pixel_values=pixels_one).logits
    save_file({"input_ids": input_ids.to(torch.int32).contiguous(), "pixel_values": pixels_one.contiguous(),
               "logits": logits.contiguous()}, os.path.join(OUT, "llava_io.safetensors"))
    print("features", tuple(features.shape), "logits", tuple(logits.shape))


if __name__ == "__main__":
    main()
