"""Reliability: every failure the pipeline promises to handle, provoked for real.

1. Data drift: crafted tf.Examples whose statistics break the GLUE schema (a label outside the int domain,
   a feature missing) go through the real StatisticsGen and ExampleValidator executors against
   components.glue_schema_gen.glue_schema; the DataGate executor then fails naming feature and anomaly,
   and in create_pipeline nothing downstream (Transform, Trainer...) can run before DataGate.
2. Bad configuration: `python -m pipeline.run` with each bad flag exits with "error: ..." before any work:
   no output directory, no pipeline root, no ML Metadata database.
3-6 share one module-scoped sequence of real pipeline runs (tiny BERT, tiny synthetic MRPC-format data):
     A. learnable data: the model learns (accuracy well above chance), is blessed and pushed. This is the
        session's shared run (tests/tiny_mrpc.py); C, D and E serve from a copy of its serving directory;
     C. training labels shuffled, on an output directory and metadata database of its own: killed with
        SIGKILL (whole process group) while the Trainer runs;
     D. the same command as C again: upstream outputs come from the cache; the Trainer's model is worse
        than A's, so it is not blessed and not pushed.
   3. interrupted run: C leaves its Trainer execution RUNNING in ML Metadata; D still completes, reusing
      (CACHED) ExampleGen, StatisticsGen and Transform; A's pushed version is byte for byte unchanged.
   5. regression: D is not blessed, not pushed; the serving directory still holds only A's version.
     E. learnable data, learning rate 1e-9 for one epoch, another output directory (pipeline root, ML Metadata
        database) sharing only the serving directory, run at the same time as C and D: its baseline is A's
        served version, and it is not blessed because it does not beat the constant predictor; the summary says
        so with the numbers.
   6. serving input: A's pushed SavedModel's "predict_text" on empty, blank, emoji, Chinese, Arabic,
      Hindi, a 100,000-character text, a pair with one empty side, and a batch of 1,024 mixed inputs.
4. Atomic push: components.pusher on a fake model: a complete version appears under a name TF Serving
   loads, two pushes in one second get two versions, a copy interrupted after its first file leaves no
   version directory (and no temporary one) and the previous version untouched.
"""
import errno
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from typing import Dict, List, Optional

import numpy as np
import pytest
import tensorflow as tf

from conftest import ancestors
from pipeline.runs import PipelineRun, pipeline_runs
from tiny_bert import write_tiny_bert
from tiny_mrpc import (ANIMALS, EVAL_ROWS, FILLER, MAX_SEQ_LENGTH, TASK, TRAIN_ROWS, TRAINING, VEHICLES,
                       synthetic_sentence, write_mrpc)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_POSITIONS = 64  # of the tiny backbone: --max_seq_length 65 must be refused
RUN_TIMEOUT = 900


# ----------------------------------------------------------------------------------------------- helpers

def snapshot(directory: str) -> Dict[str, str]:
    """Relative path -> SHA-256 of every file (and '<dir>/' for every directory) under directory."""
    result = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            result[os.path.relpath(os.path.join(root, name), directory) + "/"] = ""
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                result[os.path.relpath(os.path.join(root, name), directory)] = hashlib.sha256(f.read()).hexdigest()
    return result


def cli(*args: str) -> List[str]:
    return [sys.executable, "-m", "pipeline.run", *args]


