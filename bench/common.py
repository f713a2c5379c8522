"""Shared helpers of the benchmarks: machine state, timing, medians, JSON results.

The machine these run on is small (2 cores) and often shared, so every benchmark compares its variants
inside one process, interleaves repeats (A, B, A, B, ...) and reports medians and ratios. The machine
state (load average, busiest other processes) is recorded at the start and the end of each run.
"""
from __future__ import annotations

import atexit
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `python -m bench` points its parts at a scratch directory (BENCH_RESULTS_DIR), so a headline run never
# overwrites the committed results files that back the figures in the docs.
RESULTS_DIR = os.environ.get("BENCH_RESULTS_DIR") or os.path.join(REPO_ROOT, "bench", "results")
GLUE_DIR = os.environ.get("GLUE_DIR", os.path.join(REPO_ROOT, "..", "shared", "glue"))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cpu_flags() -> List[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma")))
    except OSError:
        pass
    return []


def cpu_kind() -> str:
    """A short name for the kind of CPU, for results file names: the model name's words and the widest
    matrix/vector extension TensorFlow can use, e.g. "intel-xeon-amx", "amd-epyc-avx512bf16", "amd-epyc-avx2"
    (two machines with the same model name but other flags ran 2x apart)."""
    model = re.sub(r"\((R|TM|tm|r)\)|\b(processor|cpu|with|radeon.*|\d+-core)\b|@.*", " ", _cpu_model(), flags=re.I)
    words = re.findall(r"[a-z0-9]+", model.lower()) or ["unknown-cpu"]
    flags = set(_cpu_flags())
    extension = next((name for flag, name in (("amx_bf16", "amx"), ("avx512_bf16", "avx512bf16"),
                                               ("avx512f", "avx512"), ("avx2", "avx2")) if flag in flags), "")
    return "-".join(words[:4] + ([extension] if extension else []))


def glue_file_or_exit(task_directory: str, file_name: str = "train.tsv") -> str:
    """The real GLUE file a benchmark needs, or exit 0 with SKIPPED and why (the data is not committed)."""
    path = os.path.join(GLUE_DIR, task_directory, file_name)
    if not os.path.isfile(path):
        print(f"SKIPPED: {path} not found (set GLUE_DIR to the directory holding {task_directory}/).")
        sys.exit(0)
    return path


def scratch_dir(prefix: str) -> str:
    """A new temporary directory, removed when the process exits: the SavedModels, records and traces a benchmark
    writes take 0.3-0.7 GB a run, and left behind they fill the disk."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path


def machine_state() -> Dict[str, Any]:
    """Load average and the busiest processes other than this one (the machine is shared)."""
    state: Dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg": list(os.getloadavg())}
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True,
                             timeout=10).stdout.splitlines()[1:]
        others = []
        for line in out:
            pid, pcpu, etime, args = line.split(None, 3)
            if int(pid) == os.getpid() or float(pcpu) < 5.0:
                continue
            others.append({"pid": int(pid), "cpu_percent": float(pcpu), "etime": etime, "command": args[:120]})
        state["busy_processes"] = others[:6]
    except Exception as e:  # ps missing or odd output: the state is informative only
        state["busy_processes_error"] = repr(e)
    return state


def machine_info() -> Dict[str, Any]:
    import tensorflow as tf
    from tensorflow.python.util import _pywrap_util_port

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cpu_flags": _cpu_flags(),
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "TF_USE_LEGACY_KERAS": os.environ.get("TF_USE_LEGACY_KERAS"),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "onednn": _pywrap_util_port.IsMklEnabled(),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def command() -> str:
    return "python -m " + (sys.modules["__main__"].__spec__.name if getattr(sys.modules["__main__"], "__spec__", None)
                           else sys.argv[0]) + (" " + " ".join(sys.argv[1:]) if len(sys.argv) > 1 else "")


# The Trainer's per-epoch log line (modules/trainer.py ProgressLogger.on_epoch_end).
EPOCH_LINE = re.compile(r"epoch (\d+)/\d+: loss ([\d.]+), (.*?), ([\d.]+) examples/s, (\d+) s, ETA")


def trainer_epochs(log: str) -> List[Dict[str, Any]]:
    """The per-epoch records a pipeline run's log holds: loss, eval metrics (as logged), examples/s, seconds."""
    return [{"epoch": int(e), "loss": float(loss), "eval": metrics, "examples_per_second": float(rate),
             "seconds": int(seconds)} for e, loss, metrics, rate, seconds in EPOCH_LINE.findall(log)]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleave(variants: Dict[str, Callable[[], float]], repeats: int, log: Callable[[str], None] = print) -> Dict[str, List[float]]:
    """Runs each variant's measurement `repeats` times in turn (A, B, A, B, ...); returns every value."""
    values: Dict[str, List[float]] = {name: [] for name in variants}
    for r in range(repeats):
        for name, measure in variants.items():
            value = measure()
            values[name].append(value)
            log(f"  repeat {r + 1}/{repeats} {name}: {value:.2f}")
    return values


def alternating_latency_ms(calls: Dict[str, Callable[[Any], Any]], inputs: Sequence[Any]) -> Dict[str, List[float]]:
    """Milliseconds of every call on every input, the calls alternating input by input (A, B, A, B, ...)."""
    latency: Dict[str, List[float]] = {name: [] for name in calls}
    for value in inputs:
        for name, call in calls.items():
            start = time.perf_counter()
            call(value)
            latency[name].append(1000 * (time.perf_counter() - start))
    return latency


def latency_stats(values_ms: Sequence[float]) -> Dict[str, float]:
    import numpy as np

    return {"median_ms": float(np.median(values_ms)), "p95_ms": float(np.percentile(values_ms, 95)),
            "calls": len(values_ms)}


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    text = "\n".join(lines)
    print(text)
    return text


def write_json(path: str, data: Dict[str, Any]) -> None:
    """Writes a results file whole or not at all (an interrupted run never leaves half a JSON behind)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=2, default=float)
        f.write("\n")
    os.replace(path + ".tmp", path)


def write_results(name: str, results: Dict[str, Any], started: Dict[str, Any]) -> str:
    payload = {
        "benchmark": name,
        "command": command(),
        "machine": machine_info(),
        "machine_state_start": started,
        "machine_state_end": machine_state(),
        "note": "Shared 2-core machine: variants are interleaved in one process; compare medians and ratios, "
                "not absolute figures across runs.",
        **results,
    }
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    write_json(path, payload)
    print(f"wrote {os.path.relpath(path, REPO_ROOT)}")
    return path
