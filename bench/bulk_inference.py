"""Test-set prediction throughput: TFX's BulkInferrer (the pipeline's prediction stage) against calling the pushed
model's predict_text signature in batches of 32, on the same real MRPC test rows, in one process.

    python -m bench.bulk_inference [--model_dir outputs/serving/mrpc/<version>] [--repeats 3]

  bulk_inferrer     tfx.components.bulk_inferrer.executor.Executor().Do on ExampleGen-format test examples, with
                    the pipeline's data and model specs (bulk_inference signature, output examples per split):
                    the whole stage as a pod or LocalDagRunner runs it, Beam DirectRunner, model load included
  bulk_inferrer_32  the same stage on the first 32 rows only: its fixed cost (model load, Beam pipeline), which
                    gives the stage's rate beyond it, (rows - 32) / (seconds - seconds of 32 rows)
  predict_text_b32  the SavedModel's raw-text signature in batches of 32 (tokenization included), model loaded once
                    beforehand (not timed): what a serving client gets at batch 32

Needs a pushed MRPC model (the main command's) and the real MRPC test file; exits SKIPPED without them.
"""
from __future__ import annotations

import argparse
import glob
import os
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
    scratch = common.scratch_dir("bench-bulk-")
    for name, rows in (("examples", examples), ("examples_32", examples[:32])):
        os.makedirs(os.path.join(scratch, name, "Split-test"))
        with tf.io.TFRecordWriter(os.path.join(scratch, name, "Split-test", "data.gz"), options="GZIP") as writer:
            for example in rows:
                writer.write(example.SerializeToString())
    data_spec, model_spec, output_spec = bulk_inferrer_specs(task, ["test"])
    properties = {standard_component_specs.DATA_SPEC_KEY: proto_utils.proto_to_json(data_spec),
                  standard_component_specs.MODEL_SPEC_KEY: proto_utils.proto_to_json(model_spec),
                  standard_component_specs.OUTPUT_EXAMPLE_SPEC_KEY: proto_utils.proto_to_json(output_spec)}
    runs = []

    def bulk_inferrer(rows: int) -> float:
        """Seconds of the BulkInferrer executor on the first `rows` test rows."""
        inputs = standard_artifacts.Examples()
        inputs.uri = os.path.join(scratch, "examples" if rows == len(examples) else f"examples_{rows}")
        inputs.split_names = artifact_utils.encode_split_names(["test"])
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
        runs.append((rows, sum(1 for _ in tf.data.TFRecordDataset(written, compression_type="GZIP"))))
        return seconds

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
        return time.perf_counter() - start

    seconds = common.interleave({"bulk_inferrer": lambda: bulk_inferrer(len(examples)),
                                 "bulk_inferrer_32": lambda: bulk_inferrer(32),
                                 "predict_text_b32": predict_text_b32}, args.repeats)
    assert all(rows == count for rows, count in runs), f"BulkInferrer wrote (rows asked, rows written) {runs}"
    medians = {name: common.median(values) for name, values in seconds.items()}
    rows = {"bulk_inferrer": len(examples), "bulk_inferrer_32": 32, "predict_text_b32": len(examples)}
    beyond_start = (len(examples) - 32) / (medians["bulk_inferrer"] - medians["bulk_inferrer_32"])
    print()
    table = common.print_table(["variant", "rows", "seconds (median)", "examples/s"],
                               [[name, rows[name], medians[name], rows[name] / medians[name]] for name in medians])
    ratios = {"bulk_inferrer / predict_text_b32, whole stage": len(examples) / medians["bulk_inferrer"]
              / (len(examples) / medians["predict_text_b32"]),
              "bulk_inferrer / predict_text_b32, beyond the stage's fixed cost": beyond_start
              / (len(examples) / medians["predict_text_b32"])}
    common.print_table(["ratio (target >= 1)", "value"], [[k, v] for k, v in ratios.items()])
    common.write_results("bulk_inference", {
        "settings": {"model_dir": model_dir, "data": test_path, "rows": len(examples), "repeats": args.repeats},
        "seconds": {name: {"values": seconds[name], "median": medians[name], "rows": rows[name]} for name in seconds},
        "bulk_inferrer_examples_per_second_beyond_fixed_cost": beyond_start, "ratios": ratios, "table": table,
    }, started)


if __name__ == "__main__":
    main()
