#!/usr/bin/env python3
"""Reference robot data for tests/test_rlds.c, written by tensorflow-datasets itself.

Writes into tests/fixtures/rlds/:
  tiny_rlds/1.0.0/          a genuine RLDS dataset (tfds GeneratorBasedBuilder, LIBERO's feature layout:
                            steps/observation/image PNG, steps/observation/wrist_image JPEG, action (7,),
                            language_instruction, is_first/is_last/is_terminal, reward, discount), 2 shards
  expected.json             what tfds.builder_from_directory reads back: per step the instruction, the action,
                            is_first, FNV-1a 64 of the decoded RGB pixels of image (tfds's decode) and of
                            wrist_image (Pillow's decode of the stored JPEG, the project's reference decoder);
                            the normalised actions (TensorFlow ops as normalize_action_and_proprio, BOUNDS_Q99,
                            gripper masked) and their action tokens; prompts as OpenVLA builds them
  dataset_statistics.json   OpenVLA's get_dataset_statistics (numpy over the float32 actions), as
                            save_dataset_statistics writes it, mask as OXE's EEF_POS ([True] * 6 + [False])
  bad/                      TFRecords of hand-made tf.train.Examples that break the episode rules
                            (wrong feature types, counts that disagree, a missing key, an undecodable image)
                            beside one good episode, with the same dataset_info.json / features.json
  steps.jsonl + images/     the same steps as the JSONL form (images as files)
  action_tokens.json        OpenVLA ActionTokenizer ids and decoded values for random and edge actions
expected.json's samples_mistral_tokenizer: RLDSBatchTransform's input_ids / labels (transformers' AutoTokenizer
of ../shared/fixtures/tokenizers/mistral, a Llama-2-style 32k SentencePiece BPE, for openvla-7b's Llama 2).
Needs tensorflow-cpu, tensorflow-datasets, pillow, transformers (a venv of its own: python3 -m venv /work/venv-tf).
With OPENVLA_SRC=<openvla checkout>, the references are also checked against OpenVLA's own
ActionTokenizer class (prismatic/vla/action_tokenizer.py, on a stub tokenizer) and PurePromptBuilder.
"""
import hashlib
import io
import json
import os
import shutil
import sys
import types

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "rlds")
# Mistral-7B's tokenizer: a Llama-2-style 32k SentencePiece BPE standing in for openvla-7b's Llama 2 one.
MISTRAL = os.path.join(ROOT, "..", "shared", "fixtures", "tokenizers", "mistral")
VOCAB_SIZE = 32000  # Llama 2's tokenizer.vocab_size, as openvla-7b's
N_BINS = 256
INSTRUCTIONS = ["Put the Bowl on the plate", "open the TOP drawer", "pick up the ketchup and place it in the basket"]
STEPS_PER_EPISODE = [3, 5, 4, 4]


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def picture(rng, seed):
    """32x32 RGB: a gradient with a few noisy pixels (small as PNG, still exact to check)."""
    y, x = np.mgrid[0:32, 0:32]
    img = np.stack([(x * 8 + seed * 17) % 256, (y * 8 + seed * 29) % 256, ((x + y) * 4 + seed * 5) % 256], -1)
    img = img.astype(np.uint8)
    img[rng.integers(0, 32, 12), rng.integers(0, 32, 12)] = rng.integers(0, 256, (12, 3), dtype=np.uint8)
    return img


class TinyRlds(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        step = {
            "observation": tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(32, 32, 3), dtype=np.uint8, encoding_format="png"),
                "wrist_image": tfds.features.Image(shape=(32, 32, 3), dtype=np.uint8, encoding_format="jpeg"),
                "state": tfds.features.Tensor(shape=(8,), dtype=np.float32),
            }),
            "action": tfds.features.Tensor(shape=(7,), dtype=np.float32),
            "discount": tfds.features.Scalar(dtype=np.float32),
            "reward": tfds.features.Scalar(dtype=np.float32),
            "is_first": tfds.features.Scalar(dtype=np.bool_),
            "is_last": tfds.features.Scalar(dtype=np.bool_),
            "is_terminal": tfds.features.Scalar(dtype=np.bool_),
            "language_instruction": tfds.features.Text(),
        }
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "steps": tfds.features.Dataset(step),
            "episode_metadata": tfds.features.FeaturesDict({"file_path": tfds.features.Text()}),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        rng = np.random.default_rng(15)
        for e, n_steps in enumerate(STEPS_PER_EPISODE):
            steps = []
            for t in range(n_steps):
                action = rng.normal(0, 0.4, 7).astype(np.float32)
                action[5] = 0.0  # an unused dimension (min == max): OpenVLA's normalisation maps it to 0
                action[6] = float(rng.integers(0, 2)) * 2 - 1  # gripper -1 / +1
                steps.append({
                    "observation": {"image": picture(rng, 10 * e + t), "wrist_image": picture(rng, 100 + 10 * e + t),
                                    "state": rng.normal(size=8).astype(np.float32)},
                    "action": action, "discount": 1.0, "reward": float(t == n_steps - 1),
                    "is_first": t == 0, "is_last": t == n_steps - 1, "is_terminal": t == n_steps - 1,
                    "language_instruction": INSTRUCTIONS[e % len(INSTRUCTIONS)],
                })
            yield f"episode_{e}", {"steps": steps, "episode_metadata": {"file_path": f"demo_{e}.hdf5"}}


