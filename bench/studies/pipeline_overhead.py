"""Pipeline overhead: wall time of the whole local pipeline against its Trainer alone, on one MRPC run.

    python -m bench.studies.pipeline_overhead [--epochs 1] [--task mrpc]

Runs `python -m pipeline.run --no_cache --no_baseline` (every component executes: ExampleGen, StatisticsGen,
SchemaGen, ExampleValidator, DataGate, Transform, Trainer, Evaluator, Pusher) into a fresh temporary output
directory, then reads each component's wall time from the run's ML Metadata. Reports the process wall time
(Python and TFX start-up included), the sum of the components, the Trainer, and the Trainer's model fitting
as its own log reports it (the epochs alone, without reading data, building the model and exporting).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from bench import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--task", default="mrpc")
    args = parser.parse_args()
    from modules.glue import get_task

    common.glue_file_or_exit(get_task(args.task).directory)
    started = common.machine_state()
    from pipeline.configs import PIPELINE_NAME
    from pipeline.pipeline import pipeline_name_for
    from pipeline.runs import pipeline_runs

    with tempfile.TemporaryDirectory(prefix="pipeline-overhead-") as output_dir:
        cmd = [sys.executable, "-m", "pipeline.run", "--task", args.task, "--epochs", str(args.epochs),
               "--no_cache", "--no_baseline", "--output_dir", output_dir, "--data_dir", common.GLUE_DIR]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.REPO_ROOT)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"error: the pipeline failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        run = pipeline_runs(os.path.join(output_dir, "metadata.sqlite"), pipeline_name_for(args.task, PIPELINE_NAME))[-1]
    fitting = sum(epoch["seconds"] for epoch in common.trainer_epochs(proc.stderr + proc.stdout))
    components = sum(run.seconds.values())
    rows = [[node, seconds, 100 * seconds / wall] for node, seconds in run.seconds.items()]
    rows += [["(sum of components)", components, 100 * components / wall],
             ["(Trainer's epochs, from its log)", float(fitting), 100 * fitting / wall],
             ["(whole process)", wall, 100.0]]
    table = common.print_table(["component", "wall s", "% of process"], rows)
    trainer = run.seconds["Trainer"]
    print(f"\npipeline / Trainer component = {wall / trainer:.2f}x; pipeline / Trainer's epochs = "
          f"{wall / max(fitting, 1):.2f}x; outside the Trainer: {wall - trainer:.0f} s")
    common.write_results("pipeline_overhead", {
        "settings": {"task": args.task, "epochs": args.epochs, "command": " ".join(cmd[1:])},
        "process_seconds": wall, "component_seconds": run.seconds, "trainer_epochs_seconds": fitting,
        "pipeline_over_trainer": wall / trainer, "table": table,
    }, started)


if __name__ == "__main__":
    main()
