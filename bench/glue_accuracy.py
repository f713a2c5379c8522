"""GLUE dev accuracy of adapters against full fine-tuning, each row one real run of the local pipeline.

    python -m bench.glue_accuracy                 # every run of the plan not yet in the results, then the report
    python -m bench.glue_accuracy --only mrpc     # the plan's runs of some tasks
    python -m bench.glue_accuracy --report        # table and plot from the results so far, no training

Every run is `python -m pipeline.run` (ExampleGen, Transform, the pipeline's own Trainer, Evaluator, Pusher)
with the flags printed in the results; the metric reported is the Evaluator's on GLUE dev. Runs share one
output directory, so ExampleGen and Transform run once per task and are cached after. Results are appended
to bench/results/glue_accuracy.json after each run: an interrupted sweep resumes where it stopped.

The plan (same epoch budget for every row of one invocation, `--epochs`; the table has a row per budget):
  adapters    Houlsby adapters, bottleneck 64, learning rate 3e-4, layer norms and head trained
  full        full fine-tuning, learning rate 3e-5 (BERT's usual; 3e-4 measured on MRPC too)
  sweep       MRPC adapters with bottleneck 8 and 256, and learning rates 3e-5 and 3e-3 (the paper's grids)
  bf16        MRPC and RTE adapters trained with --precision mixed_bfloat16 (does the faster arithmetic cost accuracy?)
  drops       with `--adapter_drops K ...`: the adapters' main runs at each AdapterDrop K (no adapters in the
              lowest K layers: how many layers can go before accuracy drops beyond seed noise?)
  frozen LN   with `--freeze_layer_norms`: the adapters' main runs with the encoder's layer norms frozen, as
              AdapterHub's train_adapter does (the comparison with AdapterHub)
SST-2 trains on a fixed random subset of its train file (`--sst2_train_examples`, or `all`), evaluated on all
of dev. docs/results.md's GLUE table: `--epochs 10 --methods adapters --main_only --only mrpc rte cola stsb`,
`--epochs 3 --methods full --only mrpc rte cola stsb`, `--epochs 2 --only sst2 --seeds 42 --main_only
--sst2_train_examples all`. Accuracy per AdapterDrop K: `--epochs 3 --methods adapters --main_only
--only mrpc rte stsb --seeds 42 --adapter_drops 1 2 3`; float32 vs bfloat16 at K = 0: `--epochs 10 --methods
adapters --main_only --only rte stsb mrpc --seeds 42 --precision mixed_bfloat16`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from bench.common import GLUE_DIR, REPO_ROOT, RESULTS_DIR, machine_state, print_table, trainer_epochs, write_json

RESULTS = os.path.join(RESULTS_DIR, "glue_accuracy.json")
PLOT = os.path.join(REPO_ROOT, "docs", "accuracy_vs_parameters.png")
TASK_DIRS = {"mrpc": "MRPC", "rte": "RTE", "cola": "CoLA", "stsb": "STS-B", "sst2": "SST-2"}
ADAPTER_LR, FULL_LR, BOTTLENECK = 3e-4, 3e-5, 64
# The README's table: each method at its best budget (epochs, train examples). Full fine-tuning overfits by
# 10 epochs (MRPC: 85.5 at 3, 84.6 at 10); SST-2, 30x larger than MRPC, gets 2 epochs of all of train.
HEADLINE = {"adapters": (10, "all"), "full": (3, "all"), "sst2": (2, "all")}  # method or task -> budget
# AdapterHub's Houlsby adapters (`adapters` 1.3.0, PyTorch) on the same MiniLM-L6 weights, 10 epochs, mean of
# three seeds (GLUE dev, main metric x100): the reference the project was asked to match (docs/results.md,
# "AdapterHub, reference"); their seeds and exact recipe are not on record.
ADAPTERHUB_REFERENCE = {"mrpc": 86.9, "rte": 60.9, "stsb": 86.2, "cola": 25.5, "sst2": 87.8}
# AdapterHub run here with this project's recipe (bench/adapterhub_glue.py train --results ...): the README's
# table puts its 10-epoch runs beside the reference.
ADAPTERHUB_RESULTS = os.path.join(RESULTS_DIR, "adapterhub_glue.json")


@dataclasses.dataclass(frozen=True)
class Run:
    task: str
    method: str  # "adapters" or "full"
    seed: int
    learning_rate: float
    bottleneck_size: int = BOTTLENECK
    precision: str = "float32"
    xla: bool = False  # the train step XLA-compiled (--xla on; off: the runs before XLA existed)
    adapter_drop: int = 0  # AdapterDrop: no adapters in the lowest K layers
    freeze_layer_norms: bool = False

    @property
    def key(self) -> str:
        size = "" if self.method == "full" else f"-b{self.bottleneck_size}"
        precision = ("" if self.precision == "float32" else f"-{self.precision}") + ("-xla" if self.xla else "")
        drop = f"-drop{self.adapter_drop}" if self.adapter_drop else ""
        frozen = "-frozenln" if self.freeze_layer_norms else ""
        return f"{self.task}-{self.method}{size}-lr{self.learning_rate:g}{precision}{drop}{frozen}-s{self.seed}"

    def flags(self, epochs: int) -> List[str]:
        flags = ["--task", self.task, "--epochs", str(epochs), "--seed", str(self.seed),
                 "--learning_rate", f"{self.learning_rate:g}", "--precision", self.precision,
                 "--xla", "on" if self.xla else "off"]
        if self.adapter_drop:
            flags += ["--adapter_drop", str(self.adapter_drop)]
        if self.freeze_layer_norms:
            flags.append("--freeze_layer_norms")
        return flags + (["--full_finetune"] if self.method == "full" else ["--bottleneck_size", str(self.bottleneck_size)])


def plan(seeds: Sequence[int], tasks: Sequence[str], methods: Sequence[str], main_only: bool,
         drops: Sequence[int] = (0,), freeze_layer_norms: bool = False, precision: str = "float32",
         xla: bool = False) -> List[Run]:
    """Every run, most informative first: the main settings seed by seed (a sweep cut short still has whole
    seeds; adapters at each AdapterDrop K of `drops`, layer norms frozen if asked, in `precision`), then the
    first seed's grid of bottleneck sizes and learning rates and bfloat16 (unless main_only); `xla` compiles the
    main runs' train step."""
    lr = {"adapters": ADAPTER_LR, "full": FULL_LR}
    variants = {"adapters": [{"adapter_drop": drop, "freeze_layer_norms": freeze_layer_norms, "precision": precision,
                              "xla": xla}
                             for drop in drops],
                "full": [{}]}
    runs = [Run(task, method, seed, lr[method], **variant) for seed in seeds for task in tasks for method in methods
            for variant in variants[method]]
    if main_only or "adapters" not in methods or "mrpc" not in tasks:
        return runs
    first = seeds[0]
    runs += [Run("mrpc", "adapters", first, ADAPTER_LR, size) for size in (8, 256)]
    runs += [Run("mrpc", "adapters", first, rate) for rate in (3e-5, 3e-3)]
    runs += [Run(task, "adapters", first, ADAPTER_LR, precision="mixed_bfloat16") for task in ("mrpc", "rte")
             if task in tasks]
    if "full" in methods:
        runs.append(Run("mrpc", "full", first, 3e-4))
    return runs


