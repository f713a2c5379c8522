"""Test-set prediction throughput: TFX's BulkInferrer (the pipeline's prediction stage) against calling the pushed
model's predict_text signature in batches of 32, on the same real MRPC test rows, in one process.

    python -m bench.bulk_inference [--model_dir outputs/serving/mrpc/<version>] [--repeats 3]

  bulk_inferrer     tfx.components.bulk_inferrer.executor.Executor().Do on ExampleGen-format test examples, with
                    the pipeline's data and model specs (bulk_inference signature, output examples per split):
                    the whole stage as a pod or LocalDagRunner runs it, Beam DirectRunner, model load included
  predict_text_b32  the SavedModel's raw-text signature in batches of 32 (tokenization included), model loaded once
                    beforehand (not timed): what a serving client gets at batch 32

Needs a pushed MRPC model (the main command's) and the real MRPC test file; exits SKIPPED without them.
"""
from __future__ import annotations

import argparse
import glob
import os
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


def latest_pushed(serving_base: str) -> str:
    versions = sorted((int(v) for v in os.listdir(serving_base) if v.isdigit())) if os.path.isdir(serving_base) else []
    if not versions:
        print(f"SKIPPED: no pushed model under {serving_base} (run `python -m pipeline.run` first).")
        raise SystemExit(0)
    return os.path.join(serving_base, str(versions[-1]))


def main() -> None:
    from bench import common

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", help="a pushed SavedModel (default: the newest under outputs/serving/mrpc)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved measurements of each variant")
    args = parser.parse_args()
    model_dir = args.model_dir or latest_pushed(os.path.join(common.REPO_ROOT, "outputs", "serving", "mrpc"))
    test_path = common.glue_file_or_exit("MRPC", "test.tsv")
    started = common.machine_state()

    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the tokenizer ops inside the signatures)
    from tfx.components.bulk_inferrer import executor as bulk_executor
    from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
    from tfx.utils import proto_utils

    from components.glue_example_gen.executor import read_examples
    from modules.glue import FEATURE_TEXT_A, FEATURE_TEXT_B, get_task
    from pipeline.pipeline import bulk_inferrer_specs

    task = get_task("mrpc")
    examples = list(read_examples(test_path, task, labeled=False))
    scratch = tempfile.mkdtemp(prefix="bench-bulk-")
    split_dir = os.path.join(scratch, "examples", "Split-test")
    os.makedirs(split_dir)
    with tf.io.TFRecordWriter(os.path.join(split_dir, "data.gz"), options="GZIP") as writer:
        for example in examples:
            writer.write(example.SerializeToString())
    data_spec, model_spec, output_spec = bulk_inferrer_specs(task, ["test"])
    properties = {standard_component_specs.DATA_SPEC_KEY: proto_utils.proto_to_json(data_spec),
                  standard_component_specs.MODEL_SPEC_KEY: proto_utils.proto_to_json(model_spec),
                  standard_component_specs.OUTPUT_EXAMPLE_SPEC_KEY: proto_utils.proto_to_json(output_spec)}
    runs = []

    def bulk_inferrer() -> float:
        inputs = standard_artifacts.Examples()
        inputs.uri, inputs.split_names = os.path.join(scratch, "examples"), artifact_utils.encode_split_names(["test"])
        model = standard_artifacts.Model()  # a Model artifact holds its SavedModel in Format-Serving/
        model.uri = os.path.join(scratch, "model")
        if not os.path.islink(os.path.join(model.uri, "Format-Serving")):
            os.makedirs(model.uri, exist_ok=True)
            os.symlink(os.path.abspath(model_dir), os.path.join(model.uri, "Format-Serving"))
        output = standard_artifacts.Examples()
        output.uri = os.path.join(scratch, f"output{len(runs)}")
        start = time.perf_counter()
        bulk_executor.Executor().Do({"examples": [inputs], "model": [model]},
                                    {standard_component_specs.OUTPUT_EXAMPLES_KEY: [output]}, properties)
        seconds = time.perf_counter() - start
        written = glob.glob(os.path.join(output.uri, "Split-test", "*"))
        runs.append(sum(1 for _ in tf.data.TFRecordDataset(written, compression_type="GZIP")))
        return len(examples) / seconds

    signature = tf.saved_model.load(model_dir).signatures["predict_text"]
    texts = [(e.features.feature[FEATURE_TEXT_A].bytes_list.value[0], e.features.feature[FEATURE_TEXT_B].bytes_list.value[0])
             for e in examples]
    batches = [(tf.constant([a for a, _ in texts[i:i + 32]]), tf.constant([b for _, b in texts[i:i + 32]]))
               for i in range(0, len(texts), 32)]
    signature(sentence1=batches[0][0], sentence2=batches[0][1])  # warm-up

    def predict_text_b32() -> float:
        start = time.perf_counter()
        for a, b in batches:
            signature(sentence1=a, sentence2=b)["probabilities"].numpy()
        return len(examples) / (time.perf_counter() - start)

    rates = common.interleave({"bulk_inferrer": bulk_inferrer, "predict_text_b32": predict_text_b32}, args.repeats)
    assert runs and all(count == len(examples) for count in runs), f"BulkInferrer wrote {runs} of {len(examples)}"
    medians = {name: common.median(values) for name, values in rates.items()}
    print()
    table = common.print_table(["variant", "examples/s (median)", "seconds for the test set"],
                               [[name, rate, len(examples) / rate] for name, rate in medians.items()])
    ratio = medians["bulk_inferrer"] / medians["predict_text_b32"]
    print(f"bulk_inferrer / predict_text_b32: {ratio:.2f}x (target >= 1)")
    common.write_results("bulk_inference", {
        "settings": {"model_dir": model_dir, "data": test_path, "rows": len(examples), "repeats": args.repeats},
        "examples_per_second": {name: {"values": rates[name], "median": medians[name]} for name in rates},
        "ratio_bulk_inferrer_over_predict_text_b32": ratio, "table": table,
    }, started)


if __name__ == "__main__":
    main()
