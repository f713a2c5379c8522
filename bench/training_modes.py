"""Real MRPC training epochs in each arithmetic the Trainer offers: float32, mixed_bfloat16 or bfloat16 products
only, with or without XLA.

    python -m bench.training_modes [--repeats 2] [--examples N] [--epochs 10] [--modes float32 "bf16 matmul" ...]

What decides `--precision auto` and `--xla auto`: MRPC's train file tokenised as Transform writes it
(bench.studies.mrpc_epoch.write_transformed), read with trainer.make_dataset as the Trainer reads it (length
buckets, batch 32, shuffle seed 42; under XLA each batch padded to its bucket's bound), the adapter model of
trainer.build_model + trainer.compile_model trained by Keras fit, one whole epoch per measurement:
  float32              the default on CPUs without native bfloat16
  float32 + XLA        --precision float32 --xla on
  bf16                 --precision mixed_bfloat16 --xla off
  bf16 + XLA           --precision mixed_bfloat16 --xla on
  bf16 matmul          --precision bfloat16_matmul (float32 model, train step rewritten to bfloat16 products): the
                       default on CPUs with native bfloat16 for runs of fewer than 500 steps
  bf16 matmul + XLA    --precision bfloat16_matmul --xla on (the Dense layers cast to bfloat16 products themselves):
                       the default there for longer runs (trainer.XLA_MIN_STEPS)
Each mode's first epoch is timed on its own (it traces the step and, under XLA, compiles every batch shape), then
the later epochs interleaved (A, B, C, D, A, ...), medians reported. "whole run" is what a run of `--epochs`
epochs spends training: first epoch + (epochs - 1) x the median later epoch (dev evaluation excluded: the same in
every mode, the evaluation runs in float32 eagerly). `--examples` trains on the first N examples (every length
bucket stays in them), to measure on a busy machine in less time; the whole-run figure is then per N examples.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Dict, Tuple

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

SEQ, BATCH = 128, 32
MODES: Dict[str, Tuple[str, bool]] = {  # name -> (precision, XLA)
    "float32": ("float32", False),
    "float32 + XLA": ("float32", True),
    "bf16": ("mixed_bfloat16", False),
    "bf16 + XLA": ("mixed_bfloat16", True),
    "bf16 matmul": ("bfloat16_matmul", False),
    "bf16 matmul + XLA": ("bfloat16_matmul", True),
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.training_modes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="timed later epochs per mode")
    parser.add_argument("--examples", type=int, default=0, help="train on the first N examples (0: all 3,668)")
    parser.add_argument("--epochs", type=int, default=10, help="the run length of the whole-run estimate")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES),
                        help="measure only these (float32, the reference of every ratio, always)")
    args = parser.parse_args()
    modes = {name: MODES[name] for name in MODES if name in args.modes or name == "float32"}
    from bench import common
    from bench.studies.mrpc_epoch import write_transformed

    path = common.glue_file_or_exit("MRPC")
    started = common.machine_state()
    import tensorflow as tf
    from modules import trainer
    from modules.config import TrainingConfig
    from modules.glue import get_task

    records = os.path.join(common.scratch_dir("bench-modes-"), "transformed-00000-of-00001.gz")
    num_examples = write_transformed(path, records)
    if args.examples:
        subset = records.replace(".gz", "-subset.gz")
        with tf.io.TFRecordWriter(subset, options="GZIP") as writer:
            for record in tf.data.TFRecordDataset(records, compression_type="GZIP").take(args.examples):
                writer.write(record.numpy())
        records, num_examples = subset, min(args.examples, num_examples)
    spec = {k: tf.io.FixedLenFeature([SEQ], tf.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    spec.update(length=tf.io.FixedLenFeature([], tf.int64), label=tf.io.FixedLenFeature([], tf.int64))
    task = get_task("mrpc")
    models, datasets, shapes = {}, {}, {}
    for name, (precision, xla) in modes.items():
        config = TrainingConfig(task="mrpc", precision=precision, xla="on" if xla else "off")
        dataset = trainer.make_dataset([records], spec, BATCH, SEQ, shuffle_seed=config.seed, bucketing=True,
                                       bucket_shapes=xla)
        steps = sum(1 for _ in dataset)
        shapes[name] = len({tuple(batch[0]["input_ids"].shape) for batch in dataset})
        datasets[name] = dataset.apply(tf.data.experimental.assert_cardinality(steps))
        models[name] = trainer.build_model(config, task, precision)
        trainer.compile_model(models[name], config, task, total_steps=steps * args.epochs, jit_compile=xla)
    first_weights = models["float32"].get_weights()
    for model in models.values():
        model.set_weights(first_weights)

    def epoch_seconds(name: str) -> float:
        start = time.perf_counter()
        with trainer.bfloat16_matmuls(modes[name][0] == "bfloat16_matmul", models[name]):
            models[name].fit(datasets[name], epochs=1, verbose=0)
        return time.perf_counter() - start

    first, traces = {}, {}
    for name in modes:
        print(f"first epoch, {name} ...", flush=True)
        first[name] = epoch_seconds(name)
        traces[name] = models[name].train_tf_function.experimental_get_tracing_count()
        print(f"  {first[name]:.1f} s, the train step traced {traces[name]} time(s)", flush=True)
    later = common.interleave({name: (lambda n=name: epoch_seconds(n)) for name in modes}, args.repeats)
    results = {}
    for name in modes:
        median = common.median(later[name])
        results[name] = {"batch_shapes": shapes[name], "first_epoch_seconds": first[name], "traces": traces[name],
                         "later_epoch_seconds": {"values": later[name], "median": median},
                         "examples_per_second": num_examples / median,
                         "whole_run_seconds": first[name] + (args.epochs - 1) * median}
    base = results["float32"]["whole_run_seconds"]
    for name in modes:
        results[name]["whole_run_speedup"] = base / results[name]["whole_run_seconds"]
    print()
    table = common.print_table(
        ["mode", "batch shapes", "first epoch s", "later epoch s (median)", "ex/s", f"{args.epochs}-epoch run s",
         "x float32"],
        [[name, r["batch_shapes"], r["first_epoch_seconds"], r["later_epoch_seconds"]["median"],
          r["examples_per_second"], r["whole_run_seconds"], r["whole_run_speedup"]] for name, r in results.items()])
    common.write_results("training_modes", {
        "settings": {"data": path, "examples": num_examples, "batch_size": BATCH, "max_seq_length": SEQ,
                     "repeats": args.repeats, "epochs": args.epochs,
                     "model": "minilm + houlsby adapters (bottleneck 64)",
                     "measurement": "Keras fit of one whole epoch of trainer.make_dataset per mode"},
        "modes": results, "table": table,
    }, started)


if __name__ == "__main__":
    main()