def sst2_data_dir(out_dir: str, examples: Optional[int]) -> str:
    """The GLUE dir itself for all of SST-2's train file; else a GLUE-layout dir (one per size) whose SST-2
    train is a fixed random subset (seed 0) and whose dev is all of dev."""
    if examples is None:
        return GLUE_DIR
    out_dir = os.path.join(out_dir, f"sst2-{examples}")
    task_dir = os.path.join(out_dir, "SST-2")
    train = os.path.join(task_dir, "train.tsv")
    if not os.path.exists(train):
        os.makedirs(task_dir, exist_ok=True)
        with open(os.path.join(GLUE_DIR, "SST-2", "train.tsv"), encoding="utf-8") as f:
            header, *rows = f.readlines()
        chosen = sorted(random.Random(0).sample(range(len(rows)), min(examples, len(rows))))
        with open(train + ".tmp", "w", encoding="utf-8") as f:
            f.writelines([header] + [rows[i] for i in chosen])
        with open(os.path.join(GLUE_DIR, "SST-2", "dev.tsv"), encoding="utf-8") as src, \
                open(os.path.join(task_dir, "dev.tsv"), "w", encoding="utf-8") as dst:
            dst.write(src.read())
        os.replace(train + ".tmp", train)
    return out_dir


TRAINABLE_LINE = re.compile(r"(\d+) of (\d+) parameters trainable")


