#!/usr/bin/env python3
"""lora-train (bench_train) beside transformers + PEFT (bench/peer_peft.py) in one session.

bench_train runs with LD_LIBRARY_PATH=$LORA_TRAIN_LIBRARY_PATH when that is set (the kit's
libraries, scripts/gpu_session.sh), the peer with the environment as it is.

Runs one stage of configurations, each program in its own process under a time limit, appends
every result line to OUT/results.jsonl and writes OUT/results.md: a table per stage ready to
paste into docs/BENCHMARKS.md, with ours/peer ratios of tokens/s and peak memory and both MFUs
against lora-train's measured GEMM rate (bench_train's cuBLASLt probe). Stages:

  lm       bf16 base, micro-batch in --batches, activation checkpointing off and on; ours + peer;
           then one profiled run of ours (per-op time shares) at the first batch, checkpointing on
  qlora    NF4 base (double quant), checkpointing on; ours + peer with bitsandbytes (if importable)
  offload  ours with and without --offload cpu, checkpointing on (no peer)

  python3 bench/gpu_compare.py --stage lm --bin .gpu/bin --out $OUT            # on the GPU
  python3 bench/gpu_compare.py --stage lm --bin build/bench --backend cpu --preset tiny --seq 64 --out /tmp/c
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", choices=["lm", "qlora", "offload"], required=True)
    p.add_argument("--bin", required=True, help="folder holding bench_train")
    p.add_argument("--out", required=True)
    p.add_argument("--backend", default="cuda", help="cuda (peer on cuda) or cpu (peer on cpu)")
    p.add_argument("--preset", default="llama3-8b")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batches", default="1,4")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--timeout", type=float, default=300, help="seconds per program")
    p.add_argument("--budget", type=float, default=0,
                   help="seconds for the whole stage (0: none): later programs get what is left, then none")
    p.add_argument("--no-peer", action="store_true")
    return p.parse_args()


def run_program(command, timeout, log, library_path=None):
    """Runs command; returns the dict of its RESULT line or one with status failed/timeout/skipped."""
    if timeout < 10:
        return {"status": "skipped", "error": "stage budget spent"}
    started = time.time()
    log.write("$ " + " ".join(command) + "\n")
    log.flush()
    env = dict(os.environ, LD_LIBRARY_PATH=library_path) if library_path else None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        log.write((e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""))
        return {"status": "timeout", "error": f"over {timeout:.0f} s"}
    log.write(done.stdout + done.stderr + f"(exit {done.returncode}, {time.time() - started:.1f} s)\n\n")
    log.flush()
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result.setdefault("status", "ok")
            return result
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"status": "failed", "error": f"exit {done.returncode}: {tail[0]}"}


def ours_command(args, batch, checkpointing, nf4=False, offload=False, profile=False):
    command = [os.path.join(args.bin, "bench_train"), "--backend", args.backend, "--preset", args.preset,
               "--seq", str(args.seq), "--batch", str(batch), "--steps", str(args.steps), "--warmup",
               str(args.warmup)]
    return command + [flag for flag, on in (("--checkpointing", checkpointing), ("--nf4", nf4),
                                            ("--offload", offload), ("--profile", profile)) if on]


def peer_command(args, shape_file, batch, checkpointing, qlora=False):
    command = [sys.executable, os.path.join(HERE, "peer_peft.py"), "--shape-json", shape_file, "--seq",
               str(args.seq), "--batch", str(batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--device", "cuda" if args.backend == "cuda" else "cpu"]
    return command + (["--checkpointing"] if checkpointing else []) + (["--qlora"] if qlora else [])


def configurations(args):
    """(label, ours kwargs, peer kwargs or None) of the stage."""
    batches = [int(b) for b in args.batches.split(",")]
    if args.stage == "lm":
        rows = [(f"B={b} ckpt {'on' if c else 'off'}", dict(batch=b, checkpointing=c), dict(batch=b, checkpointing=c))
                for b in batches for c in (False, True)]
        return rows + [(f"B={batches[0]} ckpt on, per-op profile",
                        dict(batch=batches[0], checkpointing=True, profile=True), None)]
    if args.stage == "qlora":
        return [(f"NF4 B={b} ckpt on", dict(batch=b, checkpointing=True, nf4=True),
                 dict(batch=b, checkpointing=True, qlora=True)) for b in batches]
    return [(f"B={b} ckpt on, offload {'cpu' if o else 'none'}", dict(batch=b, checkpointing=True, offload=o), None)
            for b in batches for o in (False, True)]


def gb(result, key="peak_bytes"):
    value = result.get(key)
    return f"{value / 1e9:.3f}" if isinstance(value, (int, float)) else "-"


def ratio(a, b, fmt="{:.2f}x"):
    return fmt.format(a / b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "-"


def describe(result, key, fmt):
    if result.get("status", "ok") != "ok":
        return result.get("status", "?")
    value = result.get(key)
    return fmt.format(value) if isinstance(value, (int, float)) else "-"


def table(rows):
    lines = ["| configuration | lora-train tokens/s | peer tokens/s | ratio | lora-train peak GB | "
             "peer peak GB (allocated / reserved) | memory ratio | lora-train MFU | peer MFU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, ours, peer in rows:
        flops, rate = ours.get("flops_per_token"), ours.get("gemm_flops")
        peer_ok = peer is not None and peer.get("status") == "ok"
        peer_mfu = (f"{100 * flops * peer['tokens_per_s'] / rate:.1f}%"
                    if peer_ok and flops and rate else "-")
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            label, describe(ours, "tokens_per_s", "{:.0f}"),
            "-" if peer is None else describe(peer, "tokens_per_s", "{:.0f}"),
            ratio(ours.get("tokens_per_s"), peer.get("tokens_per_s")) if peer_ok else "-",
            gb(ours), f"{gb(peer)} / {gb(peer, 'peak_reserved_bytes')}" if peer_ok else "-",
            ratio(ours.get("peak_bytes"), peer.get("peak_bytes")) if peer_ok else "-",
            describe(ours, "mfu", "{:.1%}"), peer_mfu))
    return "\n".join(lines)


def op_table(result):
    lines = ["| op | calls/step | ms/step | share |", "|---|---|---|---|"]
    for op in result.get("op_times", []):
        lines.append(f"| {op['op']} | {op['calls_per_step']} | {op['ms_per_step']:.2f} | {100 * op['share']:.1f}% |")
    return "\n".join(lines)


def main():
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    shape_file = os.path.join(args.out, "shape.json")
    rows, profile = [], None
    deadline = time.time() + args.budget if args.budget > 0 else float("inf")
    timeout = lambda: min(args.timeout, deadline - time.time())
    with open(os.path.join(args.out, f"{args.stage}.log"), "a") as log, \
            open(os.path.join(args.out, "results.jsonl"), "a") as jsonl:
        for label, ours_kwargs, peer_kwargs in configurations(args):
            ours = run_program(ours_command(args, **ours_kwargs), timeout(), log,
                               os.environ.get("LORA_TRAIN_LIBRARY_PATH"))
            ours["label"] = label
            jsonl.write(json.dumps(ours) + "\n")
            print(f"{label}: lora-train {describe(ours, 'tokens_per_s', '{:.1f}')} tokens/s", flush=True)
            if ours.get("status") == "ok" and not os.path.exists(shape_file):
                with open(shape_file, "w") as f:
                    f.write(json.dumps(ours) + "\n")
            if ours_kwargs.get("profile"):
                profile = ours
                continue
            peer = None
            if peer_kwargs is not None and not args.no_peer and os.path.exists(shape_file):
                peer = run_program(peer_command(args, shape_file, **peer_kwargs), timeout(), log)
                peer["label"] = label
                jsonl.write(json.dumps(peer) + "\n")
                print(f"{label}: peer {describe(peer, 'tokens_per_s', '{:.1f}')} tokens/s", flush=True)
            rows.append((label, ours, peer))
    first = next((o for _, o, _ in rows if o.get("status") == "ok"), {})
    report = [f"## {args.stage}: {args.preset}, T={args.seq}, {args.backend}, {time.strftime('%Y-%m-%d %H:%M')}",
              "", f"GEMM probe (bench_train, {first.get('gemm_probe_size', '?')}^3 bf16): "
              f"{first.get('gemm_flops', 0) / 1e12:.4g} TFLOP/s; {args.warmup} warm-up + {args.steps} timed steps, "
              "median. Peak memory: lora-train's is the high water of every backend allocation in the process "
              "(Ops.peak_bytes, CUDA context excluded); the peer's torch.cuda.max_memory_allocated / "
              "max_memory_reserved from its first training step.", "", table(rows)]
    if profile:
        report += ["", f"Per-op time shares ({profile['label']}, each op between synchronisations):", "",
                   op_table(profile)]
    text = "\n".join(report) + "\n"
    with open(os.path.join(args.out, "results.md"), "a") as f:
        f.write(text + "\n")
    print("\n" + text)
    return 0 if all(o.get("status") == "ok" for _, o, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
