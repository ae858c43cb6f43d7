"""Run by tests/test_arm64.py with the emulated aarch64 Python (numpy and onnxruntime only).

    python arm64_attention_check.py MODEL.onnx {mha|softmax}

Feeds MODEL (tests/test_attention_rows.py's one-node attention graphs) one row alone (L keys) and
the same row last in a padded batch (P > L keys, the extra ones masked), for several (L, P), and
prints a JSON list of the (L, P) whose outputs differ in any bit.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort

CASES = [(1, 7), (3, 17), (5, 16), (6, 12), (9, 33), (13, 40), (20, 64)]
BATCH, HEADS, HIDDEN = 4, 4, 32


def feeds(kind: str, rng, length: int, padded: int) -> tuple[dict, dict]:
    """The row alone, and the batch with that row last."""
    if kind == "mha":
        alone = {n: rng.normal(size=(1, length, HIDDEN)).astype(np.float32) for n in "qkv"}
        batch = {n: rng.normal(size=(BATCH, padded, HIDDEN)).astype(np.float32) for n in "qkv"}
        for n in "qkv":
            batch[n][-1, :length] = alone[n][0]
        alone["mask"] = np.ones((1, length), np.int32)
        batch["mask"] = np.ones((BATCH, padded), np.int32)
        batch["mask"][-1, length:] = 0
        return alone, batch
    scores = rng.normal(size=(1, HEADS, length, length)).astype(np.float32) * 4
    values = rng.normal(size=(1, HEADS, length, 8)).astype(np.float32)
    batch_scores = rng.normal(size=(BATCH, HEADS, padded, padded)).astype(np.float32) * 4
    batch_values = rng.normal(size=(BATCH, HEADS, padded, 8)).astype(np.float32)
    batch_scores[-1, :, :length, :length] = scores[0]
    batch_scores[-1, :, :, length:] = np.finfo(np.float32).min  # masked keys, as the encoder adds them
    batch_values[-1, :, :length] = values[0]
    return {"scores": scores, "v": values}, {"scores": batch_scores, "v": batch_values}


def main() -> None:
    model, kind = sys.argv[1:3]
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    differ = []
    for length, padded in CASES:
        alone, batch = feeds(kind, rng, length, padded)
        one = session.run(None, alone)[0]
        last = session.run(None, batch)[0][-1:]
        last = last[:, :length] if kind == "mha" else last[:, :, :length]
        if not np.array_equal(one, last):
            differ.append([length, padded])
    print(json.dumps(differ))


if __name__ == "__main__":
    main()
