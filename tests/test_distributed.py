"""More than one machine, on one: the data stages under Beam's multi-process runner, and the Trainer under
MultiWorkerMirroredStrategy with two worker processes talking over 127.0.0.1.

  - GlueExampleGen -> StatisticsGen -> GlueSchemaGen -> ExampleValidator -> DataGate -> Transform (the real
    pipeline, partial run up to Transform) with `--direct_running_mode=multi_processing
    --direct_num_workers=2` writes the same transformed examples (as multisets, per split) as the default
    single-worker DirectRunner.
  - `modules.trainer.run_fn` started in two processes with TF_CONFIG (2 workers) trains to the same weights
    as one process on the same global batches in the same order; each worker's part of a global batch is
    its own half; only the chief writes the model artifact.
  - The strategy is chosen by TrainingConfig.distribution and TF_CONFIG; the chief is the "chief" task,
    else worker 0.

Both use a tiny random BERT (tests/tiny_bert.py, dropout off) and a small MRPC-format sample written here.
This file is also the worker program: `python tests/test_distributed.py <job.json>`.
"""
from __future__ import annotations

import collections
import glob
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_TIMEOUT_SECONDS = 300  # per training process; they normally take well under a minute
BATCH_SIZE = 8  # global batch
TRAIN_ROWS, EVAL_ROWS = 48, 16  # 6 full global batches per epoch


# --- data -----------------------------------------------------------------------------------------------


def write_mrpc_sample(data_dir: str, seed: int = 0) -> str:
    """MRPC/train.tsv and MRPC/dev.tsv in the exact GLUE format (UTF-8 BOM, header, 5 columns).

    Sentences are 3-5 words of the tiny vocabulary (one token each), so every pair is at most 13 tokens:
    all examples fall into one length bucket, and bucketed batches are full global batches.
    """
    from tiny_bert import WORDS

    rng = random.Random(seed)
    os.makedirs(os.path.join(data_dir, "MRPC"), exist_ok=True)
    for split, rows in (("train", TRAIN_ROWS), ("dev", EVAL_ROWS)):
        lines = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        for i in range(rows):
            a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 5)))
            b = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 5)))
            lines.append(f"{i % 2}\t{1000 + i}\t{2000 + i}\t{a.capitalize()}.\t{b.capitalize()}.")
        with open(os.path.join(data_dir, "MRPC", f"{split}.tsv"), "w", encoding="utf-8-sig") as f:
            f.write("\n".join(lines) + "\n")
    return data_dir


def tiny_model_dir(directory: str) -> str:
    """tests/tiny_bert's BERT with dropout off, so one process and two workers compute the same thing."""
    from tiny_bert import write_tiny_bert

    write_tiny_bert(directory, num_layers=1)
    config_file = os.path.join(directory, "config.json")
    with open(config_file) as f:
        config = json.load(f)
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    with open(config_file, "w") as f:
        json.dump(config, f, indent=2)
    return directory


def training_config(model_dir: str, **overrides) -> Dict:
    from modules.config import TrainingConfig

    # float32: bfloat16 products round the two layouts' slightly different float32 sums apart (1e-3), which would
    # hide what is compared here, the data each worker steps on.
    values = dict(task="mrpc", model=model_dir, max_seq_length=32, batch_size=BATCH_SIZE, epochs=1,
                  learning_rate=1e-2, warmup_ratio=0.0, bottleneck_size=8, seed=7, precision="float32")
    values.update(overrides)
    return TrainingConfig(**values).to_dict()


def run_data_stages(root: str, data_dir: str, model_dir: str, beam_args: List[str]) -> str:
    """The pipeline as pipeline.run builds it, run up to Transform; returns the pipeline root."""
    from tfx import v1 as tfx
    from tfx.orchestration.pipeline import RunOptions

    from modules.config import TrainingConfig
    from pipeline.pipeline import create_pipeline

    pipeline_root = os.path.join(root, "pipeline")
    pipeline = create_pipeline(
        pipeline_name="distributed-test", pipeline_root=pipeline_root, data_dir=data_dir,
        serving_dir=os.path.join(root, "serving"), config=TrainingConfig.from_dict(training_config(model_dir)),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(root, "metadata.sqlite")),
        beam_pipeline_args=beam_args, enable_cache=False,
    )
    tfx.orchestration.LocalDagRunner().run(pipeline, run_options=RunOptions(to_nodes=["Transform"]))
    return pipeline_root


