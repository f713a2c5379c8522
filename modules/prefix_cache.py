"""The cached frozen prefix: with AdapterDrop K > 0, the embeddings and the lowest K layers run once per example.

Those layers never change during training and run in inference mode (`AdapterBertClassifier.frozen_prefix`),
so their output for a training example is the same in every epoch. `build_prefix_cache` computes it once for
every training example, before the first epoch, and keeps it in memory in float16, each example cut to its
own length (no padding); the Trainer's dataset then hands the model that output instead of the token ids
(`PrefixCache.inputs`), through the same shuffling and length bucketing as without the cache, so every
step sees the same batches and only the top L - K layers run, forward and backward.

Size: tokens x hidden size x 2 bytes. At a fixed length of 128 that is 98.3 MB per 1,000 examples for
MiniLM (hidden 384) and 196.6 MB for BERT-base (768); stored at each example's own length it is what the
real lengths make it (MRPC, mean 53 tokens: about 41 MB per 1,000 for MiniLM). Above `MAX_CACHE_BYTES`
the Trainer trains without the cache (and says so).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import tensorflow as tf
from absl import logging

from modules.model import INPUT_NAMES, PREFIX_OUTPUT, AdapterBertClassifier
from modules.preprocessing import LENGTH

CACHE_DTYPE = np.float16  # 11-bit significand: relative rounding error <= 2**-11 of post-LayerNorm states
EXAMPLE_INDEX = "example_index"  # the example's position in file order, added to the features for the lookup
MAX_CACHE_BYTES = 4 * 2**30


@dataclasses.dataclass(frozen=True)
class PrefixCache:
    """The frozen prefix's output of every training example, in the order the training files hold them."""

    hidden_states: tf.RaggedTensor  # [examples, (length), hidden] CACHE_DTYPE

    @property
    def nbytes(self) -> int:
        return int(self.hidden_states.flat_values.shape.num_elements()) * np.dtype(CACHE_DTYPE).itemsize

    def inputs(self, example_index: tf.Tensor, attention_mask: tf.Tensor) -> Dict[str, tf.Tensor]:
        """The model inputs of a batch: the cached states of its examples, zero-padded to the mask's width."""
        rows = tf.gather(self.hidden_states, example_index)
        shape = tf.concat([tf.shape(attention_mask, out_type=tf.int64),
                           [self.hidden_states.flat_values.shape[-1]]], axis=0)
        return {PREFIX_OUTPUT: rows.to_tensor(shape=shape), "attention_mask": attention_mask}


def cache_bytes(num_tokens: int, hidden_size: int) -> int:
    return num_tokens * hidden_size * np.dtype(CACHE_DTYPE).itemsize


def build_prefix_cache(model: AdapterBertClassifier, examples: tf.data.Dataset, batch_size: int,
                       bucket_boundaries: Sequence[int]) -> Optional[PrefixCache]:
    """Runs `model.frozen_prefix` once over `examples` (unbatched transformed features, in file order);
    None (logged) if the cache would take more than MAX_CACHE_BYTES.

    Batches are length-bucketed and cut to their longest example, as in training, so padding costs little.
    """
    def add_length(total: tf.Tensor, features: Dict[str, tf.Tensor]) -> tf.Tensor:
        return total + features[LENGTH]

    def with_index(index: tf.Tensor, features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        return {**features, EXAMPLE_INDEX: index}

    def length(features: Dict[str, tf.Tensor]) -> tf.Tensor:
        return tf.cast(features[LENGTH], tf.int32)

    num_tokens = int(examples.reduce(np.int64(0), add_length).numpy())
    size = cache_bytes(num_tokens, model.bert.config.hidden_size)
    if size > MAX_CACHE_BYTES:
        logging.warning("training without the prefix cache: it would take %.1f GB (%d tokens), more than the %.1f GB "
                        "limit (modules/prefix_cache.py MAX_CACHE_BYTES)", size / 1e9, num_tokens, MAX_CACHE_BYTES / 1e9)
        return None
    spec = {name: tf.TensorSpec([None, None], tf.int64) for name in INPUT_NAMES}  # one trace for every length
    prefix = tf.function(model.frozen_prefix, input_signature=[spec], autograph=False)
    batches = examples.enumerate().map(with_index).bucket_by_sequence_length(
        length,
        bucket_boundaries=[b + 1 for b in bucket_boundaries],
        bucket_batch_sizes=[batch_size] * (len(bucket_boundaries) + 1),
    )
    rows: Dict[int, np.ndarray] = {}
    for features in batches:
        lengths = features[LENGTH].numpy()
        width = max(int(lengths.max()), 1)
        hidden = prefix({name: features[name][:, :width] for name in INPUT_NAMES}).numpy().astype(CACHE_DTYPE)
        if not np.isfinite(hidden).all():
            raise ValueError(f"The frozen prefix's output does not fit {np.dtype(CACHE_DTYPE).name}: "
                             "train with --no_prefix_cache.")
        for index, length, states in zip(features[EXAMPLE_INDEX].numpy(), lengths, hidden):
            rows[int(index)] = states[:length]
    ordered: List[np.ndarray] = [rows[i] for i in range(len(rows))]
    hidden_states = tf.RaggedTensor.from_row_lengths(
        np.concatenate(ordered), np.array([len(r) for r in ordered], np.int64), validate=False)
    cache = PrefixCache(hidden_states)
    logging.info("cached the frozen prefix (embeddings + %d layers) of %d examples: %.1f MB in %s",
                 model.adapter_config.adapter_drop, len(ordered), cache.nbytes / 1e6, np.dtype(CACHE_DTYPE).name)
    return cache
