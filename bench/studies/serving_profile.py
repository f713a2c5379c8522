"""Where the time of the exported `predict_text` signature goes, and what the export options of
modules/serving.py change in it.

    python -m bench.studies.serving_profile [--calls 60] [--batch 1] [--adapters ADAPTERS_DIR]

MiniLM with Houlsby adapters (bottleneck 64), MRPC dev sentence pairs, `--batch` per call (1: one at a time).
Every part is a signature of one SavedModel, loaded back and called the way serving calls it; the parts alternate
call by call. Wall-clock
median and process CPU milliseconds per call (CPU time is less hurt by other jobs on a shared machine):
  signature_call     a signature that only counts its strings: the cost of calling a loaded signature
  tokenize           the Transform tokenizer (modules.preprocessing.BertPairTokenizer) + serving.model_inputs
  model_*            the model part on the tokenizer's output (pre-tokenized tensors): float32 as exported by
                     default, without adapters (the same backbone and head), and serving.ServingModel's options
                     (xla: on serving.xla_length_bounds; bf16: bfloat16 products, kernels stored in
                     bfloat16), and the mixed_bfloat16 policy (float32 weights cast at each call)
  predict_text       the whole default signature: tokenizer + float32 model + outputs
Then the TensorFlow profiler's op-level trace of `predict_text` (float32) and of `model_bf16` (warm): milliseconds
per call by op type.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import time
from typing import Dict, Iterator, List, Tuple

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench import common  # noqa: E402
from bench.serving_latency import LENGTH_BOUNDS, MAX_SEQ_LENGTH, pairs  # noqa: E402

ADAPTER_OPS = "(of which in adapters)"


def host_plane(logdir: str):
    """The host (CPU) plane of the TensorFlow profiler's trace in `logdir`: a line per thread, events on each."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0], "rb") as f:
        space.ParseFromString(f.read())
    return next(plane for plane in space.planes if plane.name == "/host:CPU")


def host_op_events(logdir: str) -> Iterator[Tuple[str, str, float]]:
    """(node name, op type, milliseconds) of every op TensorFlow's executor threads ran, from the profiler's host
    trace in `logdir`."""
    host = host_plane(logdir)
    for line in host.lines:
        if not line.name.startswith("tf_Compute"):  # the executor threads; "python" holds the caller's frames
            continue
        for event in line.events:
            name = host.event_metadata[event.metadata_id].name
            if ":" in name and not name.startswith("ExecutorState"):  # "<node name>:<op type>"
                node, op_type = name.rsplit(":", 1)
                yield node, op_type, event.duration_ps / 1e9


def op_time_by_type(logdir: str, calls: int) -> Dict[str, Dict[str, float]]:
    """Milliseconds and op executions per call by op type, from the profiler's host trace in `logdir`; the row
    ADAPTER_OPS sums the ops inside the adapters (node names with "adapter_<layer>_")."""
    milliseconds, count = collections.Counter(), collections.Counter()
    for node, op_type, ms in host_op_events(logdir):
        for key in [op_type] + ([ADAPTER_OPS] if re.search(r"/adapter_\d+_", node) else []):
            milliseconds[key] += ms / calls
            count[key] += 1 / calls
    return {op: {"ms_per_call": ms, "ops_per_call": count[op]} for op, ms in milliseconds.most_common()}