def transform_output(pipeline_root: str, what: str) -> str:
    """The (only) directory of a Transform output artifact ("transformed_examples", "transform_graph")."""
    (uri,) = glob.glob(os.path.join(pipeline_root, "Transform", what, "*"))
    return uri


def transformed_examples(pipeline_root: str) -> Dict[str, collections.Counter]:
    """Split name -> multiset of the transformed examples, each as sorted (feature, kind, values) tuples."""
    import tensorflow as tf

    examples_uri = transform_output(pipeline_root, "transformed_examples")
    splits = {}
    for split_dir in sorted(glob.glob(os.path.join(examples_uri, "Split-*"))):
        counter = collections.Counter()
        for record in tf.data.TFRecordDataset(sorted(glob.glob(os.path.join(split_dir, "*"))), compression_type="GZIP"):
            example = tf.train.Example.FromString(record.numpy())
            counter[tuple(sorted(
                (name, kind, tuple(getattr(feature, kind).value))
                for name, feature in example.features.feature.items()
                for kind in [feature.WhichOneof("kind")]
            ))] += 1
        splits[os.path.basename(split_dir)] = counter
    return splits


class BeamWorkerWatch:
    """Counts the Beam SDK worker processes (apache_beam.runners.worker.sdk_worker_main) this process starts,
    sampling its children twice a second on a thread that stops when the `with` block ends."""

    def __init__(self):
        self.most_at_once, self.seen = 0, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(0.5):
            workers = set()
            for child in me.children(recursive=True):
                try:
                    command = child.cmdline()
                except psutil.Error:
                    continue
                if command and "python" in os.path.basename(command[0]) and "sdk_worker_main" in " ".join(command):
                    workers.add(child.pid)
            self.seen |= workers
            self.most_at_once = max(self.most_at_once, len(workers))

    def __enter__(self) -> "BeamWorkerWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    return {
        "root": str(root),
        "data_dir": write_mrpc_sample(str(root / "glue")),
        "model_dir": tiny_model_dir(str(root / "tiny_bert")),
    }


@pytest.fixture(scope="module")
def single_worker_data(workspace):
    """The data stages with the default Beam runner (DirectRunner, one worker, in memory)."""
    with BeamWorkerWatch() as watch:
        root = run_data_stages(os.path.join(workspace["root"], "beam_default"), workspace["data_dir"],
                               workspace["model_dir"], beam_args=[])
    assert watch.most_at_once == 0  # in this process
    return root