def cli_env() -> Dict[str, str]:
    return {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def mrpc_runs(metadata_path: str) -> List[PipelineRun]:
    """Every run of the MRPC pipeline in the database, oldest first."""
    from pipeline.configs import PIPELINE_NAME
    from pipeline.pipeline import pipeline_name_for

    return pipeline_runs(metadata_path, pipeline_name_for(TASK, PIPELINE_NAME))


# ------------------------------------------------------------------------------------- 1. data drift

def _write_examples(directory: str, examples: List[tf.train.Example]) -> None:
    os.makedirs(directory, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(directory, "data.gz"), options="GZIP") as writer:
        for example in examples:
            writer.write(example.SerializeToString())


def _example(sentence1: str, sentence2: Optional[str], label: int, idx: int) -> tf.train.Example:
    features = {"sentence1": tf.train.Feature(bytes_list=tf.train.BytesList(value=[sentence1.encode()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                "idx": tf.train.Feature(int64_list=tf.train.Int64List(value=[idx]))}
    if sentence2 is not None:
        features["sentence2"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[sentence2.encode()]))
    return tf.train.Example(features=tf.train.Features(feature=features))


def test_drifted_statistics_stop_the_run_at_the_data_gate_naming_each_anomaly(tmp_path) -> None:
    """train: a label 7 where MRPC's schema allows {0, 1}; eval: examples without sentence2."""
    from tensorflow_data_validation.utils import schema_util
    from tfx.components.example_validator import executor as validator_executor
    from tfx.components.statistics_gen import executor as statistics_executor
    from tfx.types import artifact_utils, standard_artifacts

    from components.data_gate import DataGate
    from components.glue_schema_gen import SCHEMA_FILE, glue_schema

    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    _write_examples(os.path.join(examples.uri, "Split-train"),
                    [_example(f"the dog ran {i} .", "a car .", label, i) for i, label in enumerate([0, 1] * 10 + [7])])
    _write_examples(os.path.join(examples.uri, "Split-eval"), [_example(f"the boat {i} .", None, i % 2, i) for i in range(8)])
    schema = standard_artifacts.Schema()
    schema.uri = str(tmp_path / "schema")
    os.makedirs(schema.uri)
    schema_util.write_schema_text(glue_schema(TASK), os.path.join(schema.uri, SCHEMA_FILE))

    statistics = standard_artifacts.ExampleStatistics()
    statistics.uri = str(tmp_path / "statistics")
    statistics_executor.Executor().Do({"examples": [examples]}, {"statistics": [statistics]}, {"exclude_splits": "[]"})
    anomalies = standard_artifacts.ExampleAnomalies()
    anomalies.uri = str(tmp_path / "anomalies")
    validator_executor.Executor().Do({"statistics": [statistics], "schema": [schema]}, {"anomalies": [anomalies]},
                                     {"exclude_splits": "[]"})

    with pytest.raises(RuntimeError) as error:
        DataGate.EXECUTOR_SPEC.executor_class().Do({"anomalies": [anomalies]}, {}, {})
    message = str(error.value)
    assert "stopping before training" in message
    label_line = [line for line in message.splitlines() if "split 'train', feature 'label'" in line]
    assert label_line and "7" in label_line[0] and "range" in label_line[0].lower(), message
    missing_line = [line for line in message.splitlines() if "split 'eval', feature 'sentence2'" in line]
    assert missing_line and "missing" in missing_line[0].lower(), message


def test_nothing_downstream_of_the_data_can_run_before_the_data_gate(tmp_path) -> None:
    """In the real pipeline, Transform waits for DataGate, and everything that trains or pushes waits for Transform."""
    from modules.config import TrainingConfig
    from pipeline.pipeline import create_pipeline

    data_dir = write_mrpc(str(tmp_path / "glue"), 4, 2, shuffle_train_labels=False, seed=0)
    pipeline = create_pipeline(pipeline_name="p", pipeline_root=str(tmp_path / "root"), data_dir=data_dir,
                               serving_dir=str(tmp_path / "serving"), config=TrainingConfig(task=TASK))

    assert {"ExampleValidator", "DataGate"} <= ancestors(pipeline, "Transform")
    for node_id in ("Trainer", "Evaluator_eval", "Pusher"):
        assert "DataGate" in ancestors(pipeline, node_id), node_id


# ------------------------------------------------------------------------------- 2. bad configuration

@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    """A valid tiny backbone and data dir, so each configuration test has exactly one thing wrong."""
    import transformers

    root = tmp_path_factory.mktemp("config")
    roberta = str(root / "roberta")
    transformers.RobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=37).save_pretrained(roberta)
    with open(os.path.join(roberta, "vocab.txt"), "w") as f:
        f.write("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
    return types.SimpleNamespace(
        model=write_tiny_bert(root / "tiny_bert", max_position_embeddings=MAX_POSITIONS), roberta=roberta,
        data_dir=write_mrpc(str(root / "glue"), 8, 4, shuffle_train_labels=False, seed=0), root=root,
    )


BAD_FLAGS = [
    (["--bottleneck_size", "0"], "--bottleneck_size must be a positive integer"),
    (["--bottleneck_size", "-8"], "--bottleneck_size must be a positive integer"),
    (["--learning_rate", "0"], "--learning_rate must be positive"),
    (["--learning_rate", "-0.001"], "--learning_rate must be positive"),
    (["--learning_rate", "nan"], "--learning_rate must be positive"),
    (["--batch_size", "0"], "--batch_size must be a positive integer"),
    (["--batch_size", "-16"], "--batch_size must be a positive integer"),
    (["--epochs", "0"], "--epochs must be a positive integer"),
    (["--epochs", "-1"], "--epochs must be a positive integer"),
    (["--non_linearity", "sigmoid"], "--non_linearity 'sigmoid' is unknown: expected one of gelu"),
    (["--max_seq_length", str(MAX_POSITIONS + 1)], f"--max_seq_length {MAX_POSITIONS + 1} exceeds the backbone's maximum of {MAX_POSITIONS}"),
    (["--max_seq_length", "512"], f"--max_seq_length 512 exceeds the backbone's maximum of {MAX_POSITIONS}"),
    (["--model", "ROBERTA"], "model_type 'roberta' is not supported"),
    (["--data_dir", "NOWHERE"], "GLUE data directory not found"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_configuration_is_a_clear_error_before_any_work(small_inputs, tmp_path, flags: List[str],
                                                            message: str) -> None:
    from pipeline import run

    output_dir = tmp_path / "out"
    flags = [{"ROBERTA": small_inputs.roberta, "NOWHERE": str(tmp_path / "nowhere")}.get(f, f) for f in flags]
    argv = ["--task", TASK, "--model", small_inputs.model, "--data_dir", small_inputs.data_dir,
            "--output_dir", str(output_dir), "--max_seq_length", str(MAX_SEQ_LENGTH), *flags]
    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    assert isinstance(exit_info.value.code, str) and exit_info.value.code.startswith("error: "), exit_info.value.code
    assert message in exit_info.value.code
    assert not output_dir.exists(), sorted(os.listdir(output_dir))  # no pipeline root, no metadata database


def test_bad_flag_on_the_command_line_exits_1_with_the_message_on_stderr(small_inputs, tmp_path) -> None:
    output_dir = tmp_path / "out"
    result = subprocess.run(
        cli("--task", TASK, "--model", small_inputs.model, "--data_dir", small_inputs.data_dir,
            "--output_dir", str(output_dir), "--bottleneck_size", "0"),
        cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == "error: --bottleneck_size must be a positive integer, got 0."
    assert "Traceback" not in result.stderr
    assert not output_dir.exists()


# ------------------------------------------------------------------------------------- 4. atomic push

def _tf_serving_version(name: str) -> Optional[int]:
    """What TF Serving's FileSystemStoragePathSource makes of a child of the base path: its version, or None
    (ignored). Port of ParseVersionNumber = tensorflow's strings::safe_strto64: optional whitespace, an
    optional '-', at least one digit, optional whitespace, nothing else."""
    body = name.strip(" \t\n\v\f\r")
    digits = body[1:] if body.startswith("-") else body
    return int(body) if digits and all("0" <= c <= "9" for c in digits) else None


def _fake_model(directory) -> str:
    """A SavedModel-shaped directory: saved_model.pb, variables/, assets/."""
    for relative, content in (("saved_model.pb", b"graph"), ("variables/variables.index", b"index"),
                              ("variables/variables.data-00000-of-00001", os.urandom(4096)),
                              ("assets/vocab.txt", b"[PAD]\n[UNK]\n"), ("fingerprint.pb", b"fp")):
        path = os.path.join(directory, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)
    return str(directory)


def test_push_publishes_a_complete_version_under_a_name_tf_serving_loads(tmp_path) -> None:
    from components import pusher

    model = _fake_model(tmp_path / "model")
    base = str(tmp_path / "serving" / "mrpc")
    version = pusher.push_model(model, base)
    assert os.listdir(base) == [version]
    assert _tf_serving_version(version) == int(version) and abs(int(version) - time.time()) < 60
    assert snapshot(os.path.join(base, version)) == snapshot(model)
    # The temporary name of a push in progress is never taken for a version by TF Serving.
    assert _tf_serving_version(f"{pusher.TEMP_PREFIX}{version}-0a1b2c3d") is None
    assert _tf_serving_version("12") == 12 and _tf_serving_version("12.tmp") is None  # the port itself


def test_pushes_in_the_same_second_get_distinct_increasing_versions(tmp_path, monkeypatch) -> None:
    from components import pusher

    model = _fake_model(tmp_path / "model")
    base = str(tmp_path / "serving")
    monkeypatch.setattr(pusher.time, "time", lambda: 1_700_000_000.5)
    versions = [pusher.push_model(model, base) for _ in range(3)]
    assert versions == ["1700000000", "1700000001", "1700000002"]
    for version in versions:
        assert snapshot(os.path.join(base, version)) == snapshot(model)


def test_a_push_that_loses_the_race_for_its_version_takes_the_next_one(tmp_path, monkeypatch) -> None:
    """Another pusher publishes version N while this one is copying for N: the rename fails, N+1 is used."""
    from components import pusher

    model = _fake_model(tmp_path / "model")
    other = _fake_model(tmp_path / "other")
    base = str(tmp_path / "serving")
    monkeypatch.setattr(pusher.time, "time", lambda: 1_700_000_000.0)
    copy_tree = pusher.copy_tree

    def copy_while_another_push_lands(source: str, destination: str) -> None:
        copy_tree(source, destination)
        if os.path.basename(destination).startswith(pusher.TEMP_PREFIX):
            copy_tree(other, os.path.join(base, "1700000000"))

    monkeypatch.setattr(pusher, "copy_tree", copy_while_another_push_lands)
    assert pusher.push_model(model, base) == "1700000001"
    assert sorted(os.listdir(base)) == ["1700000000", "1700000001"]
    assert snapshot(os.path.join(base, "1700000000")) == snapshot(other)
    assert snapshot(os.path.join(base, "1700000001")) == snapshot(model)


def test_a_push_interrupted_mid_copy_leaves_no_version_and_the_previous_one_untouched(tmp_path, monkeypatch) -> None:
    from components import pusher

    model = _fake_model(tmp_path / "model")
    base = str(tmp_path / "serving")
    previous = pusher.push_model(model, base)
    before = snapshot(base)
    copied = []
    real_copy = pusher._copy_file

    def copy_then_fail(source: str, destination: str) -> None:
        if copied:
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        real_copy(source, destination)
        copied.append(destination)

    monkeypatch.setattr(pusher, "_copy_file", copy_then_fail)
    monkeypatch.setattr(pusher.time, "time", lambda: int(previous) + 5.0)
    with pytest.raises(OSError, match="No space left"):
        pusher.push_model(_fake_model(tmp_path / "new_model"), base)
    assert len(copied) == 1 and f"/{pusher.TEMP_PREFIX}" in copied[0]  # it was copying into the temporary dir
    assert os.listdir(base) == [previous]  # no numeric directory, no temporary one
    assert snapshot(base) == before


def test_on_object_stores_the_version_is_filled_from_a_complete_copy_with_saved_model_pb_last(tmp_path,
                                                                                              monkeypatch) -> None:
    """gs:// has no atomic directory rename: the fallback copies the finished temporary copy, saved_model.pb last."""
    from components import pusher

    model = _fake_model(tmp_path / "model")
    base = str(tmp_path / "serving")
    copies = []
    real_copy = pusher._copy_file

    def recording_copy(source: str, destination: str) -> None:
        copies.append((source, destination))
        real_copy(source, destination)

    monkeypatch.setattr(pusher, "is_remote", lambda path: True)
    monkeypatch.setattr(pusher, "_copy_file", recording_copy)
    version = pusher.push_model(model, base)
    into_version = [(s, d) for s, d in copies if d.startswith(os.path.join(base, version) + "/")]
    assert all(f"/{pusher.TEMP_PREFIX}" in s for s, _ in into_version)  # from the complete temporary copy
    assert into_version[-1][1] == os.path.join(base, version, "saved_model.pb")
    assert os.listdir(base) == [version] and snapshot(os.path.join(base, version)) == snapshot(model)


def test_pusher_executor_pushes_only_blessed_models_and_records_the_version(tmp_path) -> None:
    from tfx.proto import pusher_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils

    from components import pusher

    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "trainer_model")
    _fake_model(os.path.join(model.uri, "Format-Serving"))
    base = str(tmp_path / "serving" / "mrpc")
    properties = {"push_destination": proto_utils.proto_to_json(pusher_pb2.PushDestination(
        filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=base)))}
    results = {}
    for blessed in (0, 1):
        blessing = standard_artifacts.ModelBlessing()
        blessing.uri = str(tmp_path / f"blessing{blessed}")
        blessing.set_int_custom_property("blessed", blessed)
        pushed = standard_artifacts.PushedModel()
        pushed.uri = str(tmp_path / f"pushed{blessed}")
        pusher.Executor().Do({"model": [model], "model_blessing": [blessing]}, {"pushed_model": [pushed]}, properties)
        results[blessed] = pushed
        if not blessed:
            assert not os.path.exists(base) or not os.listdir(base)
    assert results[0].get_int_custom_property("pushed") == 0
    version = results[1].get_string_custom_property("pushed_version")
    assert results[1].get_int_custom_property("pushed") == 1
    assert results[1].get_string_custom_property("pushed_destination") == os.path.join(base, version)
    assert os.listdir(base) == [version]
    assert snapshot(os.path.join(base, version)) == snapshot(os.path.join(model.uri, "Format-Serving"))


def test_the_pipeline_pushes_with_the_atomic_pusher(tmp_path) -> None:
    from components.pusher import AtomicPusher, Executor
    from modules.config import TrainingConfig
    from pipeline.pipeline import create_pipeline

    data_dir = write_mrpc(str(tmp_path / "glue"), 4, 2, shuffle_train_labels=False, seed=0)
    pipeline = create_pipeline(pipeline_name="p", pipeline_root=str(tmp_path / "root"), data_dir=data_dir,
                               serving_dir=str(tmp_path / "serving"), config=TrainingConfig(task=TASK))
    (pusher_node,) = [c for c in pipeline.components if c.id == "Pusher"]
    assert isinstance(pusher_node, AtomicPusher) and pusher_node.executor_spec.executor_class is Executor


# ------------------------------------------------------------------ 3, 5, 6: shared real pipeline runs

def _wait_for(log_path: str, text: str, process: subprocess.Popen, timeout: float, after: int = 0) -> int:
    """Waits until `text` appears in the log after offset `after`; returns the offset just past it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            content = f.read()
        position = content.find(text, after)
        if position >= 0:
            return position + len(text)
        if process.poll() is not None:
            raise AssertionError(f"the run ended (exit code {process.returncode}) before {text!r}:\n{content[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not in the log after {timeout} s:\n{content[-3000:]}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_mrpc_run: types.SimpleNamespace) -> types.SimpleNamespace:
    root = tmp_path_factory.mktemp("runs")
    # A: learnable data, to completion (the shared run). C, D and E serve from a copy of its serving directory.
    a = tiny_mrpc_run
    after_a = snapshot(a.serving_dir)
    serving_dir = str(root / "serving")
    shutil.copytree(a.serving_dir, serving_dir)
    assert snapshot(serving_dir) == after_a
    shuffled = write_mrpc(str(root / "shuffled"), TRAIN_ROWS, EVAL_ROWS, shuffle_train_labels=True, seed=1)
    metadata_path = str(root / "out" / "metadata.sqlite")
    common = [*TRAINING, "--model", a.model_dir, "--output_dir", str(root / "out"), "--serving_dir", serving_dir,
              "--no_bucketing", "--max_regression", "0.01"]
    timings = {}

    def log_file(name: str) -> str:
        return str(root / f"{name}.log")

    # E: learnable data again, but learning rate 1e-9 for one epoch (the model stays at its random start), from
    # another output directory (pipeline root and ML Metadata database) that shares only the serving directory.
    # It runs beside C and D (nothing of theirs is its input; none of them pushes), so the three take the time of
    # two on two cores.
    other_out = root / "other_out"
    e_flags = [f if f != str(root / "out") else str(other_out) for f in common]
    e_flags[e_flags.index("--learning_rate") + 1] = "1e-9"
    e_flags[e_flags.index("--epochs") + 1] = "1"
    e_start = time.time()
    with open(log_file("E"), "w") as log:
        e_process = subprocess.Popen(cli(*e_flags, "--data_dir", a.data_dir), cwd=REPO_ROOT, env=cli_env(), stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # C: shuffled labels, killed (SIGKILL, whole process group) once the Trainer's execution has started.
        start = time.time()
        command = cli(*common, "--data_dir", shuffled, "--verbose")
        with open(log_file("C"), "w") as log:
            process = subprocess.Popen(command, cwd=REPO_ROOT, env=cli_env(), stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        try:
            offset = _wait_for(log_file("C"), "Component Trainer is running.", process, RUN_TIMEOUT)
            _wait_for(log_file("C"), "Going to run a new execution", process, 120, after=offset)
            time.sleep(3)  # inside the Trainer's executor
            assert process.poll() is None, "the run ended before it could be killed"
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(60)
        timings["C (killed)"] = time.time() - start
        after_kill = snapshot(serving_dir)

        # D: the same command again.
        start = time.time()
        with open(log_file("D"), "w") as log:
            result = subprocess.run(command, cwd=REPO_ROOT, env=cli_env(), stdout=log, stderr=subprocess.STDOUT,
                                    timeout=RUN_TIMEOUT)
        timings["D"] = time.time() - start
        assert result.returncode == 0, open(log_file("D")).read()[-5000:]
        records = mrpc_runs(metadata_path)
        assert len(records) == 2, len(records)
        after_d = snapshot(serving_dir)
        e_process.wait(RUN_TIMEOUT)
    finally:
        if e_process.poll() is None:
            os.killpg(e_process.pid, signal.SIGKILL)
            e_process.wait(60)
    timings["E (beside C and D)"] = time.time() - e_start
    assert e_process.returncode == 0, open(log_file("E")).read()[-5000:]
    (e_record,) = mrpc_runs(str(other_out / "metadata.sqlite"))
    print("\npipeline run wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return types.SimpleNamespace(
        a_serving_dir=a.serving_dir, serving_dir=serving_dir, after_a=after_a, after_kill=after_kill, after_d=after_d,
        after_e=snapshot(serving_dir), a=a.first, c=records[0], d=records[1], e=e_record,
        killed_returncode=process.returncode, d_log=open(log_file("D")).read(), e_log=open(log_file("E")).read(),
        timings=timings,
    )


def _evaluation(record: PipelineRun, model_name: str = "") -> Dict[str, float]:
    from modules.metrics import overall_metrics

    return overall_metrics(record.output("ModelEvaluation").uri, model_name=model_name)


def test_first_run_learns_the_task_and_pushes_one_complete_version(runs) -> None:
    assert set(runs.a.states.values()) == {"COMPLETE"}, runs.a.states
    metrics = _evaluation(runs.a)
    assert metrics["accuracy"] >= 0.85, metrics  # chance is 0.5 (balanced labels)
    assert runs.a.output("ModelBlessing").custom_properties["blessed"].int_value == 1
    pushed = runs.a.output("PushedModel").custom_properties
    version = pushed["pushed_version"].string_value
    assert pushed["pushed"].int_value == 1
    assert pushed["pushed_destination"].string_value == os.path.join(runs.a_serving_dir, TASK, version)
    assert os.listdir(os.path.join(runs.a_serving_dir, TASK)) == [version]
    assert f"{TASK}/{version}/saved_model.pb" in runs.after_a
    assert any(path.startswith(f"{TASK}/{version}/variables/variables.data") for path in runs.after_a)


def test_killed_run_leaves_its_trainer_running_in_metadata_and_nothing_published(runs) -> None:
    assert runs.killed_returncode == -signal.SIGKILL
    assert runs.c.states["Trainer"] == "RUNNING"  # never finished: the kill left it so
    assert runs.c.states["Transform"] == "COMPLETE"
    assert not {"Evaluator_eval", "Pusher"} & set(runs.c.states)
    assert runs.after_kill == runs.after_a


def test_rerun_after_a_kill_reuses_the_upstream_outputs_and_completes(runs) -> None:
    for node in ("GlueExampleGen", "StatisticsGen", "GlueSchemaGen", "ExampleValidator", "DataGate", "Transform"):
        assert runs.d.states[node] == "CACHED", (node, runs.d.states)
    assert runs.d.states["Trainer"] == "COMPLETE"
    assert runs.d.executions["Trainer"].id != runs.c.executions["Trainer"].id
    assert runs.d.states["Evaluator_eval"] == runs.d.states["Pusher"] == "COMPLETE"
    # The cached outputs are the killed run's own (not recomputed): same artifact ids.
    assert runs.d.output("TransformGraph").id == runs.c.output("TransformGraph").id


def test_a_worse_model_is_neither_blessed_nor_pushed_and_serving_keeps_the_previous_version(runs) -> None:
    candidate, baseline = _evaluation(runs.d, "candidate"), _evaluation(runs.d, "baseline")
    assert baseline["accuracy"] >= 0.85 and candidate["f1"] < baseline["f1"] - 0.01, (candidate, baseline)
    assert runs.d.output("ModelBlessing").custom_properties["blessed"].int_value == 0
    assert runs.d.output("PushedModel").custom_properties["pushed"].int_value == 0
    assert runs.after_d == runs.after_a  # the same single version, the same bytes
    assert len([p for p in runs.after_d if p.count("/") == 2 and p.endswith("/")]) == 1


def test_the_served_model_is_the_baseline_whichever_run_pushed_it(runs) -> None:
    """E shares only the serving directory with A-D: its baseline is still A's served version."""
    version = runs.a.output("PushedModel").custom_properties["pushed_version"].string_value
    served = os.path.join(runs.serving_dir, TASK, version)  # A's push, in the copy of A's serving directory C-E use
    blessing = runs.e.output("ModelBlessing").custom_properties
    assert blessing["served_baseline"].string_value == served
    assert _evaluation(runs.e, "baseline") == pytest.approx(_evaluation(runs.a))  # A's model on the same data


def test_a_model_that_learned_nothing_is_not_blessed_and_the_summary_says_why(runs) -> None:
    blessing = runs.e.output("ModelBlessing").custom_properties
    assert blessing["blessed"].int_value == 0
    assert runs.e.output("PushedModel").custom_properties["pushed"].int_value == 0
    assert runs.after_e == runs.after_a
    gate = blessing["gate"].string_value
    assert re.fullmatch(r"F1 \d\.\d{4} does not beat the constant predictor's 0\.6667 \+ 0\.01", gate), gate
    assert f"blessed:   no ({gate})" in runs.e_log


# --------------------------------------------------------------------------------- 6. serving input

@pytest.fixture(scope="module")
def predict_text(runs):
    import tensorflow_text  # noqa: F401  (custom ops of the Transform graph)

    version = runs.a.output("PushedModel").custom_properties["pushed_version"].string_value
    model = tf.saved_model.load(os.path.join(runs.serving_dir, TASK, version))
    signature = model.signatures["predict_text"]

    def predict(pairs):
        outputs = signature(sentence1=tf.constant([a for a, _ in pairs]), sentence2=tf.constant([b for _, b in pairs]))
        return {name: value.numpy() for name, value in outputs.items()}

    predict.model = model  # keep the loaded object alive
    return predict


EDGE_TEXTS = {
    "empty": "",
    "whitespace": " \t\n\u00a0\u3000  ",
    "emoji": "🐶🚗👍🏽 🇫🇷 ❤️‍🔥",
    "chinese": "狗在公园里跑。汽车停在路上。",
    "arabic": "الكلب يجري في الحديقة",
    "hindi": "कुत्ता पार्क में दौड़ता है",
    "mixed": "the dog 狗 الكلب कुत्ता 🐶 ran .",
    "long": ("the big dog ran near the old boat . " * 2800)[:100_000],
}


def _check_outputs(outputs: Dict[str, np.ndarray], rows: int) -> None:
    probabilities, labels = outputs["probabilities"], outputs["label"]
    assert probabilities.shape == (rows, 2) and labels.shape == (rows,)
    assert np.all(np.isfinite(probabilities)) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.array_equal(labels, probabilities.argmax(axis=1))


def test_predict_text_answers_edge_inputs_deterministically(predict_text) -> None:
    assert len(EDGE_TEXTS["long"]) == 100_000
    pairs = [(text, "a small red car .") for text in EDGE_TEXTS.values()]
    pairs += [("the dog ran .", text) for text in EDGE_TEXTS.values()]
    pairs += [("", ""), ("", "the dog ran ."), ("the dog ran .", "")]
    first, second = predict_text(pairs), predict_text(pairs)
    _check_outputs(first, len(pairs))
    for name in first:
        assert np.array_equal(first[name], second[name]), name
    for i, pair in enumerate(pairs):  # a row's answer does not depend on the rest of the batch
        alone = predict_text([pair])
        np.testing.assert_allclose(alone["probabilities"][0], first["probabilities"][i], atol=1e-5)


def test_a_100k_character_text_is_truncated_to_max_seq_length(predict_text) -> None:
    """Everything past the first MAX_SEQ_LENGTH tokens is cut: the answer equals that of the text's beginning."""
    long_text = EDGE_TEXTS["long"]
    beginning = "the big dog ran near the old boat . " * 8  # already more than MAX_SEQ_LENGTH tokens
    outputs = predict_text([(long_text, "a car ."), (beginning, "a car ."), (long_text, long_text)])
    _check_outputs(outputs, 3)
    np.testing.assert_allclose(outputs["probabilities"][0], outputs["probabilities"][1], atol=1e-6)


def test_predict_text_answers_a_batch_of_1024_mixed_inputs(predict_text) -> None:
    rng = random.Random(0)
    texts = list(EDGE_TEXTS.values()) + [synthetic_sentence(rng, FILLER + ANIMALS + VEHICLES) for _ in range(40)]
    pairs = [(rng.choice(texts), rng.choice(texts)) for _ in range(1024)]
    first, second = predict_text(pairs), predict_text(pairs)
    _check_outputs(first, 1024)
    for name in first:
        assert np.array_equal(first[name], second[name]), name
    sample = list(range(0, 1024, 97))
    alone = predict_text([pairs[i] for i in sample])
    np.testing.assert_allclose(alone["probabilities"], first["probabilities"][sample], atol=1e-5)
