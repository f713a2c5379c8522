"""The Kubeflow spec of tests/tiny_mrpc.py's run, compiled with the Tuner (--tune) and executed once per session.

    def test_x(tiny_kubeflow_run):   # tests/conftest.py: session-scoped, made by the first test that asks for it
        tiny_kubeflow_run.run.task("Tuner"), tiny_kubeflow_run.spec, tiny_kubeflow_run.serving_dir, ...

`python -m kubeflow.runner` compiles the shared local run's flags (same backbone, data and TRAINING) plus a search
for file:// roots on this machine, and kubeflow.launcher executes every task of it through the container's entry
point, each in a process of its own (forked from one warm interpreter: kubeflow/forkserver.py). test_kubeflow_execution
reads it: every task ran as a pod runs it, the pushed model and test predictions are the local run's, and the Tuner
task searched and the Trainer used its choice. One execution serves both
because the search is built to choose TRAINING's own setting while the Trainer's flag says otherwise:
  - a one-setting grid, TRAINING's learning rate, bottleneck and 10 epochs (a search of two or more settings
    would choose by the holdout F1 of 16 rows, which is noise for this tiny model: the Trainer would train
    another model than the local run's);
  - the Trainer's own flag is --epochs 3, so a Trainer that trained 10 epochs used the Tuner's choice, and with
    that choice it trains exactly as the local run does (all of train, same settings, same seed).
Tests read it and never change it (test_kubeflow_execution's degraded execution serves from a copy).
"""
import os
import types

from kubeflow import launcher, runner
from tiny_mrpc import TRAINING

IMAGE = "adapter-bert-tfx:test"  # never pulled: the launcher double runs the commands in this virtualenv
TRAINER_EPOCHS = 3  # the Trainer's flag, which the Tuner's choice (TRAINING's 10) overrides
TUNE = ["--epochs", str(TRAINER_EPOCHS), "--tune", "--tune_learning_rates", "0.01", "--tune_bottleneck_sizes", "16",
        "--tune_epochs", "10", "--holdout_fraction", "0.25", "--tune_patience", "1"]


def compile_spec(path: str, root: str, data_dir: str, serving_dir: str, model_dir: str, *extra: str) -> str:
    """`python -m kubeflow.runner` for file:// roots with TRAINING's flags, then `extra` (argparse keeps the last)."""
    runner.main(["--image", IMAGE, "--pipeline_root", f"file://{root}", "--data_dir", f"file://{data_dir}",
                 "--serving_dir", f"file://{serving_dir}", "--model", model_dir, "--output", path, *TRAINING, *extra])
    return path


def served_versions(serving_dir: str) -> list:
    task_dir = os.path.join(serving_dir, "mrpc")
    return sorted(os.listdir(task_dir)) if os.path.isdir(task_dir) else []


def executed_tuned_spec(root: str, local: types.SimpleNamespace) -> types.SimpleNamespace:
    """Compiles the tuned spec under `root` for the local run's backbone and data and executes it (run id "first")."""
    serving_dir = os.path.join(root, "serving")
    spec_path = compile_spec(os.path.join(root, "spec.json"), os.path.join(root, "kfp"), local.data_dir, serving_dir,
                             local.model_dir, *TUNE)
    pipeline_run = launcher.run(spec_path, run_id="first", warm=True)
    print("\n" + launcher.summary(pipeline_run))
    return types.SimpleNamespace(spec_path=spec_path, spec=launcher.load_spec(spec_path)[0], run=pipeline_run,
                                 root=root, serving_dir=serving_dir, versions=served_versions(serving_dir))
