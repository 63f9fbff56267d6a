#!/usr/bin/env python3
"""Checks that an RLDS folder lora-train wrote (data/rlds_write.c) is a genuine tensorflow-datasets dataset.

    python scripts/check_rlds_folder.py DIR [--split train] [--expected steps.jsonl]

Opens DIR with tfds.builder_from_directory(DIR).as_dataset(split), as OpenVLA's RLDS pipeline does, and compares
every step tfds decodes with the raw tf.train.Examples TensorFlow's own TFRecord reader (both CRCs checked) parses
from the shards: instruction, action, reward, discount, is_first / is_last / is_terminal, and the image (tfds's
decode against Pillow's decode of the stored bytes, at features.json's shape). Checks the RLDS episode rules
(is_first on the first step alone, is_last on the last) and dataset_info.json's shard lengths. With --expected
(one JSON object a line: episode, step, instruction, action) the values must equal those too.
Needs tensorflow-cpu, tensorflow-datasets and pillow (python3 -m venv /work/venv-tf). Exit status 0 when all hold.
"""
import argparse
import io
import json
import os
import sys

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image


def raw_episodes(directory, split):
    files = sorted(f for f in os.listdir(directory) if f"-{split}.tfrecord-" in f)
    for name in files:
        for record in tf.data.TFRecordDataset(os.path.join(directory, name)):
            yield tf.train.Example.FromString(record.numpy()).features.feature


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def check_episode(e, episode, raw, expected, shape):
    steps = list(episode["steps"])
    n = len(steps)
    action = np.array(raw["steps/action"].float_list.value, np.float32).reshape(n, -1)
    images = raw["steps/observation/image"].bytes_list.value
    for t, step in enumerate(steps):
        where = f"episode {e} step {t}"
        instruction = step["language_instruction"].decode()
        check(instruction == raw["steps/language_instruction"].bytes_list.value[t].decode(), f"{where}: instruction")
        check(np.array_equal(step["action"], action[t]), f"{where}: action {step['action']} != {action[t]}")
        for key in ("reward", "discount"):
            check(step[key] == np.float32(raw[f"steps/{key}"].float_list.value[t]), f"{where}: {key}")
        for key in ("is_first", "is_last", "is_terminal"):
            check(bool(step[key]) == bool(raw[f"steps/{key}"].int64_list.value[t]), f"{where}: {key}")
        check(bool(step["is_first"]) == (t == 0) and bool(step["is_last"]) == (t == n - 1), f"{where}: RLDS flags")
        image = step["observation"]["image"]
        check(image.shape == shape, f"{where}: image shape {image.shape}, features.json says {shape}")
        pillow = np.asarray(Image.open(io.BytesIO(images[t])).convert("RGB"))
        check(np.array_equal(image, pillow), f"{where}: tfds's decoded image differs from Pillow's")
        if expected is not None:
            want = expected.get((e, t))
            check(want is not None, f"{where}: not in --expected")
            check(instruction == want["instruction"], f"{where}: {instruction!r}, expected {want['instruction']!r}")
            check(np.array_equal(step["action"], np.array(want["action"], np.float32)), f"{where}: expected action")
    return n


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir")
    parser.add_argument("--split", default="train")
    parser.add_argument("--expected")
    args = parser.parse_args()
    expected = None
    if args.expected:
        with open(args.expected) as f:
            expected = {(r["episode"], r["step"]): r for r in map(json.loads, f)}
    builder = tfds.builder_from_directory(args.dir)
    shape = tuple(builder.info.features["steps"]["observation"]["image"].shape)
    lengths = builder.info.splits[args.split].shard_lengths
    # One shard after the other, as the raw records are read (tfds interleaves 16 records of 16 files by default).
    read_config = tfds.ReadConfig(interleave_cycle_length=1)
    dataset = tfds.as_numpy(builder.as_dataset(split=args.split, shuffle_files=False, read_config=read_config))
    n_episodes = n_steps = 0
    for e, (episode, raw) in enumerate(zip(dataset, raw_episodes(args.dir, args.split), strict=True)):
        n_steps += check_episode(e, episode, raw, expected, shape)
        n_episodes += 1
    check(n_episodes == sum(lengths), f"{n_episodes} episodes read, dataset_info.json's shardLengths say {lengths}")
    check(expected is None or n_steps == len(expected), f"{n_steps} steps read, --expected has {len(expected or [])}")
    print(f"OK: tfds {tfds.__version__} reads {args.dir}: {builder.info.name}, {n_episodes} episodes, {n_steps} steps "
          f"in {len(lengths)} shards, every step equal to TensorFlow's raw records"
          + (" and to --expected" if expected is not None else ""))


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
