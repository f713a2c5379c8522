"""The Tuner stage (--tune, issue 30): Houlsby et al.'s per-task choice of learning rate, bottleneck and epochs.

Cheap checks first (flags, the holdout on synthetic transformed examples, the pipeline graph and its cache key).
Then one module-scoped tuned pipeline run on tiny MRPC (tests/tiny_mrpc.py data, tiny BERT), as a user runs it:
  A. `python -m pipeline.run --tune ...` (a 2 x 1 x 2 grid, 2 folds, patience 1), killed with SIGKILL (whole group)
     once its first trial has finished;
  B. the same command again: the Tuner resumes the search from the trials A finished and the pipeline completes;
     the Trainer trains on all of train with the chosen settings, which reach adapter_config.json and the
     summary.
Kubeflow: test_kubeflow_execution checks the Tuner task of the session's shared executed spec (tests/tiny_kubeflow.py),
on the worker that holds the shared runs; this module has pipeline runs of its own and runs beside it.
"""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from typing import Dict, List

import numpy as np
import pytest
import tensorflow as tf

from tiny_bert import write_tiny_bert
from tiny_mrpc import EVAL_ROWS, TASK, TRAIN_ROWS, TRAINING, write_mrpc

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TIMEOUT = 900
# After TRAINING (argparse keeps the last value): 2 learning rates x 1 bottleneck x 2 epoch counts = 4 trials.
# Two folds: every trial trains twice (the single holdout's path runs in test_kubeflow_execution's Tuner task).
TUNE = ["--tune", "--tune_learning_rates", "0.01,0.0001", "--tune_bottleneck_sizes", "16", "--tune_epochs", "2,4",
        "--tune_folds", "2", "--tune_patience", "1"]


# ------------------------------------------------------------------------------------------ flags

@pytest.mark.parametrize("flags, message", [
    (["--tune", "--tune_learning_rates", "3e-4,x"], "--tune_learning_rates '3e-4,x': expected comma-separated float"),
    (["--tune", "--tune_bottleneck_sizes", "8,0"], "--tune_bottleneck_sizes must be a comma-separated list of positive"),
    (["--tune", "--tune_epochs", "3,3"], "--tune_epochs lists a value twice"),
    (["--tune", "--holdout_fraction", "0.7"], "--holdout_fraction must be in (0, 0.5]"),
    (["--tune", "--tune_patience", "-1"], "--tune_patience must be an integer >= 0"),
    (["--tune", "--tune_folds", "0"], "--tune_folds must be an integer >= 1"),
    (["--tune", "--tune_folds", "5", "--holdout_fraction", "0.2"], "give one of the two"),
    (["--tune", "--tune_max_trials", "0"], "--tune_max_trials must be a positive integer"),
    (["--tune", "--hyperband_factor", "1"], "--hyperband_factor must be an integer >= 2"),
    (["--tune_epochs", "3"], "were given without --tune"),
    (["--tune", "--full_finetune"], "--tune searches adapter settings"),
])
def test_tuning_flags_are_checked_before_any_work_naming_the_flag(flags: List[str], message: str, tmp_path,
                                                                  capsys) -> None:
    from pipeline import run

    with pytest.raises(SystemExit) as exited:
        run.main(["--output_dir", str(tmp_path / "out"), *flags])
    assert message in f"{exited.value.code} {capsys.readouterr().err}"  # argparse prints its errors, main exits with them
    assert not os.path.exists(tmp_path / "out")


