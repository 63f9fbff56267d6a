"""Reference numbers for tests/test_ops.c, written to tests/fixtures/ops/.

- rope_inv_freq_llama31.txt: Llama-3.1-8B's inverse frequencies from
  transformers' "llama3" rope init (theta 500000, factor 8, low 1, high 4,
  original 8192, head_dim 128).
- rope_inv_freq_theta10000.txt: the default rope init, theta 10000, head_dim 128.
- attention_*.txt: q, k, v (B, T, H, hd) and the output of
  torch.nn.functional.scaled_dot_product_attention(is_causal=True) with
  grouped-query heads (kv repeated with repeat_interleave), plus its lse.
- attention_packed_*.txt: the same for packed rows (several samples per row,
  as transformers' DataCollatorWithFlattening): SDPA with a block-diagonal
  causal mask built from attention_packed_seq_start.txt (B, T), the index
  within its row of the first token of each token's sample.
- attention_full_*.txt: bidirectional attention (the vision towers'):
  scaled_dot_product_attention(is_causal=False) in float64 from fp32 q, k, v
  (B, T, H, hd), its output and lse, and for an upstream gradient dout the
  gradients dq, dk, dv autograd gives (tests/test_vision_ops.c);
  attention_full_shape.txt holds B T H hd.
- gelu_tanh_{x,out,dout,dx}.txt: torch.nn.functional.gelu(x, approximate="tanh") (SigLIP's
  gelu_pytorch_tanh) in fp32 on 64 points over [-6, 6] and 0, and the gradient autograd gives
  for the upstream gradient dout (tests/test_vision_ops.c).
- residual_rmsnorm_*.txt: a decoder layer's residual add and the norm after it,
  as transformers' LlamaDecoderLayer runs them (hidden = residual + attn_out;
  LlamaRMSNorm(hidden)), in float64 from fp32 inputs: x, residual, weight
  (N, C), (N, C), (C) and the sum and the normalised output.

Each file is whitespace-separated numbers; attention_shape.txt holds B T H KV hd.
Run: python3 scripts/ref_ops.py
"""
import os

import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "ops")


def save(name, tensor):
    values = tensor.detach().to(torch.float64).flatten().tolist()
    with open(os.path.join(OUT, name), "w") as f:
        f.write("\n".join(f"{v:.9g}" for v in values) + "\n")


def llama_config(rope_parameters):
    return LlamaConfig(hidden_size=4096, num_attention_heads=32, head_dim=128,
                       max_position_embeddings=131072, rope_parameters=rope_parameters)


def rope_references():
    llama31 = llama_config({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192})
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](llama31, "cpu")
    save("rope_inv_freq_llama31.txt", inv_freq)
    plain = llama_config({"rope_type": "default", "rope_theta": 10000.0})
    inv_freq, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(plain, device="cpu")
    save("rope_inv_freq_theta10000.txt", inv_freq)


