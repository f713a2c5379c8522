"""Compares AdapterHub's MRPC dev outputs (bench/adapterhub_glue.py score --save_logits) with a served model's.

    .venv/bin/python -m bench.studies.adapterhub_compare SAVED_MODEL_DIR ADAPTERHUB_LOGITS.npy

SAVED_MODEL_DIR: a pushed single-task MRPC model (<serving_dir>/mrpc/<version>); its `predict_text` signature
gets the raw dev sentences (tokenized in the graph), AdapterHub's logits were computed after Hugging Face's
tokenizer. Prints the largest difference of the class probabilities, and how many predicted labels differ.
"""
from __future__ import annotations

import csv
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from bench.common import GLUE_DIR


def main(saved_model: str, logits_path: str) -> None:
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the tokenizer's ops)

    with open(os.path.join(GLUE_DIR, "MRPC", "dev.tsv"), encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    serve = tf.saved_model.load(saved_model).signatures["predict_text"]
    probabilities = np.concatenate([
        serve(sentence1=tf.constant([r["#1 String"] for r in rows[i:i + 64]]),
              sentence2=tf.constant([r["#2 String"] for r in rows[i:i + 64]]))["probabilities"].numpy()
        for i in range(0, len(rows), 64)])
    logits = np.load(logits_path)
    theirs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    print(f"{len(rows)} MRPC dev examples: max |probability difference| {np.abs(probabilities - theirs).max():.2e}, "
          f"labels that differ: {int((probabilities.argmax(1) != theirs.argmax(1)).sum())}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
