"""Tokenisation throughput of the Transform stage's tokenizer (modules.preprocessing.BertPairTokenizer).

    python -m bench.transform_throughput [--examples 10240] [--repeats 3]

Real SST-2 train sentences (GLUE_DIR or ../shared/glue/SST-2/train.tsv, read with the GlueExampleGen reader),
MiniLM's vocabulary, max_seq_length 128, single-sentence mode as for SST-2, inside a tf.function. Batch
sizes 256 and 64 are interleaved; examples/s is the median over repeats of tokenising `--examples`
sentences. This is the TF graph alone: the Transform component adds Beam/TFT overhead on top.

Also the cost of building that graph, which TFT pays each time it traces `preprocessing_fn` (nine times per
Transform run): seconds to trace the sentence-pair tokenizer into a fresh tf.function (median over repeats) and
the number of ops it makes.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=10240, help="sentences per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from bench import common

    path = common.glue_file_or_exit("SST-2")
    started = common.machine_state()
    import numpy as np
    import tensorflow as tf
    from components.glue_example_gen.executor import read_examples
    from modules import backbone
    from modules.glue import FEATURE_TEXT_A, get_task
    from modules.preprocessing import BertPairTokenizer

    sentences = [e.features.feature[FEATURE_TEXT_A].bytes_list.value[0]
                 for e in read_examples(path, get_task("sst2"), labeled=True)]
    sentences = (sentences * (1 + args.examples // len(sentences)))[:args.examples]
    tokenizer = BertPairTokenizer(backbone.tokenizer_settings(backbone.resolve_model_dir("minilm")), 128)
    tokenize = tf.function(lambda texts: tokenizer(texts), input_signature=[tf.TensorSpec([None], tf.string)])
    lengths = []

    def make(batch_size: int):
        batches = [tf.constant(sentences[i:i + batch_size]) for i in range(0, len(sentences), batch_size)]

        def measure() -> float:
            start = time.perf_counter()
            for batch in batches:
                out = tokenize(batch)
            out["input_ids"].numpy()
            return len(sentences) / (time.perf_counter() - start)

        return measure

    variants = {"batch 256": make(256), "batch 64": make(64)}
    for measure in variants.values():  # trace + warm up
        measure()
    lengths = np.concatenate([tokenize(tf.constant(sentences[i:i + 1024]))["length"].numpy()
                              for i in range(0, len(sentences), 1024)])
    values = common.interleave(variants, args.repeats)
    med = {k: common.median(v) for k, v in values.items()}
    trace_seconds, trace_ops = [], 0
    for _ in range(args.repeats):
        start = time.perf_counter()
        graph = tf.function(lambda a, b: tokenizer(a, b)).get_concrete_function(
            tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string)).graph
        trace_seconds.append(time.perf_counter() - start)
        trace_ops = len(graph.get_operations())
    print(f"\ntracing the pair tokenizer: median {common.median(trace_seconds):.2f} s, {trace_ops} ops")
    table = common.print_table(["variant", "median ex/s", "min", "max"],
                               [[k, med[k], min(v), max(v)] for k, v in values.items()])
    common.write_results("transform_throughput", {
        "settings": {"data": path, "sentences_per_measurement": len(sentences), "repeats": args.repeats,
                     "max_seq_length": 128, "backbone_vocab": "minilm", "mode": "single sentence (SST-2)"},
        "token_length": {"mean": float(lengths.mean()), "p50": float(np.median(lengths)), "max": int(lengths.max())},
        "examples_per_second": {k: {"values": v, "median": med[k]} for k, v in values.items()}, "table": table,
        "pair_tokenizer_trace": {"seconds": trace_seconds, "median_seconds": common.median(trace_seconds),
                                 "ops": trace_ops},
    }, started)


if __name__ == "__main__":
    main()