def attention_reference():
    B, T, H, KV, hd = 2, 7, 4, 2, 8
    g = torch.Generator().manual_seed(1234)
    q = torch.randn(B, T, H, hd, generator=g)
    k = torch.randn(B, T, KV, hd, generator=g)
    v = torch.randn(B, T, KV, hd, generator=g)
    qh, kh, vh = (x.transpose(1, 2).to(torch.float64) for x in (q, k, v))  # (B, heads, T, hd)
    kh = kh.repeat_interleave(H // KV, dim=1)
    vh = vh.repeat_interleave(H // KV, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
    scores = (qh @ kh.transpose(-1, -2)) / hd ** 0.5
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (B, H, T)
    with open(os.path.join(OUT, "attention_shape.txt"), "w") as f:
        f.write(f"{B} {T} {H} {KV} {hd}\n")
    save("attention_q.txt", q)
    save("attention_k.txt", k)
    save("attention_v.txt", v)
    save("attention_out.txt", out.transpose(1, 2))
    save("attention_lse.txt", lse)


def row_seq_start(lengths):
    """Each token's index of the first token of its sample, for samples of these lengths."""
    starts = []
    for length in lengths:
        starts += [len(starts)] * length
    return starts


def attention_packed_reference():
    B, T, H, KV, hd = 2, 8, 4, 2, 8
    segments = [[3, 1, 4], [8]]  # lengths per row: a one-token sample, a row that is one sample
    g = torch.Generator().manual_seed(4321)
    q = torch.randn(B, T, H, hd, generator=g)
    k = torch.randn(B, T, KV, hd, generator=g)
    v = torch.randn(B, T, KV, hd, generator=g)
    seq_start = torch.tensor([row_seq_start(row) for row in segments])
    position = torch.arange(T)
    # (B, 1, T, T): query t sees key u iff seq_start[t] <= u <= t
    allowed = (position[None, :, None] >= position[None, None, :]) & (position[None, None, :] >= seq_start[:, :, None])
    allowed = allowed[:, None]
    qh, kh, vh = (x.transpose(1, 2).to(torch.float64) for x in (q, k, v))
    kh = kh.repeat_interleave(H // KV, dim=1)
    vh = vh.repeat_interleave(H // KV, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=allowed)
    scores = ((qh @ kh.transpose(-1, -2)) / hd ** 0.5).masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    with open(os.path.join(OUT, "attention_packed_shape.txt"), "w") as f:
        f.write(f"{B} {T} {H} {KV} {hd}\n")
    save("attention_packed_seq_start.txt", seq_start)
    save("attention_packed_q.txt", q)
    save("attention_packed_k.txt", k)
    save("attention_packed_v.txt", v)
    save("attention_packed_out.txt", out.transpose(1, 2))
    save("attention_packed_lse.txt", lse)


def attention_full_reference():
    B, T, H, hd = 2, 9, 3, 8
    g = torch.Generator().manual_seed(2468)
    q, k, v, dout = (torch.randn(B, T, H, hd, generator=g) for _ in range(4))
    qh, kh, vh = (x.transpose(1, 2).to(torch.float64).requires_grad_(True) for x in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, is_causal=False)
    out.backward(dout.transpose(1, 2).to(torch.float64))
    lse = torch.logsumexp((qh @ kh.transpose(-1, -2)) / hd ** 0.5, dim=-1)  # (B, H, T)
    with open(os.path.join(OUT, "attention_full_shape.txt"), "w") as f:
        f.write(f"{B} {T} {H} {hd}\n")
    for name, x in (("q", q), ("k", k), ("v", v), ("dout", dout), ("out", out.transpose(1, 2)), ("lse", lse),
                    ("dq", qh.grad.transpose(1, 2)), ("dk", kh.grad.transpose(1, 2)), ("dv", vh.grad.transpose(1, 2))):
        save(f"attention_full_{name}.txt", x)


def gelu_tanh_reference():
    x = torch.cat([torch.linspace(-6.0, 6.0, 64), torch.zeros(1)]).requires_grad_(True)
    out = torch.nn.functional.gelu(x, approximate="tanh")
    dout = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    out.backward(dout)
    save("gelu_tanh_x.txt", x)
    save("gelu_tanh_out.txt", out)
    save("gelu_tanh_dout.txt", dout)
    save("gelu_tanh_dx.txt", x.grad)
def residual_rmsnorm_reference():
    N, C, eps = 5, 37, 1e-5
    g = torch.Generator().manual_seed(4321)
    x = torch.randn(N, C, generator=g)
    residual = torch.randn(N, C, generator=g)
    weight = torch.rand(C, generator=g) + 0.5
    norm = LlamaRMSNorm(C, eps=eps).to(torch.float64)
    with torch.no_grad():
        norm.weight.copy_(weight.to(torch.float64))
        hidden = x.to(torch.float64) + residual.to(torch.float64)
        out = norm(hidden)
    save("residual_rmsnorm_x.txt", x)
    save("residual_rmsnorm_residual.txt", residual)
    save("residual_rmsnorm_weight.txt", weight)
    save("residual_rmsnorm_sum.txt", hidden)
    save("residual_rmsnorm_out.txt", out)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    rope_references()
    attention_reference()
    attention_packed_reference()
    attention_full_reference()
    gelu_tanh_reference()
    residual_rmsnorm_reference()
