#!/usr/bin/env python3
"""Reference values of OpenVLA's action metrics for tests/test_action_metrics.c.

Computes action_accuracy and action_l1_loss exactly as openvla/openvla vla-scripts/finetune.py does, on random
predictions and labels shaped as its batches ((B, T) ids, IGNORE_INDEX outside the labels, </s> labelled after the
action): mask = action_gt > action_tokenizer.action_token_begin_idx (vocab_size - 257); accuracy = correct & mask
over mask; L1 = torch.nn.functional.l1_loss of the bin centres (ActionTokenizer.decode_token_ids_to_actions) of the
masked predictions and targets. Predictions include ids outside the action range (decoded with the clip).
Writes tests/fixtures/rlds/action_metrics.json. Needs numpy and torch (the project's .venv).
"""
import json
import os

import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "rlds", "action_metrics.json")
VOCAB_SIZE, N_BINS, IGNORE_INDEX, EOS = 32000, 256, -100, 2


class ActionTokenizer:
    """prismatic/vla/action_tokenizer.py's rule: bins, centres, begin index, decode."""

    def __init__(self, vocab_size, bins=N_BINS):
        self.vocab_size = vocab_size
        self.bins = np.linspace(-1, 1, bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0
        self.action_token_begin_idx = int(vocab_size - (bins + 1))

    def decode_token_ids_to_actions(self, action_token_ids):
        discretized = self.vocab_size - action_token_ids
        discretized = np.clip(discretized - 1, a_min=0, a_max=self.bin_centers.shape[0] - 1)
        return self.bin_centers[discretized]


def batch(rng, rows, length, action_dim):
    """Labels (B, T): IGNORE_INDEX, then action_dim action tokens and </s> at the end of each row; predictions:
    the target, a near bin, any action token, or an id outside the action range."""
    labels = np.full((rows, length), IGNORE_INDEX, np.int64)
    preds = rng.integers(0, VOCAB_SIZE + 8, (rows, length))
    for b in range(rows):
        start = length - action_dim - 1 - int(rng.integers(0, 4))
        labels[b, start:start + action_dim] = VOCAB_SIZE - rng.integers(1, N_BINS + 1, action_dim)
        labels[b, start + action_dim] = EOS
        for t in range(start, start + action_dim + 1):
            kind = rng.integers(0, 4)
            if kind == 0:
                preds[b, t] = labels[b, t]
            elif kind == 1:
                preds[b, t] = labels[b, t] + rng.integers(-3, 4)
    return preds, labels


def finetune_metrics(tok, action_preds, action_gt):
    """The lines of finetune.py after action_preds = logits.argmax(dim=2), action_gt = labels[:, 1:]."""
    action_preds, action_gt = torch.tensor(action_preds), torch.tensor(action_gt)
    mask = action_gt > tok.action_token_begin_idx
    correct_preds = (action_preds == action_gt) & mask
    action_accuracy = correct_preds.sum().float() / mask.sum().float()
    continuous_actions_pred = torch.tensor(tok.decode_token_ids_to_actions(action_preds[mask].cpu().numpy()))
    continuous_actions_gt = torch.tensor(tok.decode_token_ids_to_actions(action_gt[mask].cpu().numpy()))
    action_l1_loss = torch.nn.functional.l1_loss(continuous_actions_pred, continuous_actions_gt)
    return int(mask.sum()), int(correct_preds.sum()), float(action_accuracy), float(action_l1_loss)


def main():
    rng = np.random.default_rng(15)
    tok = ActionTokenizer(VOCAB_SIZE)
    cases = []
    for rows, length, action_dim in [(1, 12, 7), (4, 20, 7), (3, 16, 3)]:
        preds, labels = batch(rng, rows, length, action_dim)
        n, correct, accuracy, l1 = finetune_metrics(tok, preds, labels)
        cases.append({"vocab_size": VOCAB_SIZE, "predicted": preds.flatten().tolist(),
                      "targets": labels.flatten().tolist(), "n_action_tokens": n, "n_correct": correct,
                      "action_accuracy": accuracy, "action_l1_loss": l1})
    with open(OUT, "w") as f:
        json.dump({"cases": cases}, f)
    print(f"wrote {OUT}: {len(cases)} cases")


if __name__ == "__main__":
    main()
