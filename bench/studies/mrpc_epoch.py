"""One real MRPC training epoch: fixed padding to 128 vs length-bucketed batches, as the Trainer runs it.

    python -m bench.studies.mrpc_epoch [--repeats 2]

Tokenises ../shared/glue/MRPC/train.tsv (GLUE_DIR) with the Transform tokenizer (BertPairTokenizer, MiniLM
vocabulary, max_seq_length 128) into gzip TFRecords holding what the Transform stage writes (input_ids,
attention_mask, token_type_ids [128] int64, length, label), reads them with trainer.make_dataset
(bucketing=False / True, batch 32, shuffle seed 42) and trains the adapter model (trainer.build_model,
trainer.compile_model) with Keras fit, one whole epoch per measurement, modes interleaved. A first untimed
epoch per mode traces the train step (bucketed: once per batch shape until Keras generalises the shapes; the
Trainer's first epoch pays this too, reported as "first epoch").
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

SEQ, BATCH = 128, 32


def write_transformed(path: str, out_file: str) -> int:
    import tensorflow as tf
    from components.glue_example_gen.executor import read_examples
    from modules import backbone
    from modules.glue import FEATURE_LABEL, FEATURE_TEXT_A, FEATURE_TEXT_B, get_task
    from modules.preprocessing import BertPairTokenizer

    examples = list(read_examples(path, get_task("mrpc"), labeled=True))
    value = lambda e, k: e.features.feature[k]  # noqa: E731
    a = tf.constant([value(e, FEATURE_TEXT_A).bytes_list.value[0] for e in examples])
    b = tf.constant([value(e, FEATURE_TEXT_B).bytes_list.value[0] for e in examples])
    labels = [value(e, FEATURE_LABEL).int64_list.value[0] for e in examples]
    features = BertPairTokenizer(backbone.tokenizer_settings(backbone.resolve_model_dir("minilm")), SEQ)(a, b)
    features = {k: v.numpy() for k, v in features.items()}
    ints = lambda xs: tf.train.Feature(int64_list=tf.train.Int64List(value=list(xs)))  # noqa: E731
    with tf.io.TFRecordWriter(out_file, options="GZIP") as writer:
        for i, label in enumerate(labels):
            feature = {k: ints(features[k][i]) for k in ("input_ids", "attention_mask", "token_type_ids")}
            feature["length"], feature["label"] = ints([features["length"][i]]), ints([label])
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs per mode")
    args = parser.parse_args()
    from bench import common

    path = common.glue_file_or_exit("MRPC")
    started = common.machine_state()
    import numpy as np
    import tensorflow as tf
    from modules import trainer
    from modules.glue import get_task
    from modules.config import TrainingConfig

    scratch = common.scratch_dir("bench-mrpc-")
    records = os.path.join(scratch, "transformed-00000-of-00001.gz")
    start = time.perf_counter()
    num_examples = write_transformed(path, records)
    tokenize_seconds = time.perf_counter() - start
    spec = {k: tf.io.FixedLenFeature([SEQ], tf.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    spec.update(length=tf.io.FixedLenFeature([], tf.int64), label=tf.io.FixedLenFeature([], tf.int64))

    config = TrainingConfig(task="mrpc")
    task = get_task("mrpc")
    modes, models, datasets, padded = ("fixed", "bucketed"), {}, {}, {}
    for mode in modes:
        dataset = trainer.make_dataset([records], spec, BATCH, SEQ, shuffle_seed=config.seed, bucketing=mode == "bucketed")
        masks = [x["attention_mask"] for x, _ in dataset]  # one epoch's batches
        padded[mode] = [int(np.prod(mask.shape)) for mask in masks]  # batch x padded length
        real_tokens = int(sum(int(np.sum(mask)) for mask in masks))  # the same in both modes
        datasets[mode] = dataset.apply(tf.data.experimental.assert_cardinality(len(padded[mode])))
        models[mode] = trainer.build_model(config, task)
        trainer.compile_model(models[mode], config, task, total_steps=len(padded[mode]) * config.epochs)
    models["bucketed"].set_weights(models["fixed"].get_weights())

    def epoch(mode: str) -> float:
        start = time.perf_counter()
        models[mode].fit(datasets[mode], epochs=1, verbose=0)
        return num_examples / (time.perf_counter() - start)

    first = {}
    for mode in modes:
        print(f"first (tracing) epoch, {mode}...", flush=True)
        first[mode] = epoch(mode)
    values = common.interleave({m: (lambda m=m: epoch(m)) for m in modes}, args.repeats)
    results = {m: {"epoch_steps": len(padded[m]), "epoch_padded_tokens": sum(padded[m]),
                   "mean_padded_length": sum(padded[m]) / num_examples,
                   "first_epoch_examples_per_second": first[m],
                   "examples_per_second": {"values": values[m], "median": common.median(values[m])}}
               for m in modes}
    rate = {m: results[m]["examples_per_second"]["median"] for m in modes}
    speedup = rate["bucketed"] / rate["fixed"]
    targets = {"bucketed >= 45 ex/s": rate["bucketed"] >= 45,
               "bucketed >= 2x fixed": speedup >= 2}
    print()
    table = common.print_table(
        ["mode", "steps/epoch", "mean padded len", "epoch ex/s (median)", "epoch s", "first epoch ex/s"],
        [[m, r["epoch_steps"], r["mean_padded_length"], rate[m], num_examples / rate[m],
          r["first_epoch_examples_per_second"]] for m, r in results.items()])
    print(f"bucketed / fixed: {speedup:.2f}x   padded-token ratio fixed/bucketed: "
          f"{sum(padded['fixed']) / sum(padded['bucketed']):.2f}   mean real length: {real_tokens / num_examples:.1f}")
    print("targets:", targets)
    common.write_results("mrpc_epoch", {
        "settings": {"data": path, "examples": num_examples, "batch_size": BATCH, "max_seq_length": SEQ,
                     "repeats": args.repeats, "model": "minilm + houlsby adapters (bottleneck 64)",
                     "measurement": "Keras fit of one whole epoch of trainer.make_dataset"},
        "tokenize_and_write_seconds": tokenize_seconds, "mean_real_length": real_tokens / num_examples,
        "modes": results, "bucketed_over_fixed": speedup, "targets": targets, "table": table,
    }, started)


if __name__ == "__main__":
    main()