def test_data_stages_on_two_beam_worker_processes_match_one_worker(workspace, single_worker_data):
    with BeamWorkerWatch() as watch:
        two_workers = run_data_stages(
            os.path.join(workspace["root"], "beam_two_processes"), workspace["data_dir"], workspace["model_dir"],
            beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    # Beam may start a stage's workers before the previous stage's have exited (3 were once seen at once), so
    # the count is a lower bound: the stages ran in parallel on more than one worker process.
    assert watch.most_at_once >= 2, f"Beam ran the stages on at most {watch.most_at_once} worker process at once"
    one, two = transformed_examples(single_worker_data), transformed_examples(two_workers)
    assert sorted(one) == ["Split-eval", "Split-train"]
    assert sum(one["Split-train"].values()) == TRAIN_ROWS and sum(one["Split-eval"].values()) == EVAL_ROWS
    assert one == two


# --- training on two workers -------------------------------------------------------------------------------


@pytest.mark.parametrize("distribution, tf_config, expected", [
    ("auto", None, "default"),
    ("auto", {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}, "default"),
    ("auto", {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, "multi_worker"),
    ("auto", {"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief", "index": 0}}, "multi_worker"),
    ("default", {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, "default"),
    ("multi_worker", None, "multi_worker"),
])
def test_distribution_is_chosen_by_config_and_tf_config(monkeypatch, distribution, tf_config, expected):
    from modules.trainer import resolve_distribution

    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert resolve_distribution(distribution) == expected


def test_chief_is_the_chief_task_else_worker_zero():
    import types

    import tensorflow as tf

    from modules.trainer import is_chief
    from modules.config import TrainingConfig

    def strategy(cluster, task_type, task_id):
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)
        return types.SimpleNamespace(cluster_resolver=resolver)

    workers = {"worker": ["a:1", "b:1"]}
    with_chief = {"chief": ["c:1"], "worker": ["a:1", "b:1"]}
    assert is_chief(tf.distribute.get_strategy())
    assert [is_chief(strategy(workers, "worker", i)) for i in (0, 1)] == [True, False]
    assert is_chief(strategy(with_chief, "chief", 0))
    assert [is_chief(strategy(with_chief, "worker", i)) for i in (0, 1)] == [False, False]
    with pytest.raises(ValueError, match="--distribution must be one of"):
        TrainingConfig(distribution="mirrored")


def worker_main(job_file: str) -> None:
    """One training process, for the test to inspect afterwards.

    job["entry"] "run_fn": modules.trainer.run_fn as the TFX Trainer calls it (the workers); "train":
    modules.trainer.train alone, no export (the one-process reference). Records (as .npz) the trainable
    weights when the model is compiled and after training, how many replicas trained in sync, and the
    examples of the first two global batches as this process's replica gets them from Keras' distribution
    of the training dataset.
    """
    start = time.time()

    def progress(what: str) -> None:
        print(f"[{os.path.basename(job_file)} +{time.time() - start:.1f}s] {what}", flush=True)

    with open(job_file) as f:
        job = json.load(f)
    from tfx.components.trainer.fn_args_utils import FnArgs

    from modules import trainer
    from modules.model import variable_key

    record: Dict[str, np.ndarray] = {}
    datasets = []

    def record_weights(model, prefix: str) -> None:
        record.update({f"{prefix}/{variable_key(v)}": v.numpy() for v in model.trainable_variables})

    def record_trained(model) -> None:
        progress("trained")
        record_weights(model, "final")
        strategy = model.distribute_strategy
        record["replicas"] = np.array(strategy.num_replicas_in_sync)
        iterator = iter(strategy.experimental_distribute_dataset(datasets[0]))  # what Keras' fit iterates
        for step in range(2):
            features, label = next(iterator)
            local = strategy.experimental_local_results
            record[f"batch{step}/input_ids"] = np.concatenate([t.numpy() for t in local(features["input_ids"])])
            record[f"batch{step}/label"] = np.concatenate([t.numpy() for t in local(label)])

    make_dataset, compile_model, export_serving_model, save_adapter_weights = (
        trainer.make_dataset, trainer.compile_model, trainer.export_serving_model, trainer.save_adapter_weights)

    def recording_make_dataset(*args, **kwargs):
        datasets.append(make_dataset(*args, **kwargs))  # the first one is the training set
        return datasets[-1]

    def recording_compile_model(model, *args, **kwargs):
        progress("model built")
        record_weights(model, "initial")
        return compile_model(model, *args, **kwargs)

    def recording_export(model, *args, **kwargs):
        record_trained(model)
        export_serving_model(model, *args, **kwargs)
        progress("exported")

    def recording_save_adapter_weights(*args, **kwargs):
        save_adapter_weights(*args, **kwargs)
        progress("adapters saved")

    trainer.make_dataset, trainer.compile_model, trainer.export_serving_model, trainer.save_adapter_weights = (
        recording_make_dataset, recording_compile_model, recording_export, recording_save_adapter_weights)
    progress("imported")
    if job["entry"] == "run_fn":
        trainer.run_fn(FnArgs(
            train_files=job["train_files"], eval_files=job["eval_files"],
            transform_graph_path=job["transform_graph"], serving_model_dir=job["serving_model_dir"],
            model_run_dir=job["model_run_dir"], custom_config=job["custom_config"],
        ))
    else:
        import tensorflow_transform as tft

        from modules.config import TrainingConfig

        feature_spec = tft.TFTransformOutput(job["transform_graph"]).transformed_feature_spec()
        model, _ = trainer.train(TrainingConfig.from_dict(job["custom_config"]), job["train_files"],
                                 job["eval_files"], feature_spec, job["model_run_dir"])
        record_trained(model)
    np.savez(job["record"], **record)
    progress("done")


def start_worker(name: str, job: Dict, directory: str, tf_config: Dict = None) -> subprocess.Popen:
    job_file = os.path.join(directory, f"{name}.json")
    with open(job_file, "w") as f:
        json.dump(job, f)
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    log = open(job_file.replace(".json", ".log"), "w")
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), job_file], cwd=REPO_ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_all(processes: List[subprocess.Popen], timeout: float) -> None:
    """Waits for every process; on a failure or the deadline, kills the other workers' process groups."""
    deadline = time.time() + timeout
    try:
        for process in processes:
            process.wait(timeout=max(1.0, deadline - time.time()))
            if process.returncode != 0:
                log = process.args[-1].replace(".json", ".log")
                with open(log) as f:
                    tail = f.read()[-4000:]
                pytest.fail(f"worker {process.args[-1]} exited with {process.returncode}:\n{tail}")
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_two_workers_train_like_one_on_the_same_global_batches(workspace, single_worker_data, tmp_path):
    import portpicker

    examples = transform_output(single_worker_data, "transformed_examples")
    job = {
        "train_files": [os.path.join(examples, "Split-train", "*")],
        "eval_files": [os.path.join(examples, "Split-eval", "*")],
        "transform_graph": transform_output(single_worker_data, "transform_graph"),
        "custom_config": training_config(workspace["model_dir"]),
    }
    jobs_dir = str(tmp_path / "jobs")
    os.makedirs(jobs_dir)
    # One process, default strategy: modules.trainer.train, the training part of run_fn.
    single = dict(job, entry="train", model_run_dir=str(tmp_path / "single" / "logs"),
                  record=str(tmp_path / "single.npz"))
    # Two workers, as TFX runs the Trainer on each machine: the same output locations, TF_CONFIG per process.
    ports = [portpicker.pick_unused_port() for _ in range(2)]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    multi = dict(job, entry="run_fn", serving_model_dir=str(tmp_path / "multi" / "Format-Serving"),
                 model_run_dir=str(tmp_path / "multi" / "logs"))
    processes = [start_worker("single", single, jobs_dir)] + [
        start_worker(f"worker{i}", dict(multi, record=str(tmp_path / f"worker{i}.npz")), jobs_dir,
                     {"cluster": cluster, "task": {"type": "worker", "index": i}})
        for i in range(2)
    ]
    try:
        wait_all(processes, WORKER_TIMEOUT_SECONDS)
    finally:
        for port in ports:
            portpicker.return_port(port)

    one = dict(np.load(single["record"]))
    workers = [dict(np.load(str(tmp_path / f"worker{i}.npz"))) for i in range(2)]
    assert int(one["replicas"]) == 1 and [int(w["replicas"]) for w in workers] == [2, 2]
    # Each worker's replica gets its own half of every global batch of BATCH_SIZE examples, in the same order.
    for step in range(2):
        for key in ("input_ids", "label"):
            whole = one[f"batch{step}/{key}"]
            assert len(whole) == BATCH_SIZE
            np.testing.assert_array_equal(workers[0][f"batch{step}/{key}"], whole[: BATCH_SIZE // 2])
            np.testing.assert_array_equal(workers[1][f"batch{step}/{key}"], whole[BATCH_SIZE // 2:])
    names = sorted(k.split("/", 1)[1] for k in one if k.startswith("final/"))
    assert names and any("adapter" in n for n in names) and any("classifier" in n for n in names)
    moved = 0.0
    for name in names:
        for worker in workers:
            np.testing.assert_array_equal(worker[f"initial/{name}"], one[f"initial/{name}"], err_msg=name)
            np.testing.assert_allclose(worker[f"final/{name}"], one[f"final/{name}"], rtol=1e-4, atol=1e-5,
                                       err_msg=name)
        moved = max(moved, float(np.max(np.abs(one[f"final/{name}"] - one[f"initial/{name}"]))))
    assert moved > 1e-2  # training changed the weights: the equality above is not that of two untrained models
    # Only the chief wrote the model artifact; worker 1's scratch copies are gone.
    multi_dir = tmp_path / "multi"
    assert sorted(os.listdir(multi_dir)) == ["Format-Serving", "adapters", "logs"]
    assert {"saved_model.pb", "variables"} <= set(os.listdir(multi_dir / "Format-Serving"))
    assert sorted(os.listdir(multi_dir / "adapters")) == ["adapter_config.json", "adapter_weights.npz"]


if __name__ == "__main__":
    worker_main(sys.argv[1])
