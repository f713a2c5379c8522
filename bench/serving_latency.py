"""Serving latency of the raw-text signature: adapter model vs the plain backbone with the same head, the export
options of modules/serving.py (XLA, bfloat16), and AdapterHub on the same pairs in the same run.

    python -m bench.serving_latency [--calls 40] [--batch-repeats 3] [--adapterhub PYTHON [--hub-threads 0 1]]
                                    [--adapters ADAPTERS_DIR]

serving.export_serving_model needs a TFTransformOutput (the Transform stage's artifact), which this
benchmark does not have, so it exports an EQUIVALENT tf.Module: the Transform tokenizer
(modules.preprocessing.BertPairTokenizer, MiniLM vocabulary, max_seq_length 128) + the model part as
ServingModule runs it (serving.ServingModel: serving.model_inputs + the model, or an export option) +
serving.predict_outputs, under a `predict_text(sentence1, sentence2)` signature like ServingModule.text_signature.
The SavedModels are reloaded with tf.saved_model.load and called through the signature in-process (no TF Serving
binary on these machines).

  adapter: AdapterBertClassifier (Houlsby adapters, bottleneck 64)
  adapter_k3: the same with AdapterDrop K = 3 (adapters in layers 3-5 only)
  plain:   AdapterBertClassifier(full_finetune=True): the same backbone and head, no adapters
  *_fixed128: the same models fed the Transform output's fixed padding to 128, as exported before
              trainer.model_inputs cut each batch to its longest example
  adapter_xla, adapter_bf16, adapter_bf16_xla: the adapter model exported with serving.ServingModel's options
              (XLA on the export's length bounds, serving.xla_length_bounds(128); bfloat16 products)
  adapterhub[_bf16][_threadsN]: AdapterHub's Houlsby adapters on the same MiniLM weights, eager PyTorch with
              its fast tokenizer (bench/studies/adapterhub_serving.py in AdapterHub's venv, one process per
              --hub-threads setting, 0 = PyTorch's default), float32 and under bfloat16 autocast

Batch 1: `--calls` calls per model on MRPC dev sentence pairs, the models alternating call by call, the order
rotated by one at each pair (AdapterHub times its own call inside its process); median and p95 latency. Batch 32: `--batch-repeats` interleaved
measurements of 5 calls; examples/s. `--adapters`: trained MiniLM adapter weights (a Trainer's adapters
directory) for the adapter models, so that the reported probability differences of the export options are
those of a trained model.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from typing import Any, Dict, List, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from modules.serving import xla_length_bounds  # noqa: E402

MAX_SEQ_LENGTH = 128
LENGTH_BOUNDS = xla_length_bounds(MAX_SEQ_LENGTH)  # what the Trainer exports with --serving_export xla
EXPORT_OPTIONS = {"adapter_xla": {"xla_length_bounds": LENGTH_BOUNDS}, "adapter_bf16": {"bfloat16": True},
                  "adapter_bf16_xla": {"xla_length_bounds": LENGTH_BOUNDS, "bfloat16": True}}


def export(model, tokenizer_settings, directory: str, trim: bool, **options) -> None:
    """The predict_text signature of `model` (serving.ServingModel with `options`); `trim` False: fixed 128."""
    import tensorflow as tf
    from modules import serving
    from modules.glue import get_task
    from modules.model import INPUT_NAMES, Untracked
    from modules.preprocessing import BertPairTokenizer

    task = get_task("mrpc")
    serving_model = serving.ServingModel(model, **options)

    class TextServing(tf.Module):
        def __init__(self):
            super().__init__()
            self.model_variables = serving_model.variables
            self._py = Untracked(model=serving_model)
            self.tokenizer = BertPairTokenizer(tokenizer_settings, MAX_SEQ_LENGTH)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sentence1"),
                                      tf.TensorSpec([None], tf.string, name="sentence2")], autograph=False)
        def predict_text(self, sentence1, sentence2):
            features = self.tokenizer(sentence1, sentence2)
            if trim:
                logits = self._py.model(features)
            else:
                logits = self._py.model.model({k: features[k] for k in INPUT_NAMES}, training=False)
            return serving.predict_outputs(task, logits)

    module = TextServing()
    tf.saved_model.save(module, directory, signatures={serving.TEXT_SIGNATURE: module.predict_text.get_concrete_function()})


class AdapterHub:
    """bench/studies/adapterhub_serving.py in AdapterHub's venv, answering one measurement per request."""

    SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "studies", "adapterhub_serving.py")

    def __init__(self, python: str, model_dir: str, pairs: Sequence[tuple], threads: int, scratch: str):
        path = os.path.join(scratch, "pairs.json")
        with open(path, "w") as f:
            json.dump([[a.decode(), b.decode()] for a, b in pairs], f)
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.process = subprocess.Popen([python, self.SCRIPT, model_dir, path, "--max-seq-length", str(MAX_SEQ_LENGTH)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = self._answer()

    def _answer(self) -> Dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("AdapterHub's serving process ended (see its stderr above)")
        return json.loads(line)

    def ask(self, request: str) -> Dict[str, Any]:
        self.process.stdin.write(request + "\n")
        self.process.stdin.flush()
        return self._answer()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


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
    parser.add_argument("--adapterhub", metavar="PYTHON", default="",
                        help="AdapterHub's venv python (e.g. ../hubenv/bin/python): measure it in the same run")
    parser.add_argument("--hub-threads", type=int, nargs="+", default=[0],
                        help="PyTorch thread settings for AdapterHub, one process each (0: PyTorch's default)")
    parser.add_argument("--adapters", default="", help="trained MiniLM adapter weights for the adapter models")
    args = parser.parse_args()
    from bench import common

    started = common.machine_state()
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the tokenizer's custom ops, needed to load the SavedModels)
    from modules import backbone, serving
    from modules.adapters import AdapterConfig
    from modules.model import AdapterBertClassifier, load_adapter_weights, read_adapter_config

    settings = backbone.tokenizer_settings(backbone.resolve_model_dir("minilm"))
    scratch = common.scratch_dir("bench-serving-")
    signatures, adapter_head, export_seconds = {}, None, {}
    for name, full, drop in (("adapter", False, 0), ("adapter_k3", False, 3), ("plain", True, 0)):
        if name == "adapter" and args.adapters:
            config = AdapterConfig(**read_adapter_config(args.adapters)["adapter"])
            model = AdapterBertClassifier(backbone.load_backbone("minilm"), 2, config)
            load_adapter_weights(model, args.adapters)
        else:
            model = AdapterBertClassifier(backbone.load_backbone("minilm"), 2, AdapterConfig(adapter_drop=drop),
                                          full_finetune=full)
        if adapter_head is None:
            adapter_head = model.classifier.get_weights()
        else:  # the other models get the same head weights as the adapter model
            model.classifier.set_weights(adapter_head)
        variants = [(name, True, {})] + ([(f"{name}_fixed128", False, {})] if not drop else [])
        if name == "adapter":
            variants += [(variant, True, options) for variant, options in EXPORT_OPTIONS.items()]
        for variant, trim, options in variants:
            start = time.perf_counter()
            export(model, settings, os.path.join(scratch, variant), trim, **options)
            export_seconds[variant] = round(time.perf_counter() - start, 1)
            signatures[variant] = tf.saved_model.load(os.path.join(scratch, variant)).signatures[serving.TEXT_SIGNATURE]

    data, source = pairs(max(args.calls, 32 * 5))
    one = [(tf.constant([a]), tf.constant([b])) for a, b in data[:args.calls]]
    batches = [(tf.constant([a for a, _ in data[i:i + 32]]), tf.constant([b for _, b in data[i:i + 32]]))
               for i in range(0, 32 * 5, 32)]
    warm_up_seconds = {}
    for name, sig in signatures.items():  # warm-up: every length bucket and batch shape (XLA compiles each)
        start = time.perf_counter()
        for a, b in one + batches[:1]:
            sig(sentence1=a, sentence2=b)["probabilities"].numpy()
        warm_up_seconds[name] = round(time.perf_counter() - start, 1)

    # Largest |probability difference| of each export option from the float32 adapter model, on the batch-1 pairs.
    reference = [signatures["adapter"](sentence1=a, sentence2=b)["probabilities"].numpy() for a, b in one]
    differences = {name: max(float(np.abs(signatures[name](sentence1=a, sentence2=b)["probabilities"].numpy() - r).max())
                             for (a, b), r in zip(one, reference)) for name in EXPORT_OPTIONS}

    def timed_ms(call) -> float:
        start = time.perf_counter()
        call()
        return 1000 * (time.perf_counter() - start)

    one_calls = {name: (lambda k, sig=sig: timed_ms(lambda: sig(sentence1=one[k][0], sentence2=one[k][1])
                                                    ["probabilities"].numpy())) for name, sig in signatures.items()}

    def batch_rate(sig) -> float:
        start = time.perf_counter()
        for a, b in batches:
            sig(sentence1=a, sentence2=b)["probabilities"].numpy()
        return 32 * len(batches) / (time.perf_counter() - start)

    batch_calls = {n: (lambda s=s: batch_rate(s)) for n, s in signatures.items()}
    hubs: List[AdapterHub] = []
    if args.adapterhub:
        for threads in args.hub_threads:
            print(f"starting AdapterHub (threads {threads or 'default'})...", flush=True)
            hub = AdapterHub(args.adapterhub, backbone.resolve_model_dir("minilm"), data, threads, scratch)
            hubs.append(hub)
            for precision in ("", " bf16"):
                name = "adapterhub" + precision.replace(" ", "_") + (f"_threads{threads}" if threads else "")
                one_calls[name] = lambda k, hub=hub, p=precision: hub.ask(f"b1 {k}{p}")["ms"]
                batch_calls[name] = lambda hub=hub, p=precision: hub.ask(f"b32 {len(batches)}{p}")["examples_per_second"]
                for k in range(5):  # warm-up (the process warmed up its model too)
                    one_calls[name](k)

    latency: Dict[str, List[float]] = {name: [] for name in one_calls}
    names = list(one_calls)
    for k in range(len(one)):  # call by call, the models alternating; each in every place of the order in turn
        for name in names[k % len(names):] + names[:k % len(names)]:  # (the first after AdapterHub finds cold caches)
            latency[name].append(one_calls[name](k))
    throughput = common.interleave(batch_calls, args.batch_repeats)
    hub_info = [hub.info for hub in hubs]
    for hub in hubs:
        hub.close()
    stats = {n: common.latency_stats(v) for n, v in latency.items()}
    tput = {n: {"values": v, "median": common.median(v)} for n, v in throughput.items()}
    ratios = {}
    for a, p in (("adapter", "plain"), ("adapter_fixed128", "plain_fixed128"), ("adapter_k3", "plain")):
        ratios.update({f"batch1 median latency {a}/{p}": stats[a]["median_ms"] / stats[p]["median_ms"],
                       f"batch1 p95 latency {a}/{p}": stats[a]["p95_ms"] / stats[p]["p95_ms"],
                       f"batch32 throughput {a}/{p}": tput[a]["median"] / tput[p]["median"]})
    ratios["batch1 median latency plain_fixed128/plain (trimming's speed-up)"] = (
        stats["plain_fixed128"]["median_ms"] / stats["plain"]["median_ms"])
    for option in EXPORT_OPTIONS:
        ratios.update({f"batch1 median latency {option}/adapter": stats[option]["median_ms"] / stats["adapter"]["median_ms"],
                       f"batch32 throughput {option}/adapter": tput[option]["median"] / tput["adapter"]["median"]})
    targets = {"batch 1 within 5%": ratios["batch1 median latency adapter/plain"] <= 1.05,
               "batch 32 within 5%": ratios["batch32 throughput adapter/plain"] >= 1 / 1.05}
    hub_groups = {"AdapterHub float32": [n for n in one_calls if n.startswith("adapterhub") and "bf16" not in n],
                  "AdapterHub any precision": [n for n in one_calls if n.startswith("adapterhub")]}
    for group, names in hub_groups.items():
        if not names:
            continue
        best_latency = min(stats[n]["median_ms"] for n in names)  # the peer at its best thread setting
        best_rate = max(tput[n]["median"] for n in names)
        for name in ["adapter"] + list(EXPORT_OPTIONS):
            ratios[f"batch1 median latency {name}/best {group}"] = stats[name]["median_ms"] / best_latency
            ratios[f"batch32 throughput {name}/best {group}"] = tput[name]["median"] / best_rate
            targets[f"{name}: batch 1 median <= best {group}"] = stats[name]["median_ms"] <= best_latency
            targets[f"{name}: batch 32 ex/s >= best {group}"] = tput[name]["median"] >= best_rate
    print()
    table = common.print_table(["model", "b1 median ms", "b1 p95 ms", "b32 ex/s (median)"],
                               [[n, stats[n]["median_ms"], stats[n]["p95_ms"], tput[n]["median"]] for n in one_calls])
    print()
    common.print_table(["export option", "max |probability - float32|", "export s", "warm-up s"],
                       [[n, f"{differences[n]:.1e}", export_seconds[n], warm_up_seconds[n]] for n in EXPORT_OPTIONS])
    print()
    common.print_table(["ratio", "value"], [[k, v] for k, v in ratios.items()])
    print("targets:", json.dumps(targets, indent=1))
    common.write_results("serving_latency", {
        "settings": {"export": "equivalent tf.Module (BertPairTokenizer + serving.ServingModel + "
                               "serving.predict_outputs), signature predict_text; not serving.export_serving_model "
                               "(needs a TFT output)",
                     "max_seq_length": MAX_SEQ_LENGTH, "data": source, "xla_length_bounds": LENGTH_BOUNDS,
                     "adapters": args.adapters or "untrained (random head)",
                     "adapterhub": args.adapterhub or "not measured", "hub_threads": args.hub_threads,
                     "padding": "adapter, plain: cut to the batch's longest example (trainer.model_inputs, as "
                                "exported); *_fixed128: the Transform output's fixed 128",
                     "batch1_calls_per_model": args.calls, "batch32_repeats": args.batch_repeats,
                     "batch32_calls_per_measurement": len(batches)},
        "batch1_latency": {**stats, "values_ms": latency}, "batch32_examples_per_second": tput,
        "max_probability_difference_from_float32": differences, "export_seconds": export_seconds,
        "warm_up_seconds": warm_up_seconds, "adapterhub": hub_info,
        "ratios": ratios, "targets": targets, "table": table,
    }, started)


if __name__ == "__main__":
    main()
