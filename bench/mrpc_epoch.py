"""One MRPC training epoch: fixed padding to 128 vs length-bucketed batches (trainer.make_dataset).

    python -m bench.mrpc_epoch [--steps 6] [--repeats 2] [--full-epoch]

Tokenises ../shared/glue/MRPC/train.tsv (GLUE_DIR) with the Transform tokenizer (BertPairTokenizer, MiniLM
vocabulary, max_seq_length 128) into gzip TFRecords holding what the Transform stage writes (input_ids,
attention_mask, token_type_ids [128] int64, length, label), then reads them with
trainer.make_dataset(bucketing=False / True, batch 32, shuffle seed 42) and trains the adapter model
(AdapterBertClassifier + trainer.compile_model, Keras train step) on the epoch's batches.

A full epoch (115 steps per mode) takes too long on a loaded 2-core machine, so by default each
measurement is `--steps` consecutive batches of the epoch (later repeats take later batches; the two modes
interleaved), and the epoch time is EXTRAPOLATED: measured seconds per padded token x the epoch's padded
tokens (batch x padded length summed over the epoch's batches). `--full-epoch` times the whole epoch once
per mode instead. The first batches of each mode (one per distinct shape seen in warm-up) are not timed.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

SEQ, BATCH = 128, 32


def write_transformed(path: str, out_file: str) -> int:
    import tensorflow as tf
    from components.glue_example_gen.executor import read_glue_tsv
    from modules import backbone
    from modules.glue import FEATURE_LABEL, FEATURE_TEXT_A, FEATURE_TEXT_B, get_task
    from modules.preprocessing import BertPairTokenizer

    examples = list(read_glue_tsv(path, get_task("mrpc"), labeled=True))
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
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per measurement")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--full-epoch", action="store_true", help="time whole epochs (slow) instead of extrapolating")
    args = parser.parse_args()
    from bench import common

    path = common.glue_file_or_exit("MRPC")
    started = common.machine_state()
    import numpy as np
    import tensorflow as tf
    from modules import backbone, trainer
    from modules.glue import get_task
    from modules.model import AdapterBertClassifier
    from pipeline.configs import TrainingConfig

    scratch = tempfile.mkdtemp(prefix="bench-mrpc-")
    records = os.path.join(scratch, "transformed-00000-of-00001.gz")
    start = time.perf_counter()
    num_examples = write_transformed(path, records)
    tokenize_seconds = time.perf_counter() - start
    spec = {k: tf.io.FixedLenFeature([SEQ], tf.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    spec.update(length=tf.io.FixedLenFeature([], tf.int64), label=tf.io.FixedLenFeature([], tf.int64))

    config = TrainingConfig(task="mrpc")
    task = get_task("mrpc")
    modes, models, epochs = ("fixed", "bucketed"), {}, {}
    for mode in modes:
        dataset = trainer.make_dataset([records], spec, BATCH, SEQ, shuffle_seed=config.seed, bucketing=mode == "bucketed")
        epochs[mode] = list(dataset)  # the epoch's batches, in order
        model = AdapterBertClassifier(backbone.load_backbone("minilm"), task.num_labels, config.adapter_config())
        trainer.compile_model(model, config, task, total_steps=len(epochs[mode]) * config.epochs)
        models[mode] = model
    models["bucketed"].set_weights(models["fixed"].get_weights())
    padded = {m: [int(x["input_ids"].shape[0] * x["input_ids"].shape[1]) for x, _ in epochs[m]] for m in modes}
    real_tokens = int(sum(int(np.sum(x["attention_mask"])) for x, _ in epochs["fixed"]))

    def train(mode: str, batches) -> float:
        for x, y in batches:
            loss = models[mode].train_on_batch(x, y)
        return loss

    # Warm-up: trace the train step (bucketed: until shapes are generalised; a real epoch pays this too).
    warm = {}
    for mode in modes:
        seen, start = set(), time.perf_counter()
        for x, y in epochs[mode][:4]:
            models[mode].train_on_batch(x, y)
            seen.add(int(x["input_ids"].shape[1]))
        warm[mode] = {"seconds": time.perf_counter() - start, "batches": 4, "lengths": sorted(seen)}
    cursor = {m: 4 for m in modes}
    timing = {m: {"seconds": [], "padded_tokens": [], "examples": []} for m in modes}

    def measure(mode: str) -> float:
        n = len(epochs[mode]) - 4 if args.full_epoch else args.steps
        if cursor[mode] + n > len(epochs[mode]):
            cursor[mode] = 4
        batches = epochs[mode][cursor[mode]:cursor[mode] + n]
        tokens = sum(padded[mode][cursor[mode]:cursor[mode] + n])
        cursor[mode] += n
        start = time.perf_counter()
        train(mode, batches)
        seconds = time.perf_counter() - start
        examples = sum(int(y.shape[0]) for _, y in batches)
        timing[mode]["seconds"].append(seconds)
        timing[mode]["padded_tokens"].append(tokens)
        timing[mode]["examples"].append(examples)
        return examples / seconds

    values = common.interleave({m: (lambda m=m: measure(m)) for m in modes}, 1 if args.full_epoch else args.repeats)
    results = {}
    for m in modes:
        per_token = common.median([s / t for s, t in zip(timing[m]["seconds"], timing[m]["padded_tokens"])])
        epoch_seconds = per_token * sum(padded[m])
        results[m] = {
            "epoch_steps": len(epochs[m]), "epoch_padded_tokens": sum(padded[m]),
            "mean_padded_length": sum(padded[m]) / num_examples,
            "measured_examples_per_second": {"values": values[m], "median": common.median(values[m])},
            "seconds_per_padded_token_median": per_token,
            "epoch_seconds_extrapolated": epoch_seconds,
            "epoch_examples_per_second_extrapolated": num_examples / epoch_seconds,
            "warmup": warm[m],
        }
    speedup = results["bucketed"]["epoch_examples_per_second_extrapolated"] / results["fixed"]["epoch_examples_per_second_extrapolated"]
    targets = {"bucketed >= 45 ex/s": results["bucketed"]["epoch_examples_per_second_extrapolated"] >= 45,
               "bucketed >= 2x fixed": speedup >= 2}
    print()
    table = common.print_table(
        ["mode", "steps/epoch", "mean padded len", "measured ex/s (median)", "epoch s (extrap.)", "epoch ex/s (extrap.)"],
        [[m, r["epoch_steps"], r["mean_padded_length"], r["measured_examples_per_second"]["median"],
          r["epoch_seconds_extrapolated"], r["epoch_examples_per_second_extrapolated"]] for m, r in results.items()])
    print(f"bucketed / fixed: {speedup:.2f}x   padded-token ratio fixed/bucketed: "
          f"{sum(padded['fixed']) / sum(padded['bucketed']):.2f}   mean real length: {real_tokens / num_examples:.1f}")
    print("targets:", targets)
    common.write_results("mrpc_epoch", {
        "settings": {"data": path, "examples": num_examples, "batch_size": BATCH, "max_seq_length": SEQ,
                     "steps_per_measurement": None if args.full_epoch else args.steps, "repeats": args.repeats,
                     "full_epoch": args.full_epoch, "model": "minilm + houlsby adapters (bottleneck 64)",
                     "extrapolation": None if args.full_epoch else
                     "epoch time = median(seconds / padded tokens) over measurements x padded tokens of the epoch"},
        "tokenize_and_write_seconds": tokenize_seconds, "mean_real_length": real_tokens / num_examples,
        "modes": results, "timing": timing, "bucketed_over_fixed": speedup, "targets": targets, "table": table,
    }, started)


if __name__ == "__main__":
    main()