def test_without_tune_the_pipeline_has_no_tuner_and_the_trainer_is_unchanged(tmp_path) -> None:
    from pipeline import run
    from pipeline.pipeline import create_pipeline

    data_dir = write_mrpc(str(tmp_path / "glue"), 8, 4, shuffle_train_labels=False, seed=0)

    def trainer_of(argv: List[str]):
        args, _ = run.parse_args(["--data_dir", data_dir, *argv])
        config = run.training_config(args, check_backbone=False)
        built = create_pipeline("p", "/root", data_dir, "/serving", config, tuning=run.tuning_config(args, config))
        return {c.id: c for c in built.components}

    plain, tuned = trainer_of([]), trainer_of(["--tune"])
    assert "Tuner" not in plain and "Tuner" in tuned
    assert "hyperparameters" not in plain["Trainer"].inputs
    assert tuned["Trainer"].inputs["hyperparameters"].producer_component_id == "Tuner"
    assert plain["Trainer"].exec_properties == tuned["Trainer"].exec_properties  # only the Tuner's choice differs
    tuner = tuned["Tuner"].exec_properties
    assert json.loads(tuner["train_args"]) == {"splits": ["train"]}
    assert json.loads(tuner["eval_args"]) == {"splits": ["train"]}  # the eval split never reaches the search
    search = json.loads(tuner["custom_config"])["tuning"]
    assert (search["learning_rates"], search["bottleneck_sizes"], search["epochs"]) == (
        [3e-5, 3e-4, 3e-3], [8, 64, 256], [3, 20])  # the paper's grid by default
    # The cache key: the same flags build the same Tuner properties (a rerun reuses a cached Tuner).
    assert trainer_of(["--tune"])["Tuner"].exec_properties == tuner


def test_chosen_settings_override_the_flags_and_hyperband_epochs_are_the_budget() -> None:
    from modules.config import TrainingConfig, tuned_settings

    assert tuned_settings(None) == {}
    grid = {"values": {"learning_rate": 3e-3, "bottleneck_size": 8, "epochs": 20}}
    assert tuned_settings(grid) == {"learning_rate": 3e-3, "bottleneck_size": 8, "epochs": 20}
    hyperband = {"values": {"learning_rate": 3e-5, "bottleneck_size": 256, "tuner/epochs": 7, "tuner/round": 1,
                            "tuner/initial_epoch": 0, "tuner/bracket": 2}}
    assert tuned_settings(hyperband) == {"learning_rate": 3e-5, "bottleneck_size": 256, "epochs": 7}
    from tfx.components.trainer.fn_args_utils import FnArgs

    from modules.trainer import trained_config

    config = trained_config(FnArgs(custom_config=TrainingConfig().to_dict(), hyperparameters=grid))
    assert (config.learning_rate, config.bottleneck_size, config.epochs) == (3e-3, 8, 20)
    assert trained_config(FnArgs(custom_config=TrainingConfig().to_dict())) == TrainingConfig()


# ---------------------------------------------------------------------------------------- the holdout

def _write_transformed(path: str, rows: List[Dict]) -> None:
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for row in rows:
            feature = {key: tf.train.Feature(int64_list=tf.train.Int64List(value=np.atleast_1d(value)))
                       for key, value in row.items()}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


SEQ = 8
FEATURE_SPEC = {name: tf.io.FixedLenFeature([SEQ], tf.int64) for name in ("input_ids", "attention_mask",
                                                                         "token_type_ids")}
FEATURE_SPEC.update(label=tf.io.FixedLenFeature([], tf.int64), length=tf.io.FixedLenFeature([], tf.int64))


def _row(i: int, label: int) -> Dict:
    ids = [101, 1000 + i, 2000 + i % 7, 102, 0, 0, 0, 0]
    return {"input_ids": ids, "attention_mask": [1, 1, 1, 1, 0, 0, 0, 0], "token_type_ids": [0] * SEQ,
            "label": label, "length": 4}


@pytest.fixture
def transformed(tmp_path) -> types.SimpleNamespace:
    """300 train rows (label 1 for a third of them), 40 eval rows other than train's; train written twice, in
    two orders (as two Transform runs might)."""
    rows = [_row(i, int(i % 3 == 0)) for i in range(300)]
    _write_transformed(str(tmp_path / "train.gz"), rows)
    _write_transformed(str(tmp_path / "train_reversed.gz"), rows[::-1])
    _write_transformed(str(tmp_path / "eval.gz"), [_row(1000 + i, i % 2) for i in range(40)])
    return types.SimpleNamespace(train=str(tmp_path / "train.gz"), reversed=str(tmp_path / "train_reversed.gz"),
                                 eval=str(tmp_path / "eval.gz"), rows=rows)


def _keys(files: List[str], rows=None) -> List[int]:
    from modules.trainer import read_transformed
    from modules.tuner import example_keys

    return sorted(int(example_keys(f, 7).numpy()) for f in read_transformed(files, FEATURE_SPEC, rows))


