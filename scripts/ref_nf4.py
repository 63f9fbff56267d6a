"""Reference NF4 data for tests/test_quant.c, written to tests/fixtures/nf4/.

A numpy reimplementation of bitsandbytes' quantize_4bit / dequantize_4bit
(quant_type "nf4", blocksize 64, compress_statistics=True), checked against
bitsandbytes 0.50 itself (its CPU path, pip install bitsandbytes):
- absmax[b] = max |x| over block b of 64 (the last block may be short);
  scaled = x * (1 / max(absmax, 1e-38)) in fp32 (a short last block: x / absmax); code index = how many of the
  15 fp32 midpoints (code[i] + code[i+1]) / 2 are < scaled (torch.bucketize);
  element 2j in the high nibble of byte j, 2j+1 in the low one.
- double quant: offset = mean(absmax); absmax - offset quantized blockwise
  (blocks of 256) with the signed dynamic map create_dynamic_map(): per block
  nested_absmax = max |.|, index of the nearest map value to value / nested_absmax.
- dequantize: absmax = map[q] * nested_absmax + offset; out = code[nibble] * absmax.
The mean is taken in float64 and rounded to fp32 (torch's fp32 mean may differ by
an ulp; the script reports how bitsandbytes' own output compares).

Files: case_<name>.safetensors with input, packed, absmax (fp32, before double
quant), absmax_q (u8), nested_absmax, offset [1], dequant, dequant_plain (no
double quant), plus code.safetensors (nf4 code, dynamic map) and
prequantized/: a bitsandbytes-format Llama checkpoint with
prequantized_expected.safetensors (see write_prequantized); that part needs
bitsandbytes (pip install bitsandbytes; its CPU path suffices).
Run: python3 scripts/ref_nf4.py
"""
import json
import os

import numpy as np
import torch
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "nf4")
BLOCK = 64
NESTED_BLOCK = 256

NF4_CODE = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)


def fma_f32(a, b, c):
    """fmaf(a, b, c): a * b is exact in float64 for these operands."""
    return np.float32(float(a) * float(b) + float(c))


def linspace_f32(start, end, steps):
    """torch.linspace(start, end, steps, dtype=float32) on the CPU: fp32 step,
    the first half fma(step, i, start), the second fma(-step, steps - 1 - i, end)."""
    start, end = np.float32(start), np.float32(end)
    step = np.float32((end - start) / np.float32(steps - 1))
    halfway = steps // 2
    return np.array([fma_f32(step, i, start) if i < halfway else fma_f32(-step, steps - i - 1, end)
                     for i in range(steps)], dtype=np.float32)


def dynamic_map():
    """bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)."""
    values = []
    for i in range(7):
        bounds = linspace_f32(0.1, 1.0, 2 ** i + 1)
        means = (bounds[:-1] + bounds[1:]) / np.float32(2)
        scale = np.float32(10.0 ** (-6 + i))
        values += list(scale * means) + list(-scale * means)
    values += [np.float32(0), np.float32(1)]
    return np.array(sorted(values), dtype=np.float32)


def blockwise_absmax(x, block):
    pad = (-len(x)) % block
    padded = np.concatenate([np.abs(x), np.zeros(pad, np.float32)])
    return padded.reshape(-1, block).max(axis=1)


def nearest_index(scaled, code):
    midpoints = (code[:-1] + code[1:]) / np.float32(2)
    return np.searchsorted(midpoints, scaled, side="left").astype(np.uint8)


def scale_blocks(x, absmax, block):
    """Whole blocks times 1 / absmax, a short last block divided by its absmax."""
    divisor = np.maximum(absmax, np.float32(1e-38))
    scaled = x * np.repeat(np.float32(1) / divisor, block)[: len(x)]
    tail = len(x) % block
    if tail:
        scaled[-tail:] = x[-tail:] / divisor[-1]
    return np.clip(scaled, -1, 1).astype(np.float32)


def quantize_nf4(x):
    absmax = blockwise_absmax(x, BLOCK)
    q = nearest_index(scale_blocks(x, absmax, BLOCK), NF4_CODE)
    if len(q) % 2:
        q = np.concatenate([q, np.array([7], np.uint8)])  # bucketize(0) after torch's zero pad
    packed = (q[0::2] << 4) | q[1::2]
    return packed.astype(np.uint8), absmax


