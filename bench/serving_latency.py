"""Serving latency of the raw-text signature: adapter model vs the plain backbone with the same head.

    python -m bench.serving_latency [--calls 40] [--batch-repeats 3]

trainer.export_serving_model needs a TFTransformOutput (the Transform stage's artifact), which this
benchmark does not have, so it exports an EQUIVALENT tf.Module: the Transform tokenizer
(modules.preprocessing.BertPairTokenizer, MiniLM vocabulary, max_seq_length 128) + trainer.model_inputs + the
model + trainer.predict_outputs, under a `predict_text(sentence1, sentence2)` signature like
ServingModule.text_signature. The SavedModels are reloaded with tf.saved_model.load and called through the
signature in-process (no TF Serving binary on these machines).

  adapter: AdapterBertClassifier (Houlsby adapters, bottleneck 64)
  adapter_k3: the same with AdapterDrop K = 3 (adapters in layers 3-5 only)
  plain:   AdapterBertClassifier(full_finetune=True): the same backbone and head, no adapters
  *_fixed128: the same models fed the Transform output's fixed padding to 128, as exported before
              trainer.model_inputs cut each batch to its longest example

Batch 1: `--calls` calls per model on MRPC dev sentence pairs, the models alternating call by call;
median and p95 latency. Batch 32: `--batch-repeats` interleaved measurements of 5 calls; examples/s.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


def export(model, tokenizer_settings, directory: str, trim: bool) -> None:
    import tensorflow as tf
    from modules import serving
    from modules.glue import get_task
    from modules.model import INPUT_NAMES
    from modules.preprocessing import BertPairTokenizer

    task = get_task("mrpc")

    class TextServing(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.tokenizer = BertPairTokenizer(tokenizer_settings, 128)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sentence1"),
                                      tf.TensorSpec([None], tf.string, name="sentence2")])
        def predict_text(self, sentence1, sentence2):
            features = self.tokenizer(sentence1, sentence2)
            features = serving.model_inputs(features) if trim else {k: features[k] for k in INPUT_NAMES}
            return serving.predict_outputs(task, self.model(features, training=False))

    module = TextServing()
    tf.saved_model.save(module, directory, signatures={serving.TEXT_SIGNATURE: module.predict_text.get_concrete_function()})


def pairs(n: int):
    from bench import common

    path = os.path.join(common.GLUE_DIR, "MRPC", "dev.tsv")
    if os.path.isfile(path):
        from components.glue_example_gen.executor import read_examples
        from modules.glue import get_task

        rows = [(e.features.feature["sentence1"].bytes_list.value[0], e.features.feature["sentence2"].bytes_list.value[0])
                for e in read_examples(path, get_task("mrpc"), labeled=True)]
        source = path
    else:
        rows = [(b"The company said its profit rose sharply in the third quarter.",
                 b"Third-quarter profit rose sharply, the company said.")]
        source = "built-in sentence pair (MRPC dev not found)"
    return (rows * (1 + n // len(rows)))[:n], source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=40, help="batch-1 calls per model")
    parser.add_argument("--batch-repeats", type=int, default=3, help="interleaved batch-32 measurements")
    args = parser.parse_args()
    from bench import common

    started = common.machine_state()
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the tokenizer's custom ops, needed to load the SavedModels)
    from modules import backbone, serving
    from modules.adapters import AdapterConfig
    from modules.model import AdapterBertClassifier

    settings = backbone.tokenizer_settings(backbone.resolve_model_dir("minilm"))
    scratch = tempfile.mkdtemp(prefix="bench-serving-")
    signatures, adapter_head = {}, None
    for name, full, drop in (("adapter", False, 0), ("adapter_k3", False, 3), ("plain", True, 0)):
        model = AdapterBertClassifier(backbone.load_backbone("minilm"), 2, AdapterConfig(adapter_drop=drop),
                                      full_finetune=full)
        if adapter_head is None:
            adapter_head = model.classifier.get_weights()
        else:  # the other models get the same head weights as the adapter model
            model.classifier.set_weights(adapter_head)
        for variant, trim in [(name, True)] + ([(f"{name}_fixed128", False)] if not drop else []):
            export(model, settings, os.path.join(scratch, variant), trim)
            signatures[variant] = tf.saved_model.load(os.path.join(scratch, variant)).signatures[serving.TEXT_SIGNATURE]

    data, source = pairs(max(args.calls, 32 * 5))
    one = [(tf.constant([a]), tf.constant([b])) for a, b in data[:args.calls]]
    batches = [(tf.constant([a for a, _ in data[i:i + 32]]), tf.constant([b for _, b in data[i:i + 32]]))
               for i in range(0, 32 * 5, 32)]
    for sig in signatures.values():  # warm-up
        for a, b in one[:3] + batches[:1]:
            sig(sentence1=a, sentence2=b)["probabilities"].numpy()

    latency = common.alternating_latency_ms(
        {name: (lambda inputs, sig=sig: sig(sentence1=inputs[0], sentence2=inputs[1])["probabilities"].numpy())
         for name, sig in signatures.items()}, one)

    def batch_rate(sig) -> float:
        start = time.perf_counter()
        for a, b in batches:
            sig(sentence1=a, sentence2=b)["probabilities"].numpy()
        return 32 * len(batches) / (time.perf_counter() - start)

    throughput = common.interleave({n: (lambda s=s: batch_rate(s)) for n, s in signatures.items()}, args.batch_repeats)
    stats = {n: common.latency_stats(v) for n, v in latency.items()}
    tput = {n: {"values": v, "median": common.median(v)} for n, v in throughput.items()}
    ratios = {}
    for a, p in (("adapter", "plain"), ("adapter_fixed128", "plain_fixed128"), ("adapter_k3", "plain")):
        ratios.update({f"batch1 median latency {a}/{p}": stats[a]["median_ms"] / stats[p]["median_ms"],
                       f"batch1 p95 latency {a}/{p}": stats[a]["p95_ms"] / stats[p]["p95_ms"],
                       f"batch32 throughput {a}/{p}": tput[a]["median"] / tput[p]["median"]})
    ratios["batch1 median latency plain_fixed128/plain (trimming's speed-up)"] = (
        stats["plain_fixed128"]["median_ms"] / stats["plain"]["median_ms"])
    targets = {"batch 1 within 5%": ratios["batch1 median latency adapter/plain"] <= 1.05,
               "batch 32 within 5%": ratios["batch32 throughput adapter/plain"] >= 1 / 1.05}
    print()
    table = common.print_table(["model", "b1 median ms", "b1 p95 ms", "b32 ex/s (median)"],
                               [[n, stats[n]["median_ms"], stats[n]["p95_ms"], tput[n]["median"]] for n in signatures])
    print()
    common.print_table(["ratio", "value"], [[k, v] for k, v in ratios.items()])
    print("targets:", targets)
    common.write_results("serving_latency", {
        "settings": {"export": "equivalent tf.Module (BertPairTokenizer + model + trainer.predict_outputs), "
                               "signature predict_text; not trainer.export_serving_model (needs a TFT output)",
                     "max_seq_length": 128, "data": source,
                     "padding": "adapter, plain: cut to the batch's longest example (trainer.model_inputs, as "
                                "exported); *_fixed128: the Transform output's fixed 128",
                     "batch1_calls_per_model": args.calls, "batch32_repeats": args.batch_repeats,
                     "batch32_calls_per_measurement": len(batches)},
        "batch1_latency": {**stats, "values_ms": latency}, "batch32_examples_per_second": tput,
        "ratios": ratios, "targets": targets, "table": table,
    }, started)


if __name__ == "__main__":
    main()