def logits_signature(part, features) -> "tf.types.experimental.GenericFunction":
    import tensorflow as tf

    return tf.function(lambda x: {"logits": part(x)}, input_signature=[features], autograph=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=60, help="calls per part")
    parser.add_argument("--batch", type=int, default=1, help="sentence pairs per call")
    parser.add_argument("--adapters", default="", help="trained MiniLM adapter weights (a Trainer's adapters dir)")
    args = parser.parse_args()
    started = common.machine_state()
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the tokenizer's custom ops)
    import tf_keras as keras

    from modules import backbone, serving
    from modules.adapters import AdapterConfig
    from modules.glue import get_task
    from modules.model import INPUT_NAMES, AdapterBertClassifier, Untracked, load_adapter_weights
    from modules.preprocessing import BertPairTokenizer

    def adapter_model(policy: str = "float32", full_finetune: bool = False) -> AdapterBertClassifier:
        keras.mixed_precision.set_global_policy(policy)
        model = AdapterBertClassifier(backbone.load_backbone("minilm"), 2, AdapterConfig(), full_finetune=full_finetune)
        keras.mixed_precision.set_global_policy("float32")
        return model

    model = adapter_model()
    if args.adapters:
        load_adapter_weights(model, args.adapters)
    plain = adapter_model(full_finetune=True)
    plain.classifier.set_weights(model.classifier.get_weights())
    mixed = adapter_model("mixed_bfloat16")
    mixed.set_weights(model.get_weights())
    parts = {"model_float32": serving.ServingModel(model), "model_no_adapters": serving.ServingModel(plain),
             "model_xla": serving.ServingModel(model, LENGTH_BOUNDS),
             "model_bf16": serving.ServingModel(model, bfloat16=True),
             "model_bf16_xla": serving.ServingModel(model, LENGTH_BOUNDS, bfloat16=True),
             "model_mixed_bfloat16": serving.ServingModel(mixed)}
    tokenizer = BertPairTokenizer(backbone.tokenizer_settings(backbone.resolve_model_dir("minilm")), MAX_SEQ_LENGTH)
    task = get_task("mrpc")
    text = [tf.TensorSpec([None], tf.string, name="sentence1"), tf.TensorSpec([None], tf.string, name="sentence2")]
    features = {name: tf.TensorSpec([None, MAX_SEQ_LENGTH], tf.int64, name=name) for name in INPUT_NAMES}
    features["length"] = tf.TensorSpec([None], tf.int64, name="length")

    module = tf.Module()
    module.saved = [v for part in parts.values() for v in part.variables]
    module.py = Untracked(parts=parts)
    signatures = {
        "signature_call": tf.function(lambda a, b: {"n": tf.size(a) + tf.size(b)}, input_signature=text, autograph=False),
        "tokenize": tf.function(lambda a, b: tokenizer(a, b), input_signature=text, autograph=False),
        "predict_text": tf.function(lambda a, b: serving.predict_outputs(task, parts["model_float32"](tokenizer(a, b))),
                                    input_signature=text, autograph=False)}
    for name, part in parts.items():
        signatures[name] = logits_signature(part, features)
    directory = common.scratch_dir("serving-profile-")
    tf.saved_model.save(module, directory, signatures={n: f.get_concrete_function() for n, f in signatures.items()})
    loaded = tf.saved_model.load(directory).signatures

    data, source = pairs(args.calls * args.batch)
    print(f"sentence pairs: {source}")
    batches = [data[i:i + args.batch] for i in range(0, len(data), args.batch)]
    text_inputs = [{"sentence1": tf.constant([a for a, _ in batch]), "sentence2": tf.constant([b for _, b in batch])}
                   for batch in batches]
    tokens = [loaded["tokenize"](**x) for x in text_inputs]
    inputs = {name: (tokens if name.startswith("model") else text_inputs) for name in signatures}
    for name, sig in loaded.items():  # warm-up: every length bucket (XLA compiles each shape)
        for x in inputs[name]:
            tf.nest.map_structure(lambda t: t.numpy(), sig(**x))
    wall: Dict[str, List[float]] = {name: [] for name in signatures}
    cpu: Dict[str, List[float]] = {name: [] for name in signatures}
    for k in range(args.calls):
        for name in signatures:
            start, start_cpu = time.perf_counter(), time.process_time()
            tf.nest.map_structure(lambda t: t.numpy(), loaded[name](**inputs[name][k]))
            wall[name].append(1000 * (time.perf_counter() - start))
            cpu[name].append(1000 * (time.process_time() - start_cpu))
    parts_table = common.print_table(
        [f"part (batch {args.batch})", "wall median ms", "CPU ms/call (median)"],
        [[name, common.median(wall[name]), common.median(cpu[name])] for name in signatures])

    traced, ops_tables = {}, []
    for name in ("predict_text", "model_bf16"):
        logdir = common.scratch_dir("serving-profile-trace-")
        tf.profiler.experimental.start(logdir)
        for x in inputs[name]:
            tf.nest.map_structure(lambda t: t.numpy(), loaded[name](**x))
        tf.profiler.experimental.stop()
        ops = op_time_by_type(logdir, len(inputs[name]))
        adapters = ops.pop(ADAPTER_OPS, {"ms_per_call": 0.0, "ops_per_call": 0.0})
        traced[name] = {**ops, ADAPTER_OPS: adapters}
        rows = [[op, v["ms_per_call"], f"{v['ops_per_call']:.0f}"] for op, v in list(ops.items())[:15]]
        rows.append(["all ops", sum(v["ms_per_call"] for v in ops.values()),
                     f"{sum(v['ops_per_call'] for v in ops.values()):.0f}"])
        rows.append([ADAPTER_OPS, adapters["ms_per_call"], f"{adapters['ops_per_call']:.0f}"])
        print()
        headers = [f"op type in {name}", "ms/call (summed over threads)", "ops/call"]
        ops_tables.append(common.print_table(headers, rows))
    common.write_results("serving_profile" if args.batch == 1 else f"serving_profile_batch{args.batch}", {
        "settings": {"calls": args.calls, "batch": args.batch, "data": source, "max_seq_length": MAX_SEQ_LENGTH,
                     "xla_length_bounds": LENGTH_BOUNDS, "adapters": args.adapters or "untrained"},
        "wall_median_ms": {n: common.median(v) for n, v in wall.items()},
        "cpu_median_ms": {n: common.median(v) for n, v in cpu.items()},
        "predict_text_ops": traced["predict_text"], "model_bf16_ops": traced["model_bf16"],
        "tables": [parts_table, *ops_tables],
    }, started)


if __name__ == "__main__":
    main()