def test_holdout_is_seeded_stratified_disjoint_and_independent_of_row_order(transformed) -> None:
    from modules.glue import get_task
    from modules.tuner import Holdout

    task = get_task("mrpc")
    (holdout,) = Holdout.carve([transformed.train], FEATURE_SPEC, task, 0.2, seed=7)
    assert holdout.counts == {"0": (40, 160), "1": (20, 80)}  # 20% of each class
    train_rows, holdout_rows = holdout.row_filters()
    inside, outside = _keys([transformed.train], holdout_rows), _keys([transformed.train], train_rows)
    assert len(inside) == 60 and len(outside) == 240 and not set(inside) & set(outside)
    assert inside == list(holdout.keys)
    # The same seed: the same rows, whatever order the files hold them in; another seed: other rows.
    (again,) = Holdout.carve([transformed.reversed], FEATURE_SPEC, task, 0.2, seed=7)
    assert again.keys == holdout.keys
    # The search's directory follows the data, not the files: a re-ingested copy resumes the same search.
    assert again.train_digest == holdout.train_digest
    relabelled = os.path.join(os.path.dirname(transformed.train), "relabelled.gz")
    _write_transformed(relabelled, [dict(row, label=1 - row["label"]) if i == 5 else row
                                    for i, row in enumerate(transformed.rows)])
    assert Holdout.carve([relabelled], FEATURE_SPEC, task, 0.2, seed=7)[0].train_digest != holdout.train_digest
    (other,) = Holdout.carve([transformed.train], FEATURE_SPEC, task, 0.2, seed=8)
    assert other.keys != holdout.keys and other.counts == holdout.counts
    # Nothing of the eval split is in the holdout (or anywhere in what the trials see).
    assert not set(_keys([transformed.eval])) & set(inside + outside)


def test_folds_partition_train_per_class_and_the_first_fold_is_the_single_holdout(transformed) -> None:
    from modules.config import TuningConfig
    from modules.glue import get_task
    from modules.tuner import Holdout, carve_holdouts

    task = get_task("mrpc")
    folds = carve_holdouts([transformed.train], FEATURE_SPEC, task, TuningConfig(folds=3), seed=7)
    assert [h.fold for h in folds] == [0, 1, 2] and all(h.fraction == 1 / 3 for h in folds)
    assert [h.counts for h in folds] == [{"0": (67, 133), "1": (33, 67)}, {"0": (66, 134), "1": (34, 66)},
                                         {"0": (67, 133), "1": (33, 67)}]
    keys = [set(h.keys) for h in folds]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert set.union(*keys) == set(_keys([transformed.train]))  # every example scores once
    for holdout in folds:  # each fold's trainings see the other two folds, never their own
        train_rows, holdout_rows = holdout.row_filters()
        assert _keys([transformed.train], holdout_rows) == list(holdout.keys)
        assert set(_keys([transformed.train], train_rows)) == set.union(*keys) - set(holdout.keys)
    # Fold 0 is the holdout of the same fraction: the hash order is one, folds cut it in 1/K pieces.
    assert folds[0].keys == Holdout.carve([transformed.train], FEATURE_SPEC, task, 1 / 3, seed=7)[0].keys


def test_a_small_holdout_is_called_out_naming_the_flag() -> None:
    """RTE's 249-example holdout tells apart about 6 points of accuracy; a 200-row dataset's 20 about 22, which the
    Tuner logs as a warning naming --holdout_fraction."""
    from modules.tuner import holdout_resolution

    assert holdout_resolution(249) == ("holdout of 249 examples: one standard error of an accuracy near 0.5 on it is "
                                       "3.2 points, so trials closer than about 6 points are not told apart")
    small = holdout_resolution(20)
    assert "11.2 points" in small and "about 22 points" in small
    assert "--holdout_fraction" in small and "--tune_folds" in small