def quantize_absmax(absmax, qmap):
    offset = np.float32(np.mean(absmax, dtype=np.float64))
    centered = (absmax - offset).astype(np.float32)
    nested_absmax = blockwise_absmax(centered, NESTED_BLOCK)
    absmax_q = nearest_index(scale_blocks(centered, nested_absmax, NESTED_BLOCK), qmap)
    return absmax_q, nested_absmax, offset


def dequantize_absmax(absmax_q, nested_absmax, offset, qmap):
    return (qmap[absmax_q] * np.repeat(nested_absmax, NESTED_BLOCK)[: len(absmax_q)] + offset).astype(np.float32)


def dequantize_nf4(packed, absmax, n):
    q = np.stack([packed >> 4, packed & 15], axis=1).reshape(-1)[:n]
    return (NF4_CODE[q] * np.repeat(absmax, BLOCK)[:n]).astype(np.float32)


def reference_case(x, qmap):
    packed, absmax = quantize_nf4(x)
    absmax_q, nested_absmax, offset = quantize_absmax(absmax, qmap)
    return {
        "input": x, "packed": packed, "absmax": absmax, "absmax_q": absmax_q,
        "nested_absmax": nested_absmax, "offset": np.array([offset], np.float32),
        "dequant": dequantize_nf4(packed, dequantize_absmax(absmax_q, nested_absmax, offset, qmap), len(x)),
        "dequant_plain": dequantize_nf4(packed, absmax, len(x)),
    }


def compare_with_bitsandbytes(name, case, qmap):
    """bitsandbytes' own CPU quantize_4bit / dequantize_4bit on the same input.
    Its CPU 8-bit quantizer (BinSearch lookup) picks the upper neighbour for a
    few values just below a midpoint, where the CUDA kernel (and this script)
    pick the nearest; those absmax codes are counted, and the dequantization
    formula is checked on bitsandbytes' own codes."""
    import bitsandbytes.functional as F
    x = torch.from_numpy(case["input"])
    packed, state = F.quantize_4bit(x, blocksize=BLOCK, compress_statistics=True, quant_type="nf4")
    bnb_absmax_q = state.absmax.numpy()
    differ = np.nonzero(bnb_absmax_q != case["absmax_q"])[0]
    bnb_absmax = dequantize_absmax(bnb_absmax_q, state.state2.absmax.numpy(), np.float32(state.offset), qmap)
    checks = {
        "packed": np.array_equal(packed.numpy().reshape(-1), case["packed"]),
        "nested_absmax": np.array_equal(state.state2.absmax.numpy(), case["nested_absmax"]),
        "offset": float(state.offset) == float(case["offset"][0]),
        "absmax_q neighbours": bool(np.all(np.abs(bnb_absmax_q[differ].astype(int) - case["absmax_q"][differ]) == 1)),
        "dequant formula": np.array_equal(F.dequantize_4bit(packed, state).numpy().reshape(-1),
                                          dequantize_nf4(packed.numpy().reshape(-1), bnb_absmax, x.numel())),
    }
    plain_packed, plain_state = F.quantize_4bit(x, blocksize=BLOCK, compress_statistics=False, quant_type="nf4")
    checks["absmax"] = np.array_equal(plain_state.absmax.numpy(), case["absmax"])
    checks["dequant_plain"] = np.array_equal(F.dequantize_4bit(plain_packed, plain_state).numpy().reshape(-1),
                                             case["dequant_plain"])
    print(f"{name}: identical to bitsandbytes {F.__name__}: " + ", ".join(f"{k} {v}" for k, v in checks.items()) +
          f"; absmax codes differing (adjacent): {len(differ)} of {len(bnb_absmax_q)}")
    assert all(checks.values()), f"{name}: numpy reference and bitsandbytes differ"


def inputs():
    rng = np.random.default_rng(7)
    heavy = (rng.standard_t(df=3, size=24576) * 0.02).astype(np.float32)  # real weights: heavy tails
    heavy[rng.integers(0, heavy.size, 12)] *= 40
    zeros = rng.standard_normal(4096).astype(np.float32)
    zeros[64:192] = 0  # two whole blocks of exact zeros
    zeros[::7] = 0
    return {
        "normal": rng.standard_normal(20000).astype(np.float32),
        "heavy_tails": heavy,
        "zeros": zeros,
        "odd_length": (rng.standard_normal(1001) * 0.05).astype(np.float32),
    }


