"""Where an adapter training step's time goes outside its matrix products: float32, mixed_bfloat16 and bfloat16
products only (--precision bfloat16_matmul, the default on CPUs with native bfloat16).

    python -m bench.studies.train_step_profile [--steps 5] [--repeats 3]

bench.train_throughput's model, optimizer and synthetic batch (MiniLM, Houlsby adapters of 64, batch 32 x 128).
Per precision: the Keras fit step's wall time (median over interleaved repeats), then the TensorFlow profiler's
op-level trace of `--steps` warm steps, summed by op type per step, and the matrix products' own rate: the step's
matmul FLOPs (bench.train_throughput.flops_per_example) over the time of the matmul ops alone, as a share of the
machine's matmul limit in that dtype (measured in the same run); the other ops' time split into forward, backward
(node names under gradient_tape/) and optimizer (AdamW/).

    python -m bench.studies.train_step_profile --xla [--steps 5] [--repeats 3]

The XLA-compiled bfloat16_matmul step instead (the Trainer's default on CPUs with native bfloat16 for runs of 500
steps or more). XLA runs the step as one compiled cluster, which the op trace cannot look inside, so the study
turns on XLA's own per-instruction trace (XLA_FLAGS --xla_cpu_enable_xprof_traceme) and reads what each traced
instruction is from XLA's dump of the optimised module (--xla_dump_to): oneDNN matrix products by output dtype
(bfloat16: the linear layers; float32: the attention's batch products), parallel loop fusions that draw random
bits (the dropout masks) or do not (the other elementwise work), reductions, oneDNN softmax.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
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
    parser.add_argument("--xla", action="store_true", help="profile the XLA-compiled bfloat16_matmul step")
    args = parser.parse_args()
    if args.xla:
        xla_main(args)
        return
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
        logdir = common.scratch_dir(f"train_step_profile_{name}_")
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


def xla_instruction_kinds(dump_dir: str) -> Dict[str, str]:
    """What each instruction of the largest optimised XLA module in `dump_dir` is (see the module docstring)."""
    path = max(glob.glob(os.path.join(dump_dir, "*cpu_after_optimizations.txt")), key=os.path.getsize)
    with open(path) as f:
        text = f.read()
    computations = {m.group(1): m.group(2) for m in re.finditer(r"^(\S+) .*?\{\n(.*?)\n\}", text, re.M | re.S)}
    kinds = {}
    for m in re.finditer(r"^\s*(?:ROOT )?(\S+) = (\w+)\[\S* ([\w-]+)\((.*)$", text, re.M):
        name, dtype, op, rest = m.groups()
        if op == "custom-call":
            target = re.search(r'custom_call_target="([^"]+)"', rest).group(1)
            kinds[name] = f"oneDNN matmul, {dtype} out" if "matmul" in target else f"oneDNN {target.split('$')[-1]}"
        elif op == "call":  # a parallel loop fusion; a u64[2] parameter is the random generator's state
            body = computations.get(re.search(r"to_apply=([\w.-]+)", rest).group(1), "")
            kinds[name] = "random bits (dropout masks)" if "u64[2]" in body else "elementwise fusions"
        elif op == "fusion":
            kinds[name] = "elementwise fusions"
        else:
            kinds[name] = "reductions" if op in ("reduce", "reduce-window") else "other"
    return kinds


def xla_main(args) -> None:
    """--xla: the XLA-compiled bfloat16_matmul step's wall time and its traced instructions' time by kind."""
    dump_dir = common.scratch_dir("train_step_profile_xla_dump_")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
                               f" --xla_dump_to={dump_dir} --xla_dump_hlo_as_text")
    started = common.machine_state()
    import tensorflow as tf

    from bench.studies.serving_profile import host_plane
    from bench.train_throughput import (BATCH, SEQ, MatmulLimit, adapter_params, build, fit_rate, flops_per_example,
                                        matmul_shapes, synthetic_batch, synthetic_dataset)
    from modules.trainer import bfloat16_matmuls

    features, labels = synthetic_batch()
    dataset = synthetic_dataset(features, labels)
    model = build(False, jit_compile=True)
    limit = MatmulLimit(matmul_shapes(model.bert.config, BATCH * SEQ), "bfloat16")
    fit_rate(model, dataset, args.steps, "adapter_bf16_matmul_xla")  # compiles
    limit.measure(1)
    values = common.interleave({"bfloat16_matmul + XLA": lambda: fit_rate(model, dataset, args.steps,
                                                                         "adapter_bf16_matmul_xla"),
                                "matmul limit bfloat16": lambda: limit.measure(args.steps)}, args.repeats)
    logdir = common.scratch_dir("train_step_profile_xla_")
    with bfloat16_matmuls(True, model):
        tf.profiler.experimental.start(logdir)
        model.fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=0)
        tf.profiler.experimental.stop()
    host = host_plane(logdir)
    kinds = xla_instruction_kinds(dump_dir)
    by_kind: Dict[str, float] = collections.Counter()
    for line in host.lines:
        for event in line.events:
            name = host.event_metadata[event.metadata_id].name.replace(".clone", "")
            if name in kinds:
                by_kind[kinds[name]] += event.duration_ps / 1e9 / args.steps
    step_ms = 1000 * BATCH / common.median(values["bfloat16_matmul + XLA"])
    limit_gflops = common.median(values["matmul limit bfloat16"])
    train_flops = flops_per_example(model.bert.config, SEQ, adapter_params(model))["train"] * BATCH
    traced = sum(by_kind.values())
    rows = [[kind, ms, 100 * ms / traced] for kind, ms in sorted(by_kind.items(), key=lambda item: -item[1])]
    table = common.print_table(["XLA instructions", "ms/step", "% of traced"], rows)
    print(f"step {step_ms:.0f} ms (wall), traced instructions {traced:.0f} ms; whole step at "
          f"{train_flops / (step_ms / 1000) / 1e9 / limit_gflops * 100:.1f}% of the bfloat16 matmul limit "
          f"({limit_gflops:.0f} GFLOP/s)")
    common.write_results("train_step_profile_xla", {
        "settings": {"batch": BATCH, "seq_length": SEQ, "steps": args.steps, "repeats": args.repeats,
                     "train_flops_per_step": train_flops, "xla_flags": os.environ["XLA_FLAGS"]},
        "rates": {k: {"values": v, "median": common.median(v)} for k, v in values.items()},
        "step_ms": step_ms, "ms_per_step_by_kind": dict(by_kind), "table": table,
    }, started)


if __name__ == "__main__":
    main()