def test_early_stopping_stops_a_trial_whose_holdout_metric_stopped_improving() -> None:
    from modules.glue import get_task
    from modules.trainer import ProgressLogger

    class Model:
        stop_training = False

    progress = ProgressLogger(get_task("mrpc"), None, 10, epochs=10, log_dir="/tmp/unused-" + str(os.getpid()),
                              batch_size=2, steps_per_epoch=5, eval_name="holdout", patience=2)
    progress.model = Model()
    scores = iter([0.5, 0.7, 0.6, 0.7, 0.65])
    import modules.trainer as trainer

    original = trainer.evaluate
    trainer.evaluate = lambda *args: {"f1": next(scores), "accuracy": 0.5}
    try:
        for epoch in range(5):
            progress.on_epoch_begin(epoch)
            progress.on_epoch_end(epoch, {"loss": 1.0})
            if progress.model.stop_training:
                break
    finally:
        trainer.evaluate = original
    assert epoch == 3 and progress.best_epoch == 2  # 0.7 at epoch 2 not beaten at epochs 3 and 4 (equal is not better)
    assert [r["holdout_f1"] for r in progress.history] == [0.5, 0.7, 0.6, 0.7]


# ------------------------------------------------------------------- the tuned run: killed, then resumed

def _wait_for(log_path: str, text: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            content = f.read()
        if text in content:
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended (exit code {process.returncode}) before {text!r}:\n{content[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not in the log after {timeout} s:\n{content[-3000:]}")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    """tests/tiny_mrpc.py's backbone and data, written here: this module needs none of the shared run's outputs."""
    root = tmp_path_factory.mktemp("tuner_inputs")
    return types.SimpleNamespace(
        model_dir=write_tiny_bert(str(root / "tiny_bert"), hidden_size=32, num_layers=2, initializer_range=0.2),
        data_dir=write_mrpc(str(root / "glue"), TRAIN_ROWS, EVAL_ROWS, shuffle_train_labels=False, seed=0))


TRIAL_STARTED, TRIAL_DONE = re.compile(r"trial (\d+): learning rate"), re.compile(r"trial (\d+) done: ")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory, inputs: types.SimpleNamespace) -> types.SimpleNamespace:
    from pipeline.configs import PIPELINE_NAME
    from pipeline.pipeline import pipeline_name_for
    from pipeline.runs import pipeline_runs

    root = tmp_path_factory.mktemp("tuned")
    out = root / "out"
    command = [sys.executable, "-m", "pipeline.run", *TRAINING, *TUNE, "--model", inputs.model_dir,
               "--data_dir", inputs.data_dir, "--output_dir", str(out), "--verbose"]
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    timings = {}
    start = time.time()
    with open(root / "A.log", "w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        # Trial 1 starts once trial 0's end is saved in the oracle: kill it in the middle of trial 1.
        _wait_for(str(root / "A.log"), "trial 1: learning rate", process, RUN_TIMEOUT)
        assert process.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(60)
    timings["A (killed)"] = time.time() - start
    start = time.time()
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    timings["B (resumed)"] = time.time() - start
    assert result.returncode == 0, result.stderr[-5000:]
    print("\ntuned run wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    records = pipeline_runs(str(out / "metadata.sqlite"), pipeline_name_for(TASK, PIPELINE_NAME))
    return types.SimpleNamespace(root=root, out=out, a_log=open(root / "A.log").read(), b_log=result.stderr,
                                 b_stdout=result.stdout, a=records[0], b=records[1], timings=timings)


def read_json(directory: str, name: str):
    with open(os.path.join(directory, name)) as f:
        return json.load(f)


def test_killed_search_resumes_from_the_trials_it_finished(tuned: types.SimpleNamespace) -> None:
    assert tuned.a.states["Tuner"] == "RUNNING" and "Trainer" not in tuned.a.states
    finished_in_a = set(TRIAL_DONE.findall(tuned.a_log))
    started_in_b = set(TRIAL_STARTED.findall(tuned.b_log))
    assert finished_in_a == {"0"} and "1" in TRIAL_STARTED.findall(tuned.a_log)
    assert started_in_b == {"1", "2", "3"}  # the killed trial 1 again, then the rest; not trial 0
    assert "Reloading Tuner from" in tuned.b_stdout
    assert tuned.b.states["Transform"] == "CACHED" and tuned.b.states["Tuner"] == "COMPLETE"


def _tuner_outputs(tuned: types.SimpleNamespace):
    results = tuned.b.output("TunerResults")
    return results, tuned.b.output("HyperParameters").uri


def test_every_trial_is_recorded_with_settings_holdout_metric_per_epoch_and_time(tuned) -> None:
    results, _ = _tuner_outputs(tuned)
    trials = read_json(results.uri, "trials.json")
    assert sorted(r["trial_id"] for r in trials) == ["0", "1", "2", "3"]  # the whole 2 x 1 x 2 grid
    settings = {(r["settings"]["learning_rate"], r["settings"]["epochs"]) for r in trials}
    assert settings == {(0.01, 2), (0.01, 4), (0.0001, 2), (0.0001, 4)}
    for record in trials:
        assert record["seconds"] > 0 and record["settings"]["bottleneck_size"] == 16
        assert [fold["fold"] for fold in record["folds"]] == [0, 1]  # trained once per fold
        for fold in record["folds"]:
            assert [e["epoch"] for e in fold["history"]] == list(range(1, fold["epochs_run"] + 1))
            assert fold["holdout_f1"] == fold["history"][-1]["holdout_f1"]
            assert fold["stopped_early"] == (fold["epochs_run"] < record["settings"]["epochs"])
            events = os.listdir(os.path.join(results.uri, "tensorboard", f"trial_{record['trial_id']}",
                                             f"fold_{fold['fold']}", "glue"))
            assert any(name.startswith("events.out.tfevents") for name in events)
        assert record["holdout_f1"] == pytest.approx(np.mean([fold["holdout_f1"] for fold in record["folds"]]))
        assert record["stopped_early"] == any(fold["stopped_early"] for fold in record["folds"])
    assert [r["trial_id"] for r in read_json(results.uri, "tuner_results.json")][0] == \
        max(trials, key=lambda r: r["holdout_f1"])["trial_id"]


def test_holdout_is_carved_from_train_disjoint_from_eval_and_recorded(tuned) -> None:
    results, _ = _tuner_outputs(tuned)
    holdout = read_json(results.uri, "holdout.json")
    assert holdout["seed"] == 42 and holdout["fraction"] == 0.5 and holdout["holdout_examples"] == 64
    for fold in holdout["folds"]:  # two folds: each holds half of each class, the other half trains
        assert fold["per_stratum"] == {"0": {"holdout": 16, "train": 16}, "1": {"holdout": 16, "train": 16}}
    # Recarved from the Transform's train split with the same seed: the same rows; none of them in eval.
    import tensorflow_transform as tft

    from modules.glue import get_task
    from modules.trainer import read_transformed
    from modules.tuner import Holdout, example_keys

    transform = os.path.join(tuned.out, "pipelines", "adapter-bert-glue-mrpc", "Transform")
    (transform_graph,) = glob.glob(os.path.join(transform, "transform_graph", "*"))
    (transformed,) = glob.glob(os.path.join(transform, "transformed_examples", "*"))
    spec = tft.TFTransformOutput(transform_graph).transformed_feature_spec()
    eval_keys = {int(k) for k in example_keys(next(iter(
        read_transformed([os.path.join(transformed, "Split-eval", "*")], spec).batch(1000))), 42).numpy()}
    recarved = Holdout.carve([os.path.join(transformed, "Split-train", "*")], spec, get_task("mrpc"), 0.5, seed=42,
                             folds=2)
    for fold, again in zip(holdout["folds"], recarved, strict=True):
        assert again.digest() == fold["digest"]
        assert not eval_keys & set(again.keys)


def test_chosen_settings_reach_the_trainer_adapter_config_and_summary(tuned) -> None:
    results, best_uri = _tuner_outputs(tuned)
    best = read_json(best_uri, "best_hyperparameters.txt")
    chosen = {k: best["values"][k] for k in ("learning_rate", "bottleneck_size", "epochs")}
    trials = read_json(results.uri, "trials.json")
    winner = max(trials, key=lambda r: r["holdout_f1"])
    assert chosen == winner["settings"] and best["search"]["trials"] == 4
    (config_path,) = glob.glob(os.path.join(tuned.b.output("Model").uri, "**", "adapter_config.json"), recursive=True)
    config = read_json(os.path.dirname(config_path), "adapter_config.json")
    assert config["adapter"]["bottleneck_size"] == chosen["bottleneck_size"]
    assert {k: config["training"][k] for k in ("learning_rate", "epochs")} == {
        "learning_rate": chosen["learning_rate"], "epochs": chosen["epochs"]}
    assert config["tuning"]["chosen"] == chosen and config["tuning"]["metric"] == "holdout_f1"
    # The Trainer trained on all of train (64 examples), not on train minus the holdout.
    assert "training mrpc on 64 examples" in tuned.b_log
    line = results.custom_properties["summary"].string_value
    assert line.startswith("chosen: learning rate ") and "holdout f1" in line and "4 trials" in line
    assert " (mean of 2 folds) on 64 examples; " in line  # how it was scored, next to its score
    assert re.search(r"WARNING.*holdout of 64 examples: one standard error", tuned.b_log)
    assert f"tuning:    {line}" in tuned.b_stdout


# ------------------------------------------------------------------------- the strategies, without training

@pytest.mark.parametrize("strategy", ["grid", "random", "hyperband"])
def test_each_strategy_searches_the_grid_and_resumes_its_running_trial_after_a_reload(strategy: str, tmp_path) -> None:
    """The oracle alone (trials reported by hand): settings come from the grid (Hyperband: epochs up to the
    largest), and an oracle reloaded from its directory reruns the trial that was running, then goes on."""
    from keras_tuner.engine.trial import TrialStatus

    from modules.config import TuningConfig, tuned_settings
    from modules.glue import get_task
    from modules.tuner import make_oracle

    tuning = TuningConfig(learning_rates=(0.1, 0.01, 0.001), bottleneck_sizes=(8,), epochs=(2, 5), strategy=strategy)

    def oracle():
        made = make_oracle(tuning, get_task("mrpc"), seed=1)
        made._set_project_dir(str(tmp_path), "search")  # what BaseTuner does with its directory
        return made

    def finish(search, trial, score: float) -> None:
        search.update_trial(trial.trial_id, {"holdout_f1": score})
        trial.status = TrialStatus.COMPLETED
        search.end_trial(trial)
        search.save()

    first = oracle()
    done = first.create_trial("tuner0")
    finish(first, done, 0.5)
    running = first.create_trial("tuner0")  # killed while this trial runs
    reloaded = oracle()
    reloaded.reload()
    again = reloaded.create_trial("tuner0")
    assert again.trial_id == running.trial_id and again.hyperparameters.values == running.hyperparameters.values
    settings, trial, score = [], again, 0.6
    while trial.status == TrialStatus.RUNNING:
        settings.append(tuned_settings({"values": trial.hyperparameters.values}))
        finish(reloaded, trial, score)
        trial, score = reloaded.create_trial("tuner0"), score + 0.01
    every = [tuned_settings({"values": done.hyperparameters.values}), *settings]
    assert all(s["learning_rate"] in (0.1, 0.01, 0.001) and s["bottleneck_size"] == 8 for s in every)
    if strategy == "hyperband":  # every setting for 2 epochs, the best 2 from scratch for 5; then no new setting
        assert sorted(s["epochs"] for s in every) == [2, 2, 2, 5, 5]
    else:
        assert all(s["epochs"] in (2, 5) for s in every)
        assert len({tuple(sorted(s.items())) for s in every}) == len(every)  # no setting twice
    if strategy == "grid":
        assert [(s["learning_rate"], s["epochs"]) for s in every] == [
            (0.1, 2), (0.1, 5), (0.01, 2), (0.01, 5), (0.001, 2), (0.001, 5)]


def test_the_tuner_runs_on_the_trainers_machine_in_the_compiled_spec(tmp_path) -> None:
    """Its trials are training runs: --trainer_* size and image the Tuner's container too."""
    from kubeflow import runner

    path = str(tmp_path / "spec.json")
    runner.main(["--image", "base:1", "--pipeline_root", "gs://b/root", "--data_dir", "gs://b/glue",
                 "--serving_dir", "gs://b/serving", "--output", path, "--tune", "--trainer_cpu", "8",
                 "--trainer_memory", "32G", "--trainer_image", "gpu:1"])
    with open(path) as f:
        spec = json.load(f)["pipelineSpec"]
    for node in ("Tuner", "Trainer"):
        label = spec["components"][spec["root"]["dag"]["tasks"][node]["componentRef"]["name"]]["executorLabel"]
        container = spec["deploymentSpec"]["executors"][label]["container"]
        assert container["image"] == "gpu:1"
        assert (container["resources"]["cpuLimit"], container["resources"]["memoryLimit"]) == (8, 32)