TINY = {"vocab_size": 262, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8}
LINEARS = [("self_attn", "q_proj", 32, 32), ("self_attn", "k_proj", 16, 32), ("self_attn", "v_proj", 16, 32),
           ("self_attn", "o_proj", 32, 32), ("mlp", "gate_proj", 64, 32), ("mlp", "up_proj", 64, 32),
           ("mlp", "down_proj", 32, 64)]


def write_prequantized():
    """A tiny Llama (the `tiny` preset's shapes) saved as transformers saves a
    load_in_4bit model: norms and embeddings in bf16, each linear as
    Linear4bit._save_to_state_dict writes it (packed weight, then
    QuantState.as_dict(packed=True) under `weight.`), quantized by bitsandbytes
    from bf16 weights. expected.safetensors: bitsandbytes' dequantize_4bit of
    each linear (fp32) and the bf16 tensors as fp32."""
    import bitsandbytes.functional as F
    out = os.path.join(OUT, "prequantized")
    os.makedirs(out, exist_ok=True)
    gen = torch.Generator().manual_seed(7)
    bf16 = lambda *shape: (torch.randn(*shape, generator=gen) * 0.1767767).to(torch.bfloat16)
    tensors, expected = {}, {}
    tensors["model.embed_tokens.weight"] = bf16(262, 32)
    tensors["lm_head.weight"] = bf16(262, 32)
    tensors["model.norm.weight"] = torch.ones(32, dtype=torch.bfloat16)
    for layer in range(2):
        prefix = f"model.layers.{layer}."
        tensors[prefix + "input_layernorm.weight"] = (1 + 0.1 * torch.randn(32, generator=gen)).to(torch.bfloat16)
        tensors[prefix + "post_attention_layernorm.weight"] = torch.ones(32, dtype=torch.bfloat16)
        for group, name, rows, cols in LINEARS:
            key = f"{prefix}{group}.{name}.weight"
            weight = bf16(rows, cols).float()
            packed, state = F.quantize_4bit(weight, blocksize=BLOCK, compress_statistics=True, quant_type="nf4")
            # bitsandbytes 0.50's CPU dequantize_4bit of a 2-D state returns other
            # values than its 1-D one (errors up to ~4x the NF4 step); the 1-D
            # state holds the same bytes and matches the documented formula.
            flat_packed, flat_state = F.quantize_4bit(weight.reshape(-1), blocksize=BLOCK, compress_statistics=True,
                                                      quant_type="nf4")
            assert torch.equal(flat_packed.reshape(-1), packed.reshape(-1))
            assert torch.equal(flat_state.absmax, state.absmax)
            expected[key] = F.dequantize_4bit(flat_packed, flat_state).reshape(rows, cols).float()
            state.dtype = torch.bfloat16
            tensors[key] = packed
            for part, value in state.as_dict(packed=True).items():
                tensors[f"{key}.{part}"] = value
    for key, value in tensors.items():
        if value.dtype == torch.bfloat16:
            expected[key] = value.float()
    from safetensors.torch import save_file as save_torch
    save_torch({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, "model.safetensors"),
               metadata={"format": "pt"})
    save_torch(expected, os.path.join(OUT, "prequantized_expected.safetensors"))
    config = dict(TINY, architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
                  max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                  bos_token_id=256, eos_token_id=257, torch_dtype="bfloat16",
                  quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True,
                                       "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                                       "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_storage": "uint8"})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def main():
    os.makedirs(OUT, exist_ok=True)
    qmap = dynamic_map()
    import bitsandbytes.functional as F
    assert np.array_equal(F.create_dynamic_map().numpy(), qmap), "dynamic map differs from bitsandbytes'"
    assert np.array_equal(F.get_4bit_type("nf4", device="cpu").numpy(), NF4_CODE), "nf4 code differs from bitsandbytes'"
    save_file({"nf4_code": NF4_CODE, "dynamic_map": qmap}, os.path.join(OUT, "code.safetensors"))
    for name, x in inputs().items():
        case = reference_case(x, qmap)
        compare_with_bitsandbytes(name, case, qmap)
        save_file(case, os.path.join(OUT, f"case_{name}.safetensors"))
    write_prequantized()


if __name__ == "__main__":
    main()
