"""Where an adapter training step's time goes outside its matrix products: float32, mixed_bfloat16 and bfloat16
products only (--precision bfloat16_matmul, the default on CPUs with native bfloat16).

    python -m bench.studies.train_step_profile [--steps 5] [--repeats 3]

bench.train_throughput's model, optimizer and synthetic batch (MiniLM, Houlsby adapters of 64, batch 32 x 128).
Per precision: the Keras fit step's wall time (median over interleaved repeats), then the TensorFlow profiler's
op-level trace of `--steps` warm steps, summed by op type per step, and the matrix products' own rate: the step's
matmul FLOPs (bench.train_throughput.flops_per_example) over the time of the matmul ops alone, as a share of the
machine's matmul limit in that dtype (measured in the same run); the other ops' time split into forward, backward
(node names under gradient_tape/) and optimizer (AdamW/). XLA variants are left out: XLA runs the whole step as one
compiled cluster, which this trace cannot look inside.
"""
from __future__ import annotations

import argparse
import collections
import os
import tempfile
from typing import Dict

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench import common  # noqa: E402

# The op types that are matrix products (oneDNN's fused kernels included) and the ones that only change dtype.
MATMUL_OPS = {"MatMul", "_MklMatMul", "_FusedMatMul", "_MklFusedMatMul", "BatchMatMulV2", "_MklBatchMatMulV2",
              "BatchMatMulV3", "Einsum", "_MklEinsum", "_MklFusedBatchMatMulV2"}
CAST_OPS = {"Cast"}


def category(op_type: str) -> str:
    if op_type in MATMUL_OPS:
        return "matrix products"
    if op_type in CAST_OPS:
        return "casts"
    return "everything else"


def other_ops_by_pass(logdir: str, steps: int) -> Dict[str, float]:
    """Milliseconds per step of the ops that are not matrix products, by pass: forward, backward, optimizer."""
    from bench.studies.serving_profile import host_op_events

    milliseconds: Dict[str, float] = collections.Counter()
    for node, op_type, ms in host_op_events(logdir):
        if op_type not in MATMUL_OPS:
            stage = ("backward" if node.startswith("gradient_tape/") else
                     "optimizer" if node.startswith("AdamW/") else "forward")
            milliseconds[stage] += ms / steps
    return dict(milliseconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="fit steps per measurement and in the profiled trace")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    started = common.machine_state()
    import tensorflow as tf

    from bench.studies.serving_profile import ADAPTER_OPS, op_time_by_type
    from bench.train_throughput import (BATCH, SEQ, MatmulLimit, adapter_params, build, fit_rate, flops_per_example,
                                        matmul_shapes, synthetic_batch, synthetic_dataset)
    from modules.trainer import bfloat16_matmuls

    features, labels = synthetic_batch()
    dataset = synthetic_dataset(features, labels)
    models = {"float32": build(False), "mixed_bfloat16": build(False, bf16=True), "bfloat16_matmul": build(False)}
    fit_names = {"float32": "adapter", "mixed_bfloat16": "adapter_bf16", "bfloat16_matmul": "adapter_bf16_matmul"}
    config = models["float32"].bert.config
    limits = {"float32": MatmulLimit(matmul_shapes(config, BATCH * SEQ), "float32"),
              "bfloat16": MatmulLimit(matmul_shapes(config, BATCH * SEQ), "bfloat16")}
    limit_of = {"float32": "float32", "mixed_bfloat16": "bfloat16", "bfloat16_matmul": "bfloat16"}
    for name, model in models.items():  # trace and warm up
        fit_rate(model, dataset, args.steps, fit_names[name])
    for limit in limits.values():
        limit.measure(1)
    variants = {name: (lambda m=model, n=fit_names[name]: fit_rate(m, dataset, args.steps, n))
                for name, model in models.items()}
    variants.update({f"matmul limit {name}": (lambda l=limit: l.measure(args.steps)) for name, limit in limits.items()})
    values = common.interleave(variants, args.repeats)
    train_flops = flops_per_example(config, SEQ, adapter_params(models["float32"]))["train"] * BATCH

    rows, profiles = [], {}
    for name, model in models.items():
        logdir = tempfile.mkdtemp(prefix=f"train_step_profile_{name}_")
        tf.profiler.experimental.start(logdir)
        with bfloat16_matmuls(name == "bfloat16_matmul", model):
            model.fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=0)
        tf.profiler.experimental.stop()
        by_type = op_time_by_type(logdir, args.steps)
        profiles[name] = by_type
        step_ms = 1000 * BATCH / common.median(values[name])
        limit = common.median(values[f"matmul limit {limit_of[name]}"])
        totals: Dict[str, float] = {}
        for op_type, figures in by_type.items():
            if op_type != ADAPTER_OPS:
                totals[category(op_type)] = totals.get(category(op_type), 0.0) + figures["ms_per_call"]
        matmul_ms = totals.get("matrix products", 0.0)
        traced = sum(totals.values())
        passes = other_ops_by_pass(logdir, args.steps)
        rows.append([name, step_ms, traced, matmul_ms, totals.get("casts", 0.0), totals.get("everything else", 0.0),
                     passes.get("forward", 0.0), passes.get("backward", 0.0), passes.get("optimizer", 0.0),
                     train_flops / (matmul_ms / 1000) / 1e9 / limit * 100 if matmul_ms else float("nan"),
                     train_flops / (step_ms / 1000) / 1e9 / limit * 100])
        print(f"\n{name}: the 12 op types that take longest, ms per step")
        common.print_table(["op type", "ms/step", "ops/step"],
                           [[op, f["ms_per_call"], f["ops_per_call"]] for op, f in list(by_type.items())[:12]])
    print()
    table = common.print_table(
        ["precision", "step ms (wall)", "traced op ms", "matmul ms", "cast ms", "other ms",
         "non-matmul: forward ms", "backward ms", "optimizer ms",
         "matmul ops at % of limit", "whole step at % of limit"], rows)
    common.write_results("train_step_profile", {
        "settings": {"batch": BATCH, "seq_length": SEQ, "steps": args.steps, "repeats": args.repeats,
                     "train_flops_per_step": train_flops, "matmul_op_types": sorted(MATMUL_OPS)},
        "rates": {k: {"values": v, "median": common.median(v)} for k, v in values.items()},
        "op_time_by_type": profiles, "table": table,
    }, started)


if __name__ == "__main__":
    main()
