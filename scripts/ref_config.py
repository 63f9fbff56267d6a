#!/usr/bin/env python3
"""Reference defaults for tests/test_config.c, read from PEFT's LoraConfig and
transformers' TrainingArguments rather than typed in by hand.

    python3 scripts/ref_config.py   # writes into tests/fixtures/config/

reference_defaults.yaml is a lora-train config holding only the keys whose default
lora-train shares with those libraries; loading it over config_defaults() must change
nothing. (lora-train departs on purpose from transformers' learning_rate 5e-5, epochs 3,
batch size 8 and logging_steps 500, so those keys are left out.)

syntax_error.position holds "line:column" of the error in syntax_error.yaml as PyYAML
(a port of libyaml's scanner and parser) reports it, 1-based.
"""
import inspect
import os

import yaml

from peft import LoraConfig
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from transformers import TrainingArguments

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "config")


def training_argument_defaults():
    params = inspect.signature(TrainingArguments.__init__).parameters.values()
    return {p.name: p.default for p in params}


def yaml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def reference_sections():
    lora = LoraConfig()
    args = training_argument_defaults()
    return {
        "lora": {
            "r": lora.r,
            "alpha": float(lora.lora_alpha),
            "dropout": lora.lora_dropout,
            "target": TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["llama"],
            "rslora": lora.use_rslora,
            "init": "kaiming" if lora.init_lora_weights is True else str(lora.init_lora_weights),
        },
        "train": {
            "grad_accum": args["gradient_accumulation_steps"],
            "schedule": args["lr_scheduler_type"],
            "warmup": float(args["warmup_steps"]),
            "weight_decay": args["weight_decay"],
            "beta1": args["adam_beta1"],
            "beta2": args["adam_beta2"],
            "eps": args["adam_epsilon"],
            "max_grad_norm": args["max_grad_norm"],
            "seed": args["seed"],
        },
    }


def syntax_error_position(path):
    try:
        with open(path) as f:
            yaml.safe_load(f)
    except yaml.MarkedYAMLError as error:
        return f"{error.problem_mark.line + 1}:{error.problem_mark.column + 1}"
    raise SystemExit(f"{path} parsed without error")


def main():
    os.makedirs(FIXTURES, exist_ok=True)
    lines = ["# Defaults shared with PEFT LoraConfig and transformers TrainingArguments (scripts/ref_config.py)"]
    for section, keys in reference_sections().items():
        lines.append(f"{section}:")
        lines += [f"  {key}: {yaml_value(value)}" for key, value in keys.items()]
    with open(os.path.join(FIXTURES, "reference_defaults.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")
    position = syntax_error_position(os.path.join(FIXTURES, "syntax_error.yaml"))
    with open(os.path.join(FIXTURES, "syntax_error.position"), "w") as f:
        f.write(position + "\n")


if __name__ == "__main__":
    main()
