"""What a Trainer run spends outside its epochs' steps: tracing the first training step and exporting the
SavedModel, the project's way against TensorFlow's and Keras' defaults (the project's way before 2026-12-03).

    python -m bench.studies.trace_overhead [--repeats 2]

Each measurement runs in a fresh child process (TensorFlow keeps traced functions in-process); the variants
alternate. MiniLM adapter model (trainer.build_model, trainer.compile_model), float32, seed 42.

  train step, a batch of 32 x 128, MRPC head:
    project: AdapterBertClassifier.train_step (traced without AutoGraph), optimizer slots built in compile_model
    keras:   Keras' own Model.train_step (AutoGraph converts it and the model), slots created in the first step
    seconds to trace the train function, its first call and a later call; graph ops; a hash of the trainable
    weights after 4 steps with dropout on (equal hashes: the variants train bit-identically)
  export of an MRPC Transform output (tft_beam.AnalyzeDataset on one row: the tokenizer needs no analyzer):
    project: trainer.export_serving_model (the model's variables saved, not the Keras model; no AutoGraph)
    keras:   the same module holding the Keras model (tf.saved_model.save then also traces and saves every
             layer's call functions) and tracing its signatures with AutoGraph
    seconds to trace the signatures and to save; the reloaded signatures' largest difference between variants
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VARIANTS = ("project", "keras")
PAIRS = (["the cat sat on the mat .", "a dog ran in the park ."], ["a cat was sitting on the mat .", "nothing ."])


def write_transform_output(directory: str, model_dir: str) -> str:
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io

    from components.glue_schema_gen import glue_schema
    from modules import preprocessing

    metadata = dataset_metadata.DatasetMetadata(glue_schema("mrpc"))
    config = {"model": model_dir, "max_seq_length": 128, "task": "mrpc"}
    row = {"sentence1": b"a", "sentence2": b"b", "idx": 0, "label": 1}
    with tft_beam.Context(temp_dir=tempfile.mkdtemp(dir=directory)):
        transform_fn = ([row], metadata) | tft_beam.AnalyzeDataset(
            functools.partial(preprocessing.preprocessing_fn, custom_config=config))
        _ = transform_fn | tft_beam.WriteTransformFn(directory)
    metadata_io.write_metadata(metadata, os.path.join(directory, tft.TFTransformOutput.RAW_METADATA_DIR))
    return directory


def keras_way_module(model, tf_transform_output, task):
    """trainer.ServingModule as it was: the Keras model tracked, signatures traced with AutoGraph."""
    import tensorflow as tf
    from modules import serving
    from modules.glue import FEATURE_TEXT_A, FEATURE_TEXT_B

    class KerasWayModule(serving.ServingModule):
        def __init__(self):
            super().__init__(model, tf_transform_output, task)
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve_examples(self, examples):
            return self._predict(tf.io.parse_example(examples, self.raw_feature_spec))

        def text_signature(self):
            @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=FEATURE_TEXT_A),
                                          tf.TensorSpec([None], tf.string, name=FEATURE_TEXT_B)])
            def serve_text(sentence1, sentence2):
                return self._predict({FEATURE_TEXT_A: sentence1, FEATURE_TEXT_B: sentence2})
            return serve_text.get_concrete_function()

    return KerasWayModule()


def child(variant: str, transform_dir: str) -> Dict[str, object]:
    import numpy as np
    import tensorflow as tf
    import tensorflow_transform as tft
    import tf_keras as keras

    from bench.train_throughput import synthetic_batch
    from modules import serving, trainer
    from modules.config import TrainingConfig
    from modules.glue import get_task

    keras.utils.set_random_seed(42)
    config, task = TrainingConfig(), get_task("mrpc")
    model = trainer.build_model(config, task)
    build = keras.optimizers.AdamW.build
    if variant == "keras":
        model.train_step = keras.Model.train_step.__get__(model)
        keras.optimizers.AdamW.build = lambda self, var_list: None  # Keras then builds the slots in the first step
    trainer.compile_model(model, config, task, total_steps=10_000)
    keras.optimizers.AdamW.build = build
    batches = [synthetic_batch(seed) for seed in range(4)]
    spec = ({name: tf.TensorSpec([None, None], tf.int64) for name in batches[0][0]}, tf.TensorSpec([None], tf.int64))
    iterator = iter(tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=spec))
    model.make_train_function()
    function = model.train_tf_function
    start = time.perf_counter()
    concrete = function.get_concrete_function(iterator)
    result: Dict[str, object] = {"trace_s": time.perf_counter() - start, "traces": function.experimental_get_tracing_count(),
                                 "graph_ops": len(concrete.graph.get_operations())}
    seconds = []
    for _ in batches:
        start = time.perf_counter()
        function(iterator)
        seconds.append(time.perf_counter() - start)
    result.update(first_call_s=seconds[0], later_call_s=float(np.median(seconds[1:])),
                  weights_sha1=hashlib.sha1(b"".join(v.numpy().tobytes() for v in model.trainable_variables)).hexdigest())

    tf_transform_output = tft.TFTransformOutput(transform_dir)
    directory = common.scratch_dir(f"trace-overhead-{variant}-")
    start = time.perf_counter()
    if variant == "keras":
        module = keras_way_module(model, tf_transform_output, task)
    else:
        module = serving.ServingModule(model, tf_transform_output, task)
    signatures = module.signatures()
    result["export_trace_s"] = time.perf_counter() - start
    start = time.perf_counter()
    tf.saved_model.save(module, directory, signatures=signatures)
    result["export_save_s"] = time.perf_counter() - start
    result["export_s"] = result["export_trace_s"] + result["export_save_s"]
    loaded = tf.saved_model.load(directory).signatures[serving.TEXT_SIGNATURE]
    result["probabilities"] = loaded(sentence1=tf.constant(PAIRS[0]), sentence2=tf.constant(PAIRS[1]))[
        "probabilities"].numpy().tolist()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="child processes per variant")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--transform_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.transform_dir)))
        return

    import numpy as np

    from bench import common
    from modules import backbone

    started = common.machine_state()
    transform_dir = write_transform_output(common.scratch_dir("trace-overhead-tft-"),
                                           backbone.resolve_model_dir(backbone.DEFAULT_MODEL))
    runs: Dict[str, list] = {variant: [] for variant in VARIANTS}
    for repeat in range(args.repeats):
        for variant in VARIANTS:
            cmd = [sys.executable, "-m", "bench.studies.trace_overhead", "--child", variant, "--transform_dir", transform_dir]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=common.REPO_ROOT)
            if out.returncode != 0:
                print(out.stderr[-3000:])
                raise RuntimeError(f"child {variant} failed")
            runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
            row = runs[variant][-1]
            print(f"  repeat {repeat + 1} {variant}: trace {row['trace_s']:.1f} s, export {row['export_s']:.1f} s")
    keys = ("trace_s", "first_call_s", "later_call_s", "export_trace_s", "export_save_s", "export_s")
    med = {variant: {key: common.median([r[key] for r in rows]) for key in keys} for variant, rows in runs.items()}
    same_weights = len({r["weights_sha1"] for rows in runs.values() for r in rows}) == 1
    probabilities = {variant: np.array(rows[0]["probabilities"]) for variant, rows in runs.items()}
    export_diff = float(np.abs(probabilities["project"] - probabilities["keras"]).max())
    saved = {key: med["keras"][key] - med["project"][key] for key in ("trace_s", "export_s")}

    print(f"\nmedians of {args.repeats} child processes per variant (seconds)")
    print(f"{'variant':<10}" + "".join(f"{key:>16}" for key in keys) + f"{'graph ops':>11}{'traces':>8}")
    for variant in VARIANTS:
        print(f"{variant:<10}" + "".join(f"{med[variant][key]:>16.1f}" for key in keys)
              + f"{runs[variant][0]['graph_ops']:>11}{runs[variant][0]['traces']:>8}")
    print(f"saved per Trainer run: {saved['trace_s']:.0f} s tracing the train step, {saved['export_s']:.0f} s "
          f"exporting; weights after 4 steps bit-identical: {same_weights}; exports' largest probability "
          f"difference: {export_diff:.2g}")
    common.write_results("trace_overhead", {
        "runs": runs, "medians": med, "saved_seconds": saved, "weights_bit_identical": same_weights,
        "export_max_probability_difference": export_diff,
    }, started)

if __name__ == "__main__":
    main()