def run_pipeline(run: Run, epochs: int, output_dir: str, data_dir: str) -> Dict[str, Any]:
    """Runs the pipeline for one row; returns its Evaluator metrics, trained parameters and per-epoch log."""
    from pipeline.configs import PIPELINE_NAME
    from pipeline.pipeline import pipeline_name_for
    from pipeline.runs import pipeline_runs
    from modules.metrics import overall_metrics

    cmd = [sys.executable, "-m", "pipeline.run", *run.flags(epochs), "--no_baseline", "--data_dir", data_dir,
           "--output_dir", output_dir]
    log_path = os.path.join(output_dir, "logs", f"{run.key}-e{epochs}.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.time()
    with open(log_path, "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT).returncode
    seconds = time.time() - start
    with open(log_path) as log:
        text = log.read()
    if code != 0:
        raise RuntimeError(f"{run.key} failed (exit {code}); see {log_path}")
    metadata = os.path.join(output_dir, "metadata.sqlite")
    last = pipeline_runs(metadata, pipeline_name_for(run.task, PIPELINE_NAME))[-1]
    evaluation = last.output("ModelEvaluation")
    trainable, total = map(int, TRAINABLE_LINE.search(text).groups())
    return {
        "key": run.key, **dataclasses.asdict(run), "epochs": epochs,
        "command": "python -m pipeline.run " + " ".join(run.flags(epochs)) + " --no_baseline",
        "metrics": overall_metrics(evaluation.uri), "trainable_parameters": trainable, "total_parameters": total,
        "trainable_percent": 100.0 * trainable / total, "history": trainer_epochs(text),
        "trainer_seconds": last.seconds.get("Trainer"), "pipeline_seconds": seconds,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine_state": machine_state(),
    }


def load_results() -> Dict[str, Any]:
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            return json.load(f)
    return {"benchmark": "glue_accuracy", "runs": []}


def save_results(results: Dict[str, Any]) -> None:
    write_json(RESULTS, results)


def main_metric(task: str) -> str:
    from modules.glue import get_task

    return get_task(task).main_metric


def adapter_setting(size: int, precision: str = "float32", adapter_drop: int = 0,
                    freeze_layer_norms: bool = False, xla: bool = False) -> Any:
    """The adapters' column of a setting: the bottleneck size, with any variant of the main recipe spelled out."""
    label = str(size)
    if precision != "float32":
        label += f", {precision}"
    if xla:
        label += ", XLA"
    if adapter_drop:
        label += f", AdapterDrop {adapter_drop}"
    if freeze_layer_norms:
        label += ", layer norms frozen"
    return size if label == str(size) else label


def groups(rows: List[Dict[str, Any]]) -> Dict[tuple, List[Dict[str, Any]]]:
    """Rows of the same setting (task, method, bottleneck and variant, learning rate, epochs, train examples)
    across seeds."""
    grouped: Dict[tuple, List[Dict[str, Any]]] = {}
    for row in rows:
        size = None if row["method"] == "full" else adapter_setting(
            row["bottleneck_size"], row.get("precision", "float32"), row.get("adapter_drop", 0),
            row.get("freeze_layer_norms", False), row.get("xla", False))
        key = (row["task"], row["method"], size, row["learning_rate"], row["epochs"], row["train_examples"])
        grouped.setdefault(key, []).append(row)
    return grouped


def summary(values: List[float]) -> str:
    """Mean ± standard deviation in GLUE points (x100), with the number of seeds."""
    mean = 100 * statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.1f} (1 seed)"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f} ({len(values)} seeds)"


def report(results: Dict[str, Any]) -> None:
    """Prints every setting measured, then the README table of the main settings, and draws the plot."""
    rows = results["runs"]
    table = []
    for (task, method, size, lr, epochs, train), members in sorted(groups(rows).items(), key=lambda kv: str(kv[0])):
        metric = main_metric(members[0]["task"])
        table.append([task, train, method, size or "-", f"{lr:g}", epochs, metric,
                      summary([m["metrics"][metric] for m in members]), f"{members[0]['trainable_percent']:.2f}"])
    print_table(["task", "train examples", "method", "bottleneck", "lr", "epochs", "metric", "dev (mean ± sd)",
                 "trained %"], table)
    print()
    main = []
    for task in TASK_DIRS:
        settings = groups([r for r in rows if r["task"] == task])
        budgets = {(r["epochs"], r["train_examples"]) for r in rows if r["task"] == task}
        for epochs, train in sorted(budgets, key=lambda budget: (budget[0], str(budget[1]))):
            adapters = settings.get((task, "adapters", BOTTLENECK, ADAPTER_LR, epochs, train), [])
            full = settings.get((task, "full", None, FULL_LR, epochs, train), [])
            if not adapters:
                continue
            metric = main_metric(task)
            a, f = ([r["metrics"][metric] for r in rows_] for rows_ in (adapters, full))
            difference = f"{100 * (statistics.mean(a) - statistics.mean(f)):+.1f}" if f else "-"
            main.append([task, train, metric, epochs, summary(a), summary(f) if f else "-", difference,
                         f"{sum(r['pipeline_seconds'] for r in adapters + full) / 60:.0f}",
                         f"{adapters[0]['trainable_percent']:.2f}"])
    print_table(["task", "train examples", "metric", "epochs", "adapters", "full fine-tuning", "adapters - full",
                 "minutes (all runs)", "adapters' trained %"], main)
    print()
    drop_table(rows)
    headline(rows)
    plot(rows)


def drop_table(rows: List[Dict[str, Any]]) -> None:
    """Adapters' dev score at each AdapterDrop K (main settings), per task and epoch budget, beside K = 0."""
    drops = sorted({r.get("adapter_drop", 0) for r in rows})
    if drops == [0]:
        return
    settings = {adapter_setting(BOTTLENECK, adapter_drop=drop): drop for drop in drops}
    grouped = {(task, epochs, settings[size]): [m["metrics"][main_metric(task)] for m in members]
               for (task, method, size, lr, epochs, train), members in groups(rows).items()
               if method == "adapters" and size in settings and lr == ADAPTER_LR and train == "all"}
    budgets = sorted({(task, epochs) for task, epochs, drop in grouped if drop},
                     key=lambda budget: (list(TASK_DIRS).index(budget[0]), budget[1]))
    print_table(["task", "epochs"] + [f"K = {drop}" for drop in drops],
                [[task, epochs] + [summary(grouped[(task, epochs, drop)]) if (task, epochs, drop) in grouped else "-"
                                   for drop in drops] for task, epochs in budgets])
    print()


def adapterhub_measured() -> Dict[str, List[float]]:
    """Task -> final dev main metric of each AdapterHub run of bench/adapterhub_glue.py at the adapters' budget
    (adapters in every layer)."""
    if not os.path.exists(ADAPTERHUB_RESULTS):
        return {}
    with open(ADAPTERHUB_RESULTS) as f:
        runs = json.load(f)["runs"]
    measured: Dict[str, List[float]] = {}
    for run in runs:
        if run["epochs"] == HEADLINE["adapters"][0] and not run["train_subset"] and not run.get("adapter_drop"):
            measured.setdefault(run["task"], []).append(run["history"][-1][f"dev_{main_metric(run['task'])}"])
    return measured


def headline(rows: List[Dict[str, Any]]) -> None:
    """The README's table: adapters and full fine-tuning each at their best budget, with AdapterHub's reference
    figures and AdapterHub as run here."""
    table, differences, grouped, hub = [], [], groups(rows), adapterhub_measured()

    def values(task: str, method: str, size: Optional[int], lr: float) -> List[float]:
        epochs, train = HEADLINE.get(task, HEADLINE[method])
        return [r["metrics"][main_metric(task)] for r in grouped.get((task, method, size, lr, epochs, train), [])]

    for task in TASK_DIRS:
        metric = main_metric(task)
        a, f = values(task, "adapters", BOTTLENECK, ADAPTER_LR), values(task, "full", None, FULL_LR)
        difference = 100 * (statistics.mean(a) - statistics.mean(f)) if a and f else None
        if difference is not None:
            differences.append(difference)
        table.append([task, metric, summary(a) if a else "-", summary(f) if f else "-",
                      f"{difference:+.1f}" if difference is not None else "-", f"{ADAPTERHUB_REFERENCE[task]:.1f}",
                      summary(hub[task]) if task in hub else "-"])
    print_table(["task", "metric", "adapters (10 epochs; SST-2 2)", "full fine-tuning (3 epochs; SST-2 2)",
                 "adapters - full", "AdapterHub (reference)", "AdapterHub (run here)"], table)
    if differences:
        print(f"adapters - full fine-tuning, mean over the {len(differences)} tasks with both: "
              f"{statistics.mean(differences):+.1f}")


def plot(rows: List[Dict[str, Any]]) -> None:
    """Dev score against trained parameters (% of the model): the bottleneck sizes and full fine-tuning, one
    line per task and epoch budget (solid: the fewest epochs, dashed: more)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    budgets, grouped = sorted({r["epochs"] for r in rows}), groups(rows)
    for color, task in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], TASK_DIRS):
        for epochs in budgets:
            points = []
            for (t, method, size, lr, e, train), members in grouped.items():
                if t != task or e != epochs or train != "all" or isinstance(size, str) \
                        or lr != (FULL_LR if method == "full" else ADAPTER_LR):
                    continue
                values = [100 * m["metrics"][main_metric(task)] for m in members]
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                points.append((members[0]["trainable_percent"], statistics.mean(values), spread, method, size))
            if len(points) < 2:
                continue
            points.sort()
            xs, ys, errs = zip(*[(p[0], p[1], p[2]) for p in points])
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, color=color,
                        linestyle="-" if epochs == budgets[0] else "--",
                        label=f"{task} ({main_metric(task)}), {epochs} epochs")
            for x, y, _, method, size in points:
                ax.annotate("full FT" if method == "full" else f"b={size}", (x, y), textcoords="offset points",
                            xytext=(4, -10), fontsize=7, color=color)
    ax.set_xscale("log")
    ax.set_xlabel("trained parameters (% of the model, log scale)")
    ax.set_ylabel("GLUE dev score (main metric)")
    ax.set_title("MiniLM-L6 adapters vs full fine-tuning (mean ± sd over seeds)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(PLOT), exist_ok=True)
    fig.savefig(PLOT, dpi=120)
    print(f"wrote {os.path.relpath(PLOT, REPO_ROOT)}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.glue_accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--only", nargs="+", choices=sorted(TASK_DIRS), help="run only these tasks' rows")
    parser.add_argument("--max_runs", type=int, help="stop after this many new runs")
    parser.add_argument("--methods", nargs="+", choices=["adapters", "full"], default=["adapters", "full"])
    parser.add_argument("--main_only", action="store_true",
                        help="only the main settings (no bottleneck, learning-rate or bfloat16 grid)")
    parser.add_argument("--adapter_drops", type=int, nargs="+", default=[0], metavar="K",
                        help="the adapters' main runs at each of these AdapterDrop K (default: 0, adapters in every layer)")
    parser.add_argument("--freeze_layer_norms", action="store_true",
                        help="the adapters' main runs with the encoder's layer norms frozen (AdapterHub's choice)")
    parser.add_argument("--precision", choices=["float32", "mixed_bfloat16", "bfloat16_matmul"], default="float32",
                        help="the adapters' main runs in this precision (the float32 vs bfloat16 question; "
                             "not auto, whose arithmetic depends on the CPU the run lands on)")
    parser.add_argument("--xla", action="store_true", help="the adapters' main runs with the train step XLA-compiled")
    parser.add_argument("--sst2_train_examples", type=lambda v: None if v == "all" else int(v), default=20_000,
                        help="a fixed random subset of SST-2's 67,349 training examples, or 'all'")
    parser.add_argument("--output_dir", default=os.path.join(REPO_ROOT, "outputs", "accuracy"))
    parser.add_argument("--report", action="store_true", help="only print the table and draw the plot")
    args = parser.parse_args(argv)
    results = load_results()
    if not args.report:
        for task, directory in TASK_DIRS.items():
            if not os.path.isfile(os.path.join(GLUE_DIR, directory, "train.tsv")):
                sys.exit(f"error: {GLUE_DIR}/{directory}/train.tsv not found (set GLUE_DIR to the GLUE data).")
        sst2_train = args.sst2_train_examples or "all"
        done = {(r["key"], r["epochs"], r["train_examples"]) for r in results["runs"]}
        todo = [r for r in plan(args.seeds, args.only or list(TASK_DIRS), args.methods, args.main_only, args.adapter_drops,
                                args.freeze_layer_norms, args.precision, args.xla)
                if (r.key, args.epochs, sst2_train if r.task == "sst2" else "all") not in done]
        sst2_dir = sst2_data_dir(os.path.join(args.output_dir, "data"), args.sst2_train_examples)
        for i, run in enumerate(todo[:args.max_runs]):
            print(f"[{i + 1}/{len(todo)}] {run.key} ...", flush=True)
            row = run_pipeline(run, args.epochs, args.output_dir, sst2_dir if run.task == "sst2" else GLUE_DIR)
            row["train_examples"] = sst2_train if run.task == "sst2" else "all"
            results["runs"].append(row)
            save_results(results)
            print(f"    {row['metrics']}  ({row['trainer_seconds']:.0f} s in the Trainer)", flush=True)
    if results["runs"]:
        report(results)


if __name__ == "__main__":
    main()
