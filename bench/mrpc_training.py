"""A whole MRPC training, all epochs, wall time: the project's Trainer against AdapterHub, one after the other.

    python -m bench.mrpc_training [--epochs 10] [--drops 0] [--precisions float32 bf16] [--no-full] [--no-adapterhub]

What a user waits for: a whole MRPC training (not a steady-state slice), each library at its best settings for the
same AdapterDrop K. Variants, each one real training run, run in turn on the same machine:
  project K=k      `python -m pipeline.run --task mrpc --epochs N --seed S --precision float32 [--adapter_drop k]`
                   (bench.glue_accuracy's run_pipeline; length-bucketed batches, K > 0 with the cached frozen prefix,
                   every core); "whole s" is the Trainer component's wall time from ML Metadata (backbone load,
                   counting the data, every epoch and its dev evaluation, SavedModel export)
  project K=k bf16 + XLA   the same with --precision mixed_bfloat16 --xla on: the fastest arithmetic (what auto
                   trained until 2026-12-07); measured by default on CPUs with native bfloat16 only
  project K=k bfloat16_matmul   the same with --precision bfloat16_matmul (bfloat16 products, float32 elsewhere):
                   what the default, --precision auto, trains on such CPUs; also on them only
  project full     the same pipeline with --full_finetune (learning rate 3e-5)
  AdapterHub K=k   bench/adapterhub_glue.py train run by $ADAPTERHUB_PYTHON (Houlsby adapters, bottleneck 64, the same MiniLM
                   weights and recipe, batches of similar length padded per batch, leave_out=[0..k-1], torch on
                   every core); "whole s" is its training loop with every epoch's dev evaluation and the adapter save
"train s" is the epochs' training alone in both (each library's per-epoch examples/s, evaluation excluded).
One run per variant (a whole 10-epoch run takes 35-55 minutes on 2 cores): read the ratios with the machine
state beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from typing import Any, Dict, List

from bench.common import GLUE_DIR, REPO_ROOT, glue_file_or_exit, machine_state, print_table, write_results
from bench.glue_accuracy import ADAPTER_LR, FULL_LR, Run, main_metric, run_pipeline
from modules.trainer import cpu_has_native_bfloat16

# AdapterHub's venv (docs/adapterhub.md): $ADAPTERHUB_PYTHON, else ../hubenv beside the project.
HUB_PYTHON = os.environ.get("ADAPTERHUB_PYTHON", os.path.join(REPO_ROOT, "..", "hubenv", "bin", "python"))
TASK = "mrpc"
# --precisions: (the pipeline's --precision, XLA on, the variant name's suffix)
PRECISIONS = {"float32": ("float32", False, ""), "bf16": ("mixed_bfloat16", True, " bf16 + XLA"),
              "bf16_matmul": ("bfloat16_matmul", False, " bfloat16_matmul")}


def project(run: Run, epochs: int, output_dir: str) -> Dict[str, Any]:
    row = run_pipeline(run, epochs, output_dir, GLUE_DIR)
    return {"whole_seconds": row["trainer_seconds"], "train_seconds": sum(e["seconds"] for e in row["history"]),
            "dev": row["metrics"][main_metric(TASK)], "trainable_parameters": row["trainable_parameters"],
            "history": row["history"], "command": row["command"]}


def adapterhub(drop: int, epochs: int, seed: int, output_dir: str) -> Dict[str, Any]:
    script = os.path.join(REPO_ROOT, "bench", "adapterhub_glue.py")
    cmd = [HUB_PYTHON, script, "train", os.path.join(output_dir, f"adapterhub-drop{drop}"), "--task", TASK,
           "--seed", str(seed), "--epochs", str(epochs), "--adapter_drop", str(drop), "--threads", str(os.cpu_count())]
    log_path = os.path.join(output_dir, f"adapterhub-drop{drop}.log")
    with open(log_path, "w") as log:
        process = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO_ROOT)
    if process.returncode != 0:
        raise RuntimeError(f"AdapterHub K={drop} failed (exit {process.returncode}); see {log_path}")
    result = json.loads(process.stdout.strip().splitlines()[-1])
    history = result["history"]
    return {"whole_seconds": result["seconds"],
            "train_seconds": sum(result["train_examples"] / e["examples_per_second"] for e in history),
            "dev": history[-1][f"dev_{main_metric(TASK)}"], "trainable_parameters": result["trainable_parameters"],
            "history": history, "command": "python bench/adapterhub_glue.py " + " ".join(cmd[3:])}


def ratios(runs: Dict[str, Dict[str, Any]], drops: List[int]) -> Dict[str, float]:
    """How many times longer each other variant took than the project's at each K (whole run and training alone):
    AdapterHub and full fine-tuning against float32, AdapterHub and float32 against bf16 + XLA; for the variants
    finished so far."""
    result: Dict[str, float] = {}
    for drop in drops:
        hub, f32, bf16 = f"AdapterHub K={drop}", f"project K={drop}", f"project K={drop} bf16 + XLA"
        for ours, other in ((f32, hub), (f32, "project full fine-tuning"), (bf16, hub), (bf16, f32)):
            if ours in runs and other in runs:
                for part in ("whole", "train"):
                    result[f"{other} / {ours}, {part}"] = (runs[other][f"{part}_seconds"]
                                                           / runs[ours][f"{part}_seconds"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mrpc_training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--drops", type=int, nargs="+", default=[0], metavar="K", help="AdapterDrop K values")
    parser.add_argument("--precisions", nargs="+", choices=sorted(PRECISIONS),
                        default=["float32", "bf16", "bf16_matmul"] if cpu_has_native_bfloat16() else ["float32"],
                        help="the project's arithmetic: float32, bf16 (+ XLA), bf16_matmul (--precision "
                             "bfloat16_matmul); default: all three where the CPU has native bfloat16, float32 "
                             "elsewhere")
    parser.add_argument("--no-full", action="store_true", help="skip full fine-tuning")
    parser.add_argument("--no-adapterhub", action="store_true", help="skip AdapterHub")
    parser.add_argument("--output_dir", default=os.path.join(REPO_ROOT, "outputs", "mrpc_training"),
                        help="each invocation writes its pipeline outputs and logs to a new directory here")
    args = parser.parse_args()
    glue_file_or_exit("MRPC", "train.tsv")
    glue_file_or_exit("MRPC", "dev.tsv")
    hub = not args.no_adapterhub and os.path.exists(HUB_PYTHON)
    if not args.no_adapterhub and not hub:
        print(f"AdapterHub skipped: {HUB_PYTHON} not found (set ADAPTERHUB_PYTHON; its venv: docs/adapterhub.md)")
    started = machine_state()
    os.makedirs(args.output_dir, exist_ok=True)
    # A fresh pipeline output per invocation: a rerun must train again, not find its Trainer cached by TFX.
    run_dir = tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=args.output_dir)
    variants: Dict[str, Any] = {}
    for drop in args.drops:
        for name in args.precisions:
            precision, xla, suffix = PRECISIONS[name]
            variants[f"project K={drop}{suffix}"] = lambda d=drop, p=precision, x=xla: project(
                Run(TASK, "adapters", args.seed, ADAPTER_LR, precision=p, xla=x, adapter_drop=d), args.epochs, run_dir)
        if hub:
            variants[f"AdapterHub K={drop}"] = lambda d=drop: adapterhub(
                d, args.epochs, args.seed, run_dir)
    if not args.no_full:
        variants["project full fine-tuning"] = lambda: project(
            Run(TASK, "full", args.seed, FULL_LR), args.epochs, run_dir)
    runs: Dict[str, Dict[str, Any]] = {}
    for name, measure in variants.items():
        print(f"{name} ...", flush=True)
        before = machine_state()
        start = time.time()
        runs[name] = {**measure(), "wall_seconds": time.time() - start, "machine_state_before": before,
                      "machine_state_after": machine_state()}
        print(f"  whole {runs[name]['whole_seconds']:.0f} s, training {runs[name]['train_seconds']:.0f} s, "
              f"dev {main_metric(TASK)} {runs[name]['dev']:.4f}", flush=True)
        # Written after every run: a run stopped part-way keeps the variants it finished.
        write_results("mrpc_training", {"task": TASK, "epochs": args.epochs, "seed": args.seed, "runs": runs,
                                        "ratios": ratios(runs, args.drops), "output_dir": run_dir}, started)
    print()
    print_table(["variant", "trainable params", "whole s", "train s", f"dev {main_metric(TASK)}"],
                [[name, f"{r['trainable_parameters']:,}", f"{r['whole_seconds']:.0f}", f"{r['train_seconds']:.0f}",
                  f"{100 * r['dev']:.1f}"] for name, r in runs.items()])
    print()
    print_table(["ratio (project x faster)", "value"], [[name, f"{value:.2f}"] for name, value in ratios(runs, args.drops).items()])


if __name__ == "__main__":
    main()
