#!/usr/bin/env python3
"""Tiny llava-hf folders written by transformers itself, as a user downloads them from the Hub:
LlavaForConditionalGeneration.save_pretrained + LlavaProcessor.save_pretrained (CLIP image
processor, a byte-level BPE tokenizer with <image>, the Llama 3 chat template).

    python3 scripts/ref_llava_hf.py [--out tests/fixtures/llava_hf]

Writes
  clip/      one model.safetensors; CLIP 16x16 pixels, patch 4 (16 image tokens), features of
             layer -2 without the class token ("default"), preprocessing: shortest edge 16,
             center crop 16, CLIP mean/std
  sharded/   model-0000N-of-0000M.safetensors + index; CLIP 24x24, patch 8, features of the last
             layer with the class token ("full": 10 image tokens), mean/std 0.5, other sizes
  siglip/    one model.safetensors; a SigLIP tower (SiglipVisionModel: no class token, patch bias,
             gelu_pytorch_tanh, post_layernorm) 16x16, patch 4, features of the last layer
             (hidden_states[-1], before post_layernorm) with "default", which makes transformers'
             Llava drop the first patch (15 image tokens); SiglipImageProcessor: resize to 16 x 16,
             mean/std 0.5
All hold config.json, preprocessor_config.json, processor_config.json, chat_template.jinja and
the tokenizer files exactly as transformers saves them. The tokenizer is
tests/fixtures/hf_tokenizer/llama3_style (a byte-level BPE of 600 tokens and Llama 3's special
tokens) with <image> added. Weights are random (seeded), with more signal than the 0.02 init.
"""
import argparse
import os

import torch
from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast,
                          SiglipImageProcessor, SiglipVisionConfig)

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(HERE, "..", "tests", "fixtures", "hf_tokenizer", "llama3_style", "tokenizer.json")
TEMPLATE = os.path.join(HERE, "..", "tests", "fixtures", "chat_templates", "llama3.jinja")


def tokenizer():
    with open(TEMPLATE) as f:
        template = f.read()
    tok = PreTrainedTokenizerFast(tokenizer_file=TOKENIZER, bos_token="<|begin_of_text|>",
                                  eos_token="<|eot_id|>", pad_token="<|end_of_text|>")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.chat_template = template
    return tok, template


def randomize(model, generator):
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            is_norm = ("norm" in name or "layrnorm" in name) and name.endswith("weight")
            p.copy_(1.0 + 0.1 * noise if is_norm else 0.1 * noise)


def write(out_dir, vision, strategy, feature_layer, image_processor, max_shard_size, seed):
    tok, template = tokenizer()
    image_token = tok.convert_tokens_to_ids("<image>")
    text = LlamaConfig(vocab_size=len(tok) + 2, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token,
                         projector_hidden_act="gelu", vision_feature_layer=feature_layer,
                         vision_feature_select_strategy=strategy, tie_word_embeddings=False)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    randomize(model, generator)
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    class_tokens = 0 if isinstance(vision, SiglipVisionConfig) else 1
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=vision.patch_size,
                               vision_feature_select_strategy=strategy, chat_template=template,
                               num_additional_image_tokens=class_tokens)
    processor.save_pretrained(out_dir)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(HERE, "..", "tests", "fixtures", "llava_hf"))
    args = parser.parse_args()
    clip = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                            image_size=16, patch_size=4, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                            projection_dim=32)
    write(os.path.join(args.out, "clip"), clip, "default", -2,
          CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}), "10GB", 11)
    wide = CLIPVisionConfig(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=3,
                            image_size=24, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                            projection_dim=24)
    write(os.path.join(args.out, "sharded"), wide, "full", -1,
          CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24},
                             image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]), "60KB", 12)
    siglip = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=16, patch_size=4, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
                                vision_use_head=False)
    write(os.path.join(args.out, "siglip"), siglip, "default", -1, SiglipImageProcessor(size={"height": 16, "width": 16}),
          "10GB", 13)


if __name__ == "__main__":
    main()
