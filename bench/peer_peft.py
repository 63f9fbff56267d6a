#!/usr/bin/env python3
"""The peer of bench/bench_train: transformers + PEFT LoRA training of the same shape.

transformers' LlamaForCausalLM from a config of the same shape (random init, bf16, SDPA
attention), PEFT LoraConfig r=16 on all seven projections, gradient checkpointing per
decoder layer when asked (as lora-train's activation checkpointing), uniform random tokens
from a fixed seed with every position labelled, AdamW with grad-norm clipping at 1.0.
--qlora makes the seven linears of every layer bitsandbytes Linear4bit (NF4, double quant,
bf16 compute), as BitsAndBytesConfig(load_in_4bit, bnb_4bit_quant_type="nf4",
bnb_4bit_use_double_quant=True) loads them.

Prints a summary and one line "RESULT {json}" (appended to --json FILE too): tokens/s at the
median step, torch.cuda.max_memory_allocated / max_memory_reserved over the training steps
(peak statistics reset after the model is built), and a torch bf16 GEMM rate. Runs on the
CPU at a tiny shape (how it is tested without a GPU). A CUDA out-of-memory is reported as
status "oom", not a failure.

  python3 bench/peer_peft.py --shape-json build/shape.json --batch 1 --seq 2048 --checkpointing
  python3 bench/peer_peft.py --preset tiny --seq 64 --device cpu
"""
import argparse
import json
import statistics
import sys
import time

import torch

PRESETS = {  # the same numbers as model/config.c's presets
    "tiny": dict(vocab_size=262, hidden_size=32, intermediate_size=64, n_layers=2, n_heads=4, n_kv_heads=2,
                 head_dim=8, rope_theta=10000.0, rms_eps=1e-5),
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, n_layers=32, n_heads=32,
                      n_kv_heads=8, head_dim=128, rope_theta=500000.0, rms_eps=1e-5),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="llama3-8b")
    p.add_argument("--shape-json", help="a bench_train JSON line (file): its shape replaces --preset")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--qlora", action="store_true")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--probe-size", type=int, default=0, help="GEMM probe size (default 8192 on cuda, 256 on cpu)")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16",
                   help="the base model's storage (float32: the CPU backend's, for a CPU comparison)")
    p.add_argument("--json", help="append the result line to this file")
    return p.parse_args()


def shape_of(args):
    if not args.shape_json:
        return dict(PRESETS[args.preset], preset=args.preset)
    with open(args.shape_json) as f:
        ours = json.loads(f.readline())
    keys = list(PRESETS["tiny"]) + ["preset"]
    return {k: ours[k] for k in keys}


def build_model(shape, args, device):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"],
                         intermediate_size=shape["intermediate_size"], num_hidden_layers=shape["n_layers"],
                         num_attention_heads=shape["n_heads"], num_key_value_heads=shape["n_kv_heads"],
                         head_dim=shape["head_dim"], rope_theta=shape["rope_theta"], rms_norm_eps=shape["rms_eps"],
                         max_position_embeddings=max(args.seq, 2048), tie_word_embeddings=False,
                         attn_implementation="sdpa")
    torch.manual_seed(0)
    torch.set_default_dtype(getattr(torch, args.dtype))
    with torch.device(device):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    quantized = quantize_linears(model, device) if args.qlora else 0
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=args.dropout,
                      target_modules=TARGETS, task_type="CAUSAL_LM")
    return get_peft_model(model, lora), quantized


def quantize_linears(model, device):
    """The seven linears of every layer as bitsandbytes NF4 with double quant, one at a time; returns how many."""
    import bitsandbytes as bnb

    count = 0
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in TARGETS:
                linear = getattr(parent, name, None)
                if linear is None:
                    continue
                quantized = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False,
                                              compute_dtype=torch.bfloat16, compress_statistics=True,
                                              quant_type="nf4", device="meta")
                quantized.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False,
                                                     compress_statistics=True, quant_type="nf4").to(device)
                setattr(parent, name, quantized)
                count += 1
    if device == "cuda":
        torch.cuda.empty_cache()
    return count


def gemm_rate(size, device):
    a = torch.rand(size, size, device=device, dtype=torch.bfloat16) - 0.5
    b = torch.rand(size, size, device=device, dtype=torch.bfloat16) - 0.5
    for _ in range(3):
        a @ b.T
    synchronize(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b.T
    synchronize(device)
    return 10 * 2.0 * size ** 3 / (time.perf_counter() - start)


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def train(model, args, shape, device):
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, shape["vocab_size"], (args.batch, args.seq), generator=generator).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    model.train()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds, losses = [], []
    for step in range(args.warmup + args.steps):
        synchronize(device)
        start = time.perf_counter()
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        losses.append(loss.item())
        if step >= args.warmup:
            seconds.append(time.perf_counter() - start)
    return seconds, losses, sum(p.numel() for p in trainable)


def main():
    args = parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    shape = shape_of(args)
    result = dict(impl="transformers+peft" + ("+bitsandbytes" if args.qlora else ""), backend=device, **shape,
                  lora_r=args.lora_r, lora_dropout=args.dropout, batch=args.batch, seq=args.seq,
                  checkpointing=args.checkpointing, nf4=args.qlora, steps=args.steps, warmup=args.warmup,
                  torch=torch.__version__, status="ok")
    try:
        import peft
        import transformers
        result.update(transformers=transformers.__version__, peft=peft.__version__)
        if args.qlora:
            import bitsandbytes
            result["bitsandbytes"] = bitsandbytes.__version__
        model, result["nf4_linears"] = build_model(shape, args, device)
        seconds, losses, n_trainable = train(model, args, shape, device)
        median = statistics.median(seconds)
        result.update(trainable_params=n_trainable, median_step_s=median, min_step_s=min(seconds),
                      max_step_s=max(seconds), tokens_per_s=args.batch * args.seq / median,
                      first_loss=losses[0], last_loss=losses[-1])
        if device == "cuda":
            result.update(peak_bytes=torch.cuda.max_memory_allocated(),
                          peak_reserved_bytes=torch.cuda.max_memory_reserved())
        del model
    except torch.OutOfMemoryError as e:
        result.update(status="oom", error=str(e).split("\n")[0])
    except ImportError as e:
        result.update(status="missing", error=str(e))
    if device == "cuda":
        torch.cuda.empty_cache()
    probe = args.probe_size or (8192 if device == "cuda" else 256)
    result.update(gemm_probe_size=probe, gemm_flops=gemm_rate(probe, device))
    if result["status"] == "ok":
        print(f"peer: {result['impl']} on {device}, B={args.batch} T={args.seq}, checkpointing "
              f"{'on' if args.checkpointing else 'off'}: median step {result['median_step_s']:.4f} s, "
              f"{result['tokens_per_s']:.1f} tokens/s, peak allocated "
              f"{result.get('peak_bytes', 0) / 1e9:.3f} GB, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    else:
        print(f"peer: {result['impl']} B={args.batch} T={args.seq}: {result['status']}: {result['error']}")
    line = json.dumps(result)
    print("RESULT " + line)
    if args.json:
        with open(args.json, "a") as f:
            f.write(line + "\n")
    return 0 if result["status"] != "missing" else 1


if __name__ == "__main__":
    sys.exit(main())