def raw_examples(dataset_dir):
    """tf.train.Examples in shard order, as stored."""
    files = sorted(f for f in os.listdir(dataset_dir) if ".tfrecord-" in f)
    for name in files:
        for record in tf.data.TFRecordDataset(os.path.join(dataset_dir, name)):
            yield tf.train.Example.FromString(record.numpy())


def pillow_rgb(encoded: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))


def normalize_bounds_q99(actions, stats):
    """OpenVLA's normalize_action_and_proprio, BOUNDS_Q99, in TensorFlow; the statistics are numpy
    arrays there (make_dataset_from_rlds: tree_map(np.array, ...)), so high - low + 1e-8 is float64."""
    x = tf.constant(actions, tf.float32)
    mask, low, high = np.array(stats["mask"]), np.array(stats["q01"]), np.array(stats["q99"])
    x = tf.where(mask, tf.clip_by_value(2 * (x - low) / (high - low + 1e-8) - 1, -1, 1), x)
    zeros_mask = np.array(stats["min"]) == np.array(stats["max"])
    return tf.where(zeros_mask, 0.0, x).numpy()


class NumpyActionTokenizer:
    """OpenVLA's ActionTokenizer rule in numpy: bins = linspace(-1, 1, 256), digitize, vocab - bin."""

    def __init__(self, vocab_size, bins=N_BINS):
        self.vocab_size = vocab_size
        self.bins = np.linspace(-1, 1, bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0

    def ids(self, action):
        return self.vocab_size - np.digitize(np.clip(action, a_min=-1.0, a_max=1.0), self.bins)

    def decode(self, ids):
        d = np.clip(self.vocab_size - ids - 1, a_min=0, a_max=self.bin_centers.shape[0] - 1)
        return self.bin_centers[d]


class PromptBuilder:
    """OpenVLA's PurePromptBuilder: "In: {human}\\nOut: {gpt}</s>", each message with <image> removed and stripped."""

    def __init__(self):
        self.prompt = ""

    def add_turn(self, role, message):
        message = message.replace("<image>", "").strip()
        self.prompt += f"In: {message}\nOut: " if role == "human" else f"{message if message != '' else ' '}</s>"

    def get_prompt(self):
        return self.prompt.removeprefix("<s>").rstrip()


def openvla_prompt_builder():
    """OpenVLA's own PurePromptBuilder when OPENVLA_SRC is set, else the same rule above."""
    src = os.environ.get("OPENVLA_SRC")
    if not src:
        return PromptBuilder()
    path = os.path.join(src, "prismatic", "models", "backbones", "llm", "prompting", "base_prompter.py")
    namespace = {}
    exec(compile(open(path).read(), path, "exec"), namespace)
    return namespace["PurePromptBuilder"]("openvla")


def openvla_samples(instructions, normalized):
    """RLDSBatchTransform's input_ids and labels (predict_stop_token: the action and </s> are labelled)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MISTRAL)
    action_tok = NumpyActionTokenizer(tok.vocab_size)
    samples = []
    for instruction, action in zip(instructions, normalized):
        lang = instruction.lower()
        ours, theirs = PromptBuilder(), openvla_prompt_builder()
        for builder in (ours, theirs):
            builder.add_turn("human", f"What action should the robot take to {lang}?")
            builder.add_turn("gpt", tok.decode(list(action_tok.ids(action))))
        assert ours.get_prompt() == theirs.get_prompt()
        ids = tok(theirs.get_prompt(), add_special_tokens=True).input_ids
        labels = [-100] * (len(ids) - (len(action) + 1)) + ids[-(len(action) + 1):]
        samples.append({"instruction": instruction, "normalized": [float(a) for a in action], "ids": ids,
                        "labels": labels[-len(ids):]})
    return samples


def check_against_openvla_class(tok, actions, ids):
    """Runs prismatic/vla/action_tokenizer.py's own class on a stub tokenizer (decode returns the ids)."""
    src = os.environ.get("OPENVLA_SRC")
    if not src:
        print("OPENVLA_SRC not set: token references not cross-checked against OpenVLA's class")
        return
    stub = types.ModuleType("transformers")
    stub.PreTrainedTokenizerBase = object
    sys.modules.setdefault("transformers", stub)
    namespace = {}
    path = os.path.join(src, "prismatic", "vla", "action_tokenizer.py")
    exec(compile(open(path).read(), path, "exec"), namespace)

    class StubTokenizer:
        vocab_size = tok.vocab_size

        def decode(self, token_ids):
            return list(token_ids)

        def batch_decode(self, rows):
            return rows

    theirs = namespace["ActionTokenizer"](StubTokenizer())
    assert np.array_equal(np.array(theirs(actions)), ids)
    assert np.array_equal(theirs.decode_token_ids_to_actions(ids), tok.decode(ids))
    print("token references equal OpenVLA's ActionTokenizer")


def write_action_tokens(rng):
    tok = NumpyActionTokenizer(VOCAB_SIZE)
    random = rng.normal(0, 0.7, 2000).astype(np.float32)  # about 15% outside [-1, 1]
    edges = tok.bins.astype(np.float32)  # float32 edges: the nearest float, either side of the float64 edge
    nudged = np.concatenate([np.nextafter(edges, np.float32(-2)), np.nextafter(edges, np.float32(2))])
    special = np.array([-1.0, 1.0, 0.0, -0.0, -5.0, 5.0, 1e-8, -1e-8], np.float32)
    actions = np.concatenate([random, edges, nudged, special]).astype(np.float32)
    ids = tok.ids(actions)
    check_against_openvla_class(tok, actions.reshape(-1, 1), ids.reshape(-1, 1))
    decode_ids = np.arange(VOCAB_SIZE - 300, VOCAB_SIZE + 5)  # below, inside and above the action range
    # Actions as float32's shortest text (strtof reads them back exactly); decoding is checked on every id
    # from below the action range to above it.
    with open(os.path.join(OUT, "action_tokens.json"), "w") as f:
        f.write('{"vocab_size": %d, "actions": [%s], "ids": %s, "decode_ids": %s, "decode_values": %s}\n' % (
            VOCAB_SIZE, ", ".join(str(a) for a in actions), json.dumps(ids.tolist()),
            json.dumps(decode_ids.tolist()), json.dumps(tok.decode(decode_ids).tolist())))


def bad_example(good, mutate):
    ex = tf.train.Example()
    ex.CopyFrom(good)
    mutate(ex.features.feature)
    return ex


def write_bad(dataset_dir, good):
    """One good episode among episodes that break a rule each; the expected reason in bad/expected.json."""
    bad_dir = os.path.join(OUT, "bad")
    os.makedirs(bad_dir)
    for name in ("dataset_info.json", "features.json"):
        shutil.copy(os.path.join(dataset_dir, name), bad_dir)
    n_steps = len(good.features.feature["steps/action"].float_list.value) // 7

    def action_as_bytes(f):
        f["steps/action"].ClearField("float_list")
        f["steps/action"].bytes_list.value.append(b"\x00" * 28 * n_steps)

    def action_as_int64(f):
        values = list(f["steps/action"].float_list.value)
        f["steps/action"].ClearField("float_list")
        f["steps/action"].int64_list.value.extend(int(v) for v in values)

    def short_action(f):
        f["steps/action"].float_list.value.pop()

    def no_image(f):
        del f["steps/observation/image"]

    def image_count(f):
        f["steps/observation/image"].bytes_list.value.pop()

    def nan_action(f):
        f["steps/action"].float_list.value[9] = float("nan")

    def corrupt_png(f):
        values = f["steps/observation/image"].bytes_list.value
        broken = bytearray(values[1])
        broken[40:60] = b"\xff" * 20  # inside IDAT: its CRC fails
        values[1] = bytes(broken)

    def instruction_as_floats(f):
        f["steps/language_instruction"].ClearField("bytes_list")
        f["steps/language_instruction"].float_list.value.extend([1.0] * n_steps)

    cases = [("action_as_bytes", action_as_bytes, "bad record"), ("good", lambda f: None, None),
             ("action_as_int64", action_as_int64, "bad record"), ("short_action", short_action, "bad record"),
             ("no_image", no_image, "bad record"), ("image_count", image_count, "bad record"),
             ("nan_action", nan_action, "bad record"), ("corrupt_png", corrupt_png, "corrupt image"),
             ("instruction_as_floats", instruction_as_floats, "bad record")]
    with tf.io.TFRecordWriter(os.path.join(bad_dir, "tiny_rlds-train.tfrecord-00000-of-00001")) as writer:
        for _, mutate, _ in cases:
            writer.write(bad_example(good, mutate).SerializeToString())
    with open(os.path.join(bad_dir, "expected.json"), "w") as f:
        json.dump({"records": [{"case": c, "skip": reason} for c, _, reason in cases], "good_steps": n_steps}, f,
                  indent=1)


def main():
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    scratch = os.path.join(OUT, "_build")
    builder = TinyRlds(data_dir=scratch)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=2))
    dataset_dir = os.path.join(OUT, "tiny_rlds", "1.0.0")
    shutil.copytree(builder.data_dir, dataset_dir)
    shutil.rmtree(scratch)

    # Read back as users do, in file order.
    read = tfds.builder_from_directory(dataset_dir).as_dataset(split="train", shuffle_files=False)
    raws = list(raw_examples(dataset_dir))
    episodes, all_actions, images_dir, jsonl = [], [], os.path.join(OUT, "images"), []
    os.makedirs(images_dir)
    for e, (episode, raw) in enumerate(zip(tfds.as_numpy(read), raws)):
        wrist_bytes = raw.features.feature["steps/observation/wrist_image"].bytes_list.value
        image_bytes = raw.features.feature["steps/observation/image"].bytes_list.value
        steps = []
        for t, step in enumerate(episode["steps"]):
            image = step["observation"]["image"]
            assert np.array_equal(pillow_rgb(image_bytes[t]), image)
            instruction = step["language_instruction"].decode()
            steps.append({"instruction": instruction, "action": [float(a) for a in step["action"]],
                          "is_first": bool(step["is_first"]), "image_fnv": fnv1a64(image.tobytes()),
                          "wrist_image_fnv": fnv1a64(pillow_rgb(wrist_bytes[t]).tobytes()),
                          "image_size": [int(image.shape[1]), int(image.shape[0])]})
            all_actions.append(step["action"])
            name = f"ep{e}_step{t}.png"
            with open(os.path.join(images_dir, name), "wb") as f:
                f.write(image_bytes[t])
            jsonl.append({"image": f"images/{name}", "instruction": instruction,
                          "action": [float(a) for a in step["action"]], "episode": e})
        episodes.append({"steps": steps})
    with open(os.path.join(OUT, "steps.jsonl"), "w") as f:
        for record in jsonl:
            f.write(json.dumps(record) + "\n")

    # OpenVLA's get_dataset_statistics over the float32 actions, mask as OXE's EEF_POS ([True] * 6 + [False]).
    actions = np.concatenate([np.asarray(all_actions, np.float32)])
    stats = {"mean": actions.mean(0).tolist(), "std": actions.std(0).tolist(), "max": actions.max(0).tolist(),
             "min": actions.min(0).tolist(), "q01": np.quantile(actions, 0.01, axis=0).tolist(),
             "q99": np.quantile(actions, 0.99, axis=0).tolist(), "mask": [True] * 6 + [False]}
    normalized = normalize_bounds_q99(actions, stats)
    # save_dataset_statistics's file; without proprioception OpenVLA's proprio is tf.zeros_like(action).
    zeros = np.zeros_like(actions)
    proprio = {"mean": zeros.mean(0).tolist(), "std": zeros.std(0).tolist(), "max": zeros.max(0).tolist(),
               "min": zeros.min(0).tolist(), "q01": np.quantile(zeros, 0.01, axis=0).tolist(),
               "q99": np.quantile(zeros, 0.99, axis=0).tolist()}
    with open(os.path.join(OUT, "dataset_statistics.json"), "w") as f:
        json.dump({"tiny_rlds": {"action": stats, "proprio": proprio, "num_transitions": int(actions.shape[0]),
                                 "num_trajectories": len(episodes)}}, f, indent=2)
    tok = NumpyActionTokenizer(VOCAB_SIZE)
    # The prompt as RLDSBatchTransform + PurePromptBuilder write it (instruction .lower(), message .strip()).
    prompts = [[text, f"In: What action should the robot take to {text.lower()}?\nOut:"]
               for text in INSTRUCTIONS + ["Öffne die SCHUBLADE", "ΟΔΥΣΣΕΥΣ", "İstanbul ǅ", "  spaced  "]]
    step_instructions = [step["instruction"] for episode in episodes for step in episode["steps"]]
    extra = ["  spaced  ", "<image> put the cup in the sink", "ΟΔΥΣΣΕΥΣ", ""]
    samples = openvla_samples(step_instructions + extra,
                              list(normalized) + [normalized[0]] * len(extra)) if os.path.isdir(MISTRAL) else []
    expected = {"name": "tiny_rlds", "action_dim": 7, "episodes": episodes, "prompts": prompts,
                "normalized": normalized.tolist(), "tokens": tok.ids(normalized).tolist(),
                "samples_mistral_tokenizer": samples}
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f)

    write_bad(dataset_dir, min(raws, key=lambda ex: len(ex.features.feature["steps/action"].float_list.value)))
    write_action_tokens(np.random.default_rng(7))
    print(f"wrote {OUT}: {len(episodes)} episodes, {actions.shape[0]} steps")


if __name__ == "__main__":
    main()
