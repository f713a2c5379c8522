"""The headline benchmarks in one command: one dated results file per machine, one table.

    python -m bench [--quick] [--skip NAME ...] [--only NAME ...] [--adapterhub_venv PATH] [--out FILE]

Parts, each run as its own child process (TensorFlow state stays apart; its log in outputs/bench/logs/), in order:
  train_throughput  training ex/s per precision: MiniLM adapters in float32, float32 + XLA, mixed_bfloat16,
                    mixed_bfloat16 + XLA, and full fine-tuning; batch 32 x 128, Keras fit (AdapterHub float32 and
                    bf16 autocast, each also under torch.compile, interleaved when --adapterhub_venv is given); each
                    also in GFLOP/s and as a share of the float32 and bfloat16 matmul rate at the model's shapes
  serving_latency   predict_text latency at batch 1 and ex/s at batch 32: adapters, AdapterDrop K = 3, no adapters,
                    the export options XLA and bfloat16 (AdapterHub beside them when --adapterhub_venv is given)
  bundle_latency    one input answered for every task of a 3- and 5-task bundle: all_tasks vs one call per task
  mrpc_training     a whole MRPC training through the pipeline (10 epochs; AdapterHub beside it when its venv is
                    given); needs the GLUE MRPC files
  bulk_inference    the pipeline's prediction stage (BulkInferrer) against predict_text at batch 32 on the MRPC test
                    set; needs a pushed MRPC model (the main command's) and the GLUE MRPC files
A part whose data, model or venv is absent prints SKIPPED with the reason; a failed part does not stop the others.

Writes bench/results/<date>-<cpu kind>.json (the machine's CPU model and flags in its header, every part's own
results file inside) and prints one table of what the run measured. --quick runs every part with the fewest
steps and repeats, to check that it works: its figures are not measurements, and it writes to
outputs/bench/<date>-<cpu kind>-quick.json instead.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from bench import common


@dataclass(frozen=True)
class Part:
    module: str
    full: Sequence[str]   # the arguments of a measurement
    quick: Sequence[str]  # the fewest steps and repeats: checks that the part works


PARTS: Dict[str, Part] = {
    "train_throughput": Part("bench.train_throughput", ["--steps", "5", "--repeats", "3", "--no-threads"],
                             ["--steps", "1", "--repeats", "1", "--no-threads"]),
    "serving_latency": Part("bench.serving_latency", ["--calls", "100", "--batch-repeats", "3"],
                            ["--calls", "5", "--batch-repeats", "1"]),
    "bundle_latency": Part("bench.bundle_latency", ["--calls", "30"], ["--calls", "3"]),
    "mrpc_training": Part("bench.mrpc_training", ["--epochs", "10"], ["--epochs", "1", "--no-full"]),
    "bulk_inference": Part("bench.bulk_inference", ["--repeats", "3"], ["--repeats", "1"]),
}
QUICK_NOTE = "QUICK RUN: fewest steps and repeats, to check that every part works; its figures are not measurements."


def hub_python(venv: Optional[str]) -> tuple:
    """(the AdapterHub venv's Python or "", why AdapterHub is skipped or "")."""
    if not venv:
        return "", "no --adapterhub_venv given"
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        return "", f"{python} not found"
    return python, ""


def newest_model(serving_base: str) -> Optional[str]:
    versions = sorted(int(v) for v in os.listdir(serving_base) if v.isdigit()) if os.path.isdir(serving_base) else []
    return os.path.join(serving_base, str(versions[-1])) if versions else None


def arguments(name: str, quick: bool, hub: str, scratch: str) -> List[str]:
    args = list(PARTS[name].quick if quick else PARTS[name].full)
    if name == "train_throughput" and hub:
        args += ["--adapterhub", hub]
    if name == "serving_latency" and hub:
        args += ["--adapterhub", hub, "--hub-threads", "0", "1"]
    if name == "mrpc_training":
        args += ["--output_dir", os.path.join("outputs", "bench", "mrpc_training")]  # the child runs in REPO_ROOT
        if not hub:
            args.append("--no-adapterhub")
    if name == "bulk_inference" and not newest_model(os.path.join(common.REPO_ROOT, "outputs", "serving", "mrpc")):
        # No model of the main command: the one this run's mrpc_training pushed, if it was blessed.
        path = os.path.join(scratch, "mrpc_training.json")
        if os.path.isfile(path):
            with open(path) as f:
                run_dir = os.path.join(common.REPO_ROOT, json.load(f).get("output_dir", ""))
            model = newest_model(os.path.join(run_dir, "serving", "mrpc"))
            if model:
                args += ["--model_dir", os.path.relpath(model, common.REPO_ROOT)]
    return args


def run_part(name: str, args: List[str], env: Dict[str, str], log_path: str) -> Dict[str, Any]:
    """Runs one part as a child process: its stdout (progress, tables) streamed, its stderr (TensorFlow's and the
    libraries' logging) to log_path. Returns status, reason, command, seconds and the log's path."""
    cmd = [sys.executable, "-m", PARTS[name].module, *args]
    shown = "python -m " + " ".join(cmd[2:])
    print(f"\n== {name}: {shown}", flush=True)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    skipped = None
    start = time.time()
    with open(log_path, "w") as log, subprocess.Popen(cmd, cwd=common.REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                                      stderr=log, text=True, bufsize=1) as process:
        for line in process.stdout:
            print("   " + line, end="", flush=True)
            if line.startswith("SKIPPED"):
                skipped = line.split(":", 1)[-1].strip()
    result: Dict[str, Any] = {"command": shown, "seconds": round(time.time() - start, 1),
                              "log": os.path.relpath(log_path, common.REPO_ROOT)}
    if process.returncode != 0:
        with open(log_path) as log:
            tail = list(deque(log, maxlen=30))
        print("   ..." + "   ".join(tail), end="")
        return {**result, "status": "failed", "reason": f"exit {process.returncode}; log {result['log']}",
                "log_tail": [line.rstrip() for line in tail]}
    if skipped is not None:
        return {**result, "status": "skipped", "reason": skipped}
    return {**result, "status": "ok"}


def machine_info(env: Dict[str, str]) -> Dict[str, Any]:
    """bench.common.machine_info() from a child process (it imports TensorFlow); without TensorFlow, the CPU alone."""
    out = subprocess.run([sys.executable, "-c", "import json; from bench import common; "
                          "print(json.dumps(common.machine_info()))"], cwd=common.REPO_ROOT, env=env,
                         capture_output=True, text=True)
    if out.returncode == 0:
        return json.loads(out.stdout.strip().splitlines()[-1])
    return {"cpu": common._cpu_model(), "cores": os.cpu_count(), "cpu_flags": common._cpu_flags(),
            "python": sys.version.split()[0], "tensorflow": None}


def f1(value: float) -> str:
    return f"{value:.1f}"


def rows_of(name: str, r: Dict[str, Any]) -> List[List[str]]:
    """The headline figures of one part's results file."""
    if name == "train_throughput":
        labels = {"adapter": "adapters, float32", "adapter_xla": "adapters, float32 + XLA",
                  "adapter_bf16": "adapters, mixed_bfloat16", "adapter_bf16_xla": "adapters, mixed_bfloat16 + XLA",
                  "adapter_bf16_matmul": "adapters, bfloat16_matmul",
                  "adapter_bf16_matmul_xla": "adapters, bfloat16_matmul + XLA", "full": "full fine-tuning, float32",
                  "adapterhub": "AdapterHub adapters, float32",
                  "adapterhub_bf16": "AdapterHub adapters, bf16 autocast",
                  "adapterhub_compile": "AdapterHub adapters, float32, torch.compile",
                  "adapterhub_bf16_compile": "AdapterHub adapters, bf16 autocast, torch.compile"}
        rates, limit, share = r["examples_per_second"], r["matmul_limit_gflops"], r["share_of_matmul_limit"]
        rows = [[f"matmul limit at the model's shapes, GFLOP/s: {dtype}", f1(limit[dtype]["median"])]
                for dtype in limit]
        for key, label in labels.items():
            if key in rates:
                shares = ", ".join(f"{100 * value:.0f}% of {dtype}" for dtype, value in share[key].items())
                rows.append([f"training ex/s, batch 32 x 128: {label} (GFLOP/s; share of the matmul limit)",
                             f"{f1(rates[key]['median'])} ({r['gflops'][key]:.0f}; {shares})"])
        return rows + [[f"target: {target}", "met" if met else "missed"] for target, met in r["targets"].items()
                       if "matmul limit" in target]
    if name == "serving_latency":
        latency, rate = r["batch1_latency"], r["batch32_examples_per_second"]
        labels = {"adapter": "adapters", "adapter_k3": "adapters, AdapterDrop K = 3", "plain": "no adapters",
                  "adapter_xla": "adapters, export option XLA", "adapter_bf16": "adapters, export option bf16",
                  "adapter_bf16_xla": "adapters, export options bf16 + XLA", "adapterhub": "AdapterHub, float32",
                  "adapterhub_bf16": "AdapterHub, bf16 autocast", "adapterhub_threads1": "AdapterHub, float32, 1 thread",
                  "adapterhub_bf16_threads1": "AdapterHub, bf16 autocast, 1 thread"}
        labels = {key: label for key, label in labels.items() if key in latency}
        return ([[f"predict_text batch 1, median / p95 ms: {label}",
                  f"{f1(latency[key]['median_ms'])} / {f1(latency[key]['p95_ms'])}"] for key, label in labels.items()]
                + [[f"predict_text batch 32, ex/s: {label}", f1(rate[key]["median"])] for key, label in labels.items()])
    if name == "bundle_latency":
        return [[f"bundle, {key}: all_tasks / one call per task, median ms",
                 f"{f1(v['all_tasks']['median_ms'])} / {f1(v['per_task']['median_ms'])} ({v['ratio']:.2f}x)"]
                for key, v in r["results"].items()]
    if name == "mrpc_training":
        rows = []
        for variant, run in r["runs"].items():
            last = run["history"][-1]["examples_per_second"] if run.get("history") else float("nan")
            epochs = f"{r['epochs']} epoch{'s' if r['epochs'] != 1 else ''}"
            rows.append([f"MRPC, {epochs}, {variant}: whole s, training s, dev F1, last epoch ex/s",
                         f"{run['whole_seconds']:.0f}, {run['train_seconds']:.0f}, {100 * run['dev']:.2f}, {f1(last)}"])
        return rows
    if name == "bulk_inference":
        rows = [[f"MRPC test-set predictions, ex/s: {key}", f1(v["rows"] / v["median"])]
                for key, v in r["seconds"].items()]
        return rows + [["MRPC test-set predictions, ex/s: bulk_inferrer beyond its fixed cost",
                        f1(r["bulk_inferrer_examples_per_second_beyond_fixed_cost"])]]
    return []


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="fewest steps and repeats, to check that every part works (figures are not measurements)")
    parser.add_argument("--skip", nargs="+", default=[], choices=list(PARTS), metavar="NAME",
                        help=f"parts not to run: {', '.join(PARTS)}")
    parser.add_argument("--only", nargs="+", default=[], choices=list(PARTS), metavar="NAME", help="run only these parts")
    parser.add_argument("--adapterhub_venv", metavar="PATH",
                        help="a venv with PyTorch and AdapterHub's `adapters` (docs/adapterhub.md): AdapterHub is "
                             "measured beside the project in train_throughput, serving_latency and mrpc_training")
    parser.add_argument("--out", metavar="FILE", help="the results file (default bench/results/<date>-<cpu kind>.json; "
                                                      "with --quick outputs/bench/<date>-<cpu kind>-quick.json)")
    args = parser.parse_args(argv)

    date, kind = time.strftime("%Y-%m-%d"), common.cpu_kind()
    out = args.out or (os.path.join(common.REPO_ROOT, "outputs", "bench", f"{date}-{kind}-quick.json") if args.quick
                       else os.path.join(common.RESULTS_DIR, f"{date}-{kind}.json"))
    hub, hub_reason = hub_python(args.adapterhub_venv)
    scratch = common.scratch_dir("bench-headline-")
    env = {**os.environ, "BENCH_RESULTS_DIR": scratch, "PYTHONUNBUFFERED": "1", "TF_USE_LEGACY_KERAS": "1"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if hub:
        env["ADAPTERHUB_PYTHON"] = hub
    if args.quick:
        print(QUICK_NOTE)
    started = common.machine_state()
    machine = machine_info(env)
    print(f"machine: {machine['cpu']} ({kind}), {machine['cores']} cores, flags {' '.join(machine['cpu_flags'])}")
    print(f"AdapterHub: {'measured with ' + hub if hub else 'SKIPPED: ' + hub_reason}")

    parts: Dict[str, Dict[str, Any]] = {}
    for name in PARTS:
        if name in args.skip or (args.only and name not in args.only):
            parts[name] = {"status": "skipped", "reason": "--skip" if name in args.skip else "not in --only"}
            continue
        log_path = os.path.join(common.REPO_ROOT, "outputs", "bench", "logs", f"{date}-{name}.log")
        parts[name] = run_part(name, arguments(name, args.quick, hub, scratch), env, log_path)
        path = os.path.join(scratch, f"{name}.json")
        if parts[name]["status"] == "ok":
            if os.path.isfile(path):
                with open(path) as f:
                    parts[name]["results"] = json.load(f)
            else:
                parts[name].update(status="failed", reason=f"wrote no {name}.json")

    rows: List[List[str]] = []
    for name, part in parts.items():
        if part["status"] == "ok":
            try:
                rows += [[name, *row] for row in rows_of(name, part["results"])]
            except (KeyError, IndexError, TypeError, ValueError) as e:  # a part's results changed shape
                rows.append([name, "results not read", repr(e)])
        else:
            rows.append([name, part["status"].upper(), part["reason"]])
    if not hub:
        rows.append(["adapterhub", "SKIPPED", hub_reason])

    print()
    if args.quick:
        print(QUICK_NOTE)
    print(f"{date}, {machine['cpu']} ({kind}), {machine['cores']} cores, TensorFlow {machine.get('tensorflow')}, "
          f"oneDNN {machine.get('onednn')}")
    table = common.print_table(["part", "figure", "value"], rows)
    common.write_json(out, {
        "benchmark": "headline", "date": date, "cpu_kind": kind, "machine": machine, "quick": args.quick,
        "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
        "note": (QUICK_NOTE if args.quick else "Each part's variants are interleaved in one process; compare "
                 "medians and ratios inside this file, not absolute figures across machines or runs."),
        "adapterhub": hub or f"skipped: {hub_reason}",
        "machine_state_start": started, "machine_state_end": common.machine_state(),
        "parts": parts, "table": table,
    })
    print(f"wrote {os.path.relpath(out, common.REPO_ROOT)}")
    return 1 if any(part["status"] == "failed" for part in parts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
