"""One sentence pair answered for every task of a bundle: the 'all_tasks' signature vs one call per task.

    python -m bench.bundle_latency [--calls 30]

Bundles of 3 and 5 sentence-pair tasks (mrpc, rte, stsb, qnli, qqp; adapters with random weights, bottleneck 64,
max_seq_length 128) on the offline MiniLM-L6 backbone, built and saved as `python -m pipeline.bundle` does
(modules.bundle.build_bundle + save_bundle) and reloaded with tf.saved_model.load; every task at AdapterDrop
K = 0 (nothing shared but the call) or K = 3 (the embeddings and layers 0-2 run once for all tasks).

For each bundle, `--calls` MRPC dev sentence pairs, batch 1, in turn through:
  all_tasks  loaded.signatures["all_tasks"](sentence1, sentence2): every task's outputs in one call
  per_task   loaded.signatures[task](sentence1, sentence2) for each task, one after the other
the two alternating pair by pair; median and p95 latency, and their ratio (all_tasks / per_task).
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, List

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

TASKS = ("mrpc", "rte", "stsb", "qnli", "qqp")


def saved_bundle(tasks: List[str], adapter_drop: int, scratch: str) -> str:
    """Writes random adapters for `tasks` at K = adapter_drop, bundles them; returns the SavedModel directory."""
    import numpy as np
    from modules import backbone
    from modules.adapters import AdapterConfig
    from modules.bundle import build_bundle, read_task_adapters, save_bundle
    from modules.glue import get_task
    from modules.model import AdapterBertClassifier, save_adapter_weights

    bert = backbone.load_backbone("minilm")
    rng = np.random.default_rng(0)
    adapter_sets = []
    for task in tasks:
        model = AdapterBertClassifier(bert, get_task(task).num_labels, AdapterConfig(adapter_drop=adapter_drop))
        for variable in model.trainable_variables:
            variable.assign(variable + rng.normal(0, 0.02, variable.shape).astype(np.float32))
        directory = os.path.join(scratch, f"k{adapter_drop}-{task}")
        save_adapter_weights(model, directory, extra={"task": task, "max_seq_length": 128, "model": "minilm"})
        adapter_sets.append(read_task_adapters(directory))
        bert = backbone.load_backbone("minilm")  # each task model inserts its adapters into its own backbone
    directory = os.path.join(scratch, f"bundle-{len(tasks)}-k{adapter_drop}")
    save_bundle(build_bundle("minilm", adapter_sets), directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=30, help="sentence pairs per variant and bundle")
    args = parser.parse_args()
    from bench import common
    from bench.serving_latency import pairs

    started = common.machine_state()
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the tokenizer's custom ops, needed to load the SavedModels)

    scratch = common.scratch_dir("bench-bundle-")
    data, source = pairs(args.calls)
    one = [(tf.constant([a]), tf.constant([b])) for a, b in data]
    results: Dict[str, Dict] = {}
    rows = []
    for n in (3, 5):
        for k in (0, 3):
            loaded = tf.saved_model.load(saved_bundle(list(TASKS[:n]), k, scratch))
            tasks = TASKS[:n]

            def all_tasks(inputs):
                a, b = inputs
                return [v.numpy() for v in loaded.signatures["all_tasks"](sentence1=a, sentence2=b).values()]

            def per_task(inputs):
                a, b = inputs
                return [v.numpy() for t in tasks for v in loaded.signatures[t](sentence1=a, sentence2=b).values()]

            variants = {"all_tasks": all_tasks, "per_task": per_task}
            common.alternating_latency_ms(variants, one[:3])  # warm-up
            latency = common.alternating_latency_ms(variants, one)
            stats = {name: {**common.latency_stats(v), "values_ms": v} for name, v in latency.items()}
            ratio = stats["all_tasks"]["median_ms"] / stats["per_task"]["median_ms"]
            results[f"{n} tasks, K={k}"] = {"tasks": list(tasks), "adapter_drop": k, **stats, "ratio": ratio}
            rows.append([n, k, stats["all_tasks"]["median_ms"], stats["per_task"]["median_ms"],
                         stats["all_tasks"]["p95_ms"], stats["per_task"]["p95_ms"], ratio])
            print(f"  {n} tasks, K={k}: all_tasks {stats['all_tasks']['median_ms']:.1f} ms, per task "
                  f"{stats['per_task']['median_ms']:.1f} ms", flush=True)
    print()
    table = common.print_table(["tasks", "K", "all_tasks median ms", "per-task calls median ms", "all_tasks p95 ms",
                                "per-task p95 ms", "all_tasks / per-task"], rows)
    target = results["5 tasks, K=3"]["ratio"] <= 0.6
    print(f"target (5 tasks at K=3: all_tasks <= 0.6 x five single-task calls): {'met' if target else 'not met'}")
    common.write_results("bundle_latency", {
        "settings": {"backbone": "minilm (offline MiniLM-L6)", "max_seq_length": 128, "batch": 1, "data": source,
                     "calls_per_variant": args.calls, "adapters": "random weights, bottleneck 64, Houlsby",
                     "order": "all_tasks and per_task alternate pair by pair"},
        "results": results, "target_5_tasks_k3_at_most_0.6": target, "table": table,
    }, started)


if __name__ == "__main__":
    main()
