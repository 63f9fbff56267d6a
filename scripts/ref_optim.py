"""Reference numbers for tests/test_optim.c, written to tests/fixtures/optim/.

- schedules.txt: one line per schedule, "name warmup total peak_lr min_lr_ratio"
  then the learning rates of steps 0..23 from transformers'
  get_{constant,linear,cosine}_schedule_with_warmup and
  get_cosine_with_min_lr_schedule_with_warmup (LambdaLR over a dummy optimizer).
- warmup_steps.txt: "warmup total steps" from TrainingArguments.get_warmup_steps.
- adamw.txt: torch.optim.AdamW (lr 1e-2, betas (0.9, 0.999), eps 1e-8,
  weight_decay 0.1, foreach=False) over 5 steps of fixed gradients: the initial
  parameters, each step's gradients and the parameters after each step.
- clip.txt: torch.nn.utils.clip_grad_norm_ over two gradient tensors for
  max_norm 1.0 and 100.0: the total norm and the gradients afterwards.
Run: python3 scripts/ref_optim.py
"""
import os

import torch
from transformers import TrainingArguments, optimization

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "optim")
STEPS = 24


def numbers(values):
    return " ".join(f"{float(v):.9g}" for v in values)


def schedule_lrs(make_scheduler, peak_lr):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak_lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(STEPS):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return lrs


def write_schedules(f):
    peak = 1e-3
    cases = [
        ("constant", 0, 20, 0.0, lambda o: optimization.get_constant_schedule_with_warmup(o, 0)),
        ("constant", 3, 20, 0.0, lambda o: optimization.get_constant_schedule_with_warmup(o, 3)),
        ("linear", 3, 20, 0.0, lambda o: optimization.get_linear_schedule_with_warmup(o, 3, 20)),
        ("cosine", 3, 20, 0.0, lambda o: optimization.get_cosine_schedule_with_warmup(o, 3, 20)),
        ("cosine", 3, 20, 0.1, lambda o: optimization.get_cosine_with_min_lr_schedule_with_warmup(
            o, 3, 20, min_lr_rate=0.1)),
        ("linear", 0, 7, 0.0, lambda o: optimization.get_linear_schedule_with_warmup(o, 0, 7)),
    ]
    for name, warmup, total, min_ratio, make in cases:
        f.write(f"{name} {warmup} {total} {peak} {min_ratio} {numbers(schedule_lrs(make, peak))}\n")


def write_warmup_steps(f):
    for warmup, total in [(0.1, 25), (0.03, 1000), (0.5, 7), (5, 100), (0, 50)]:
        args = TrainingArguments(output_dir="/tmp/ref_optim", warmup_steps=warmup, report_to=[])
        f.write(f"{warmup} {total} {args.get_warmup_steps(total)}\n")


def write_adamw(f):
    g = torch.Generator().manual_seed(7)
    n = 10
    params = torch.nn.Parameter(torch.randn(n, generator=g))
    optimizer = torch.optim.AdamW([params], lr=1e-2, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=0.1, foreach=False)
    f.write(f"{n} 5\n{numbers(params.detach())}\n")
    for _ in range(5):
        params.grad = torch.randn(n, generator=g)
        optimizer.step()
        f.write(f"{numbers(params.grad)}\n{numbers(params.detach())}\n")


def write_clip(f):
    g = torch.Generator().manual_seed(11)
    grads = [torch.randn(7, generator=g), torch.randn(5, generator=g) * 3]
    for max_norm in (1.0, 100.0):
        tensors = [torch.nn.Parameter(torch.zeros_like(x)) for x in grads]
        for t, x in zip(tensors, grads):
            t.grad = x.clone()
        total_norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm)
        before = torch.cat(grads)
        after = torch.cat([t.grad for t in tensors])
        f.write(f"{max_norm} {float(total_norm):.9g}\n{numbers(before)}\n{numbers(after)}\n")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    for name, write in [("schedules.txt", write_schedules), ("warmup_steps.txt", write_warmup_steps),
                        ("adamw.txt", write_adamw), ("clip.txt", write_clip)]:
        with open(os.path.join(OUT, name), "w") as f:
            write(f)
