"""The compiled Kubeflow spec, executed: every task of `python -m kubeflow.runner`'s output run the way the KFP v2
launcher runs it in its pod (kubeflow.launcher, a test double: no cluster or container engine here).

Two executions (the tiny BERT and 64/32 MRPC rows of tests/tiny_mrpc.py, file:// URIs) whose results every test
reads:
  - the session's shared one (tests/tiny_kubeflow.py, `tiny_kubeflow_run`: the local run's flags with the Tuner,
    whose search chooses the local run's training settings): every task ran in DAG order and succeeded, the
    ExampleGen's pre-cache check fed its executor, every downstream input is what the upstream executor wrote,
    and the pushed model has the signatures and answers of the model a local run (pipeline.run, LocalDagRunner:
    the session's shared `tiny_mrpc_run`) pushes from the same data, backbone and training settings, and
    BulkInferrer with the PredictionWriter publish the same test predictions beside it;
  - a degraded model (learning rate 1e-9, one epoch; no Tuner), compiled the same way and executed second
    against a copy of the first execution's serving directory: its Evaluator compares it with the served model
    (the first execution's push), and it is neither blessed nor pushed, having failed the constant predictor's
    floor, and predicts nothing.
Each task is a process of its own running the container's command and arguments, forked from one interpreter
that imported TensorFlow, TFX and Beam once (kubeflow/forkserver.py); the failing-task check below starts a fresh
interpreter per process, as the launcher does by default. Apart from them, a spec whose GLUE files are missing
stops at its first task, naming the task, its command and its log.
"""
import glob
import json
import os
import re
import shutil
import types
from typing import Dict

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2 as pb

from kubeflow import launcher
from test_pipeline_e2e import QUERIES, serialized_examples
from test_tuner import read_json
from tiny_kubeflow import compile_spec, served_versions
from tiny_mrpc import EVAL_ROWS

DEGRADED = ["--learning_rate", "1e-9", "--epochs", "1"]  # after TRAINING: argparse keeps the last value


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory, tiny_mrpc_run: types.SimpleNamespace,
             tiny_kubeflow_run: types.SimpleNamespace) -> types.SimpleNamespace:
    """The shared execution ("first") and the degraded one, which serves from a copy of the first's serving
    directory (and writes test predictions beside it), so the shared execution stays as it was."""
    first = tiny_kubeflow_run
    root = tmp_path_factory.mktemp("kubeflow_execution")
    serving_dir = str(root / "serving")
    shutil.copytree(first.serving_dir, serving_dir)
    shutil.copytree(os.path.join(first.root, "predictions"), str(root / "predictions"))
    # The local run's backbone (initializer_range 0.2: outputs that depend on the input, so equal answers mean
    # equal models) and data.
    degraded_spec = compile_spec(str(root / "degraded.json"), str(root / "kfp"), tiny_mrpc_run.data_dir, serving_dir,
                                 tiny_mrpc_run.model_dir, *DEGRADED)
    degraded = launcher.run(degraded_spec, run_id="degraded", warm=True)
    return types.SimpleNamespace(
        spec=first.spec, first=first.run, degraded=degraded, first_root=first.root, root=str(root),
        first_serving_dir=first.serving_dir, serving_dir=serving_dir, versions_after_first=first.versions,
        versions_after_degraded=served_versions(serving_dir), local_pushed=tiny_mrpc_run.pushed,
        local_predictions=tiny_mrpc_run.predictions,
    )


def pushed_destination(pipeline_run: launcher.PipelineRun) -> str:
    metadata = json_format.MessageToDict(pipeline_run.output("Pusher", "pushed_model").metadata)
    return metadata.get("pushed_destination", "")


def metadata(artifact) -> Dict:
    return json_format.MessageToDict(artifact.metadata)


# --- the first execution -----------------------------------------------------------------------------------


def test_every_task_ran_in_dag_order_and_succeeded(executed: types.SimpleNamespace) -> None:
    tasks = executed.spec.root.dag.tasks
    names = [t.name for t in executed.first.tasks]
    assert sorted(names) == sorted(tasks) and {"Tuner", "Trainer", "Pusher"} <= set(names)
    for position, name in enumerate(names):
        upstream = set(tasks[name].dependent_tasks)
        assert upstream <= set(names[:position]), f"{name} ran before {upstream - set(names[:position])}"
        outputs = executed.spec.components[tasks[name].component_ref.name].output_definitions.artifacts
        run = executed.first.task(name)
        # What a pod's launcher would record: every declared output, written where KFP lays it out.
        assert set(run.executor_output.artifacts) == set(outputs), name
        for key, artifacts in run.executor_output.artifacts.items():
            (artifact,) = artifacts.artifacts
            assert artifact.uri == os.path.join(executed.first_root, "kfp", "adapter-bert-glue-mrpc", "first", name, key)
            assert os.path.isdir(artifact.uri)


def test_each_process_ran_the_containers_command_and_args_with_the_tasks_executor_input(
        executed: types.SimpleNamespace) -> None:
    for name, task in executed.spec.root.dag.tasks.items():
        container = launcher.container_of(executed.spec, executed.spec.components[task.component_ref.name], name)
        declared = [container.lifecycle.pre_cache_check] if container.lifecycle.HasField("pre_cache_check") else []
        declared.append(container)
        run = executed.first.task(name)
        assert len(run.commands) == len(declared), name
        for process, argv in zip(declared, run.commands):
            expected = [*process.command, *process.args]
            assert len(argv) == len(expected) and argv[:3] == ["python", "-m", expected[2]], name
            for given, spec_arg in zip(argv, expected):
                if spec_arg == "{{$}}":
                    executor_input = json_format.Parse(given, pb.ExecutorInput())
                else:
                    assert given == spec_arg, name
        assert executor_input == run.executor_input, name  # the executor's, after the pre-cache check's update


def test_example_gen_pre_cache_check_fed_its_executor(executed: types.SimpleNamespace) -> None:
    """Only TFX's ExampleGen driver (the spec's lifecycle preCacheCheck) computes the input fingerprint and span."""
    container = launcher.container_of(executed.spec, executed.spec.components["GlueExampleGen"], "GlueExampleGen")
    assert list(container.lifecycle.pre_cache_check.command)[-1] == "tfx.orchestration.kubeflow.v2.file_based_example_gen.driver"
    examples = metadata(executed.first.output("GlueExampleGen", "examples"))
    assert examples["input_fingerprint"].startswith("split:train,num_files:1,")
    assert examples["custom:span"] == 0
    assert examples["split_names"] == '["train", "eval", "test"]'  # written by the executor


def test_downstream_inputs_are_what_upstream_executors_wrote(executed: types.SimpleNamespace) -> None:
    for name, task in executed.spec.root.dag.tasks.items():
        given = executed.first.task(name).executor_input.inputs.artifacts
        assert set(given) == set(task.inputs.artifacts), name
        for key, source in task.inputs.artifacts.items():
            producer = source.task_output_artifact
            written = executed.first.output(producer.producer_task, producer.output_artifact_key)
            (artifact,) = given[key].artifacts
            assert (artifact.uri, metadata(artifact)) == (written.uri, metadata(written)), f"{name}.{key}"
    blessing = metadata(executed.first.output("Evaluator_eval", "blessing"))
    assert blessing["blessed"] == 1
    assert metadata(executed.first.task("Pusher").executor_input.inputs.artifacts["model_blessing"].artifacts[0]) == blessing


def test_pushed_model_has_the_local_runs_signatures_and_answers(executed: types.SimpleNamespace) -> None:
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops of the Transform graph)

    pushed = pushed_destination(executed.first)
    assert pushed == f"file://{executed.first_serving_dir}/mrpc/{executed.versions_after_first[0]}"
    assert len(executed.versions_after_first) == 1
    kubeflow_model = tf.saved_model.load(pushed[len("file://"):])
    local_model = tf.saved_model.load(executed.local_pushed)
    assert set(kubeflow_model.signatures) == set(local_model.signatures) == {
        "serving_default", "predict_text", "bulk_inference"}
    for name, signature in kubeflow_model.signatures.items():
        assert signature.structured_input_signature == local_model.signatures[name].structured_input_signature
        assert signature.structured_outputs == local_model.signatures[name].structured_outputs
    first, second = tf.constant([a for a, _ in QUERIES]), tf.constant([b for _, b in QUERIES])
    answers = [(model.signatures["predict_text"](sentence1=first, sentence2=second),
                model.signatures["serving_default"](examples=serialized_examples(with_bookkeeping=False)))
               for model in (kubeflow_model, local_model)]
    for kubeflow_answer, local_answer in zip(*answers):
        np.testing.assert_array_equal(kubeflow_answer["label"].numpy(), local_answer["label"].numpy())
        np.testing.assert_allclose(kubeflow_answer["probabilities"].numpy(), local_answer["probabilities"].numpy(),
                                   rtol=0, atol=1e-6)


def test_test_predictions_are_published_beside_the_pushed_version_as_the_local_run_does(
        executed: types.SimpleNamespace) -> None:
    published = metadata(executed.first.output("PredictionWriter", "predictions"))["published_to"]
    version = executed.versions_after_first[0]
    assert published == f"file://{executed.first_root}/predictions/mrpc/{version}"
    with open(os.path.join(published[len("file://"):], "MRPC.tsv")) as kubeflow, \
            open(os.path.join(executed.local_predictions, "MRPC.tsv")) as local:
        assert kubeflow.read() == local.read()


# --- the degraded model, executed second -------------------------------------------------------------------


def test_second_execution_compares_with_the_served_model(executed: types.SimpleNamespace) -> None:
    import tensorflow_model_analysis as tfma

    from modules.metrics import overall_metrics

    # The first execution's push, in the copy of its serving directory the degraded execution serves from.
    served = f"file://{executed.serving_dir}/mrpc/{executed.versions_after_first[0]}"
    assert pushed_destination(executed.first).endswith(f"/mrpc/{executed.versions_after_first[0]}")
    blessing = metadata(executed.degraded.output("Evaluator_eval", "blessing"))
    assert blessing["served_baseline"] == served
    assert blessing["baseline_model"] == served
    # TFMA evaluated both models on the eval split: the served one is the baseline.
    evaluation = executed.degraded.output("Evaluator_eval", "evaluation").uri
    for model_name in (tfma.CANDIDATE_KEY, tfma.BASELINE_KEY):
        assert overall_metrics(evaluation, model_name=model_name)["example_count"] == EVAL_ROWS


def test_degraded_model_is_not_blessed_and_not_pushed(executed: types.SimpleNamespace) -> None:
    blessing = metadata(executed.degraded.output("Evaluator_eval", "blessing"))
    assert blessing["blessed"] == 0
    assert re.fullmatch(r"F1 \d\.\d{4} does not beat the constant predictor's 0\.6667 \+ 0\.01", blessing["gate"])
    assert not os.path.exists(os.path.join(executed.degraded.output("Evaluator_eval", "blessing").uri, "BLESSED"))
    pushed = metadata(executed.degraded.output("Pusher", "pushed_model"))
    assert pushed["pushed"] == 0 and "pushed_destination" not in pushed
    assert executed.versions_after_degraded == executed.versions_after_first
    predictions = metadata(executed.degraded.output("PredictionWriter", "predictions"))
    assert predictions["published_to"] == "" and predictions["summary"] == "none (the model was not blessed)"
    assert os.listdir(os.path.join(executed.root, "predictions", "mrpc")) == executed.versions_after_first


# --- a failing task ----------------------------------------------------------------------------------------


def test_a_failing_task_stops_the_run_naming_it_and_its_log(tmp_path) -> None:
    """No GLUE files: the ExampleGen's executor fails naming the missing file (after its pre-cache check, which
    fingerprints whatever matches); no other task runs."""
    data_dir = tmp_path / "empty_glue"
    data_dir.mkdir()
    spec = compile_spec(str(tmp_path / "spec.json"), str(tmp_path / "kfp"), str(data_dir), str(tmp_path / "serving"),
                        str(tmp_path / "model_never_read"))
    with pytest.raises(launcher.TaskFailed) as failure:
        launcher.run(spec, run_id="failing", progress=lambda line: None)
    log = tmp_path / "kfp" / "adapter-bert-glue-mrpc" / "failing" / "logs" / "GlueExampleGen.log"
    message = str(failure.value)
    assert message.startswith("task 'GlueExampleGen' failed: "
                              "`python -m tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor` exited with 1")
    assert f"full log {log}" in message and f"{data_dir}/MRPC/train.tsv" in message
    assert sorted(os.listdir(log.parent)) == ["GlueExampleGen.log"]


# ------------------------------------------------------------------------ the Tuner task (issue 30)

def test_compiled_spec_has_the_tuner_task_feeding_the_trainer(tiny_kubeflow_run) -> None:
    tasks = tiny_kubeflow_run.spec.root.dag.tasks
    trainer_inputs = tasks["Trainer"].inputs.artifacts
    assert trainer_inputs["hyperparameters"].task_output_artifact.producer_task == "Tuner"
    assert trainer_inputs["hyperparameters"].task_output_artifact.output_artifact_key == "best_hyperparameters"
    label = tiny_kubeflow_run.spec.components[tasks["Tuner"].component_ref.name].executor_label
    executor = json_format.MessageToDict(tiny_kubeflow_run.spec.deployment_spec)["executors"][label]
    assert "components.tuner.Executor" in json.dumps(executor)


def test_kubeflow_launcher_executes_the_search_and_the_trainer_uses_its_choice(tiny_kubeflow_run) -> None:
    """The session's executed --tune spec (tests/tiny_kubeflow.py): a one-setting search (TRAINING's, 10 epochs)
    where the Trainer's own flag says TRAINER_EPOCHS."""
    from tiny_kubeflow import TRAINER_EPOCHS

    run = tiny_kubeflow_run.run
    order = [task.name for task in run.tasks]
    assert order.index("Transform") < order.index("Tuner") < order.index("Trainer")
    results = run.output("Tuner", "tuner_results")
    summary = json_format.MessageToDict(results.metadata)["summary"]
    assert summary.startswith("chosen: learning rate 0.01, bottleneck 16, 10 epochs; ") and "1 trials" in summary
    trials = read_json(results.uri, "trials.json")
    assert [r["settings"] for r in trials] == [{"learning_rate": 0.01, "bottleneck_size": 16, "epochs": 10}]
    # One holdout (--holdout_fraction 0.25 of 64 rows), not folds: the trial trained once.
    holdout = read_json(results.uri, "holdout.json")
    assert holdout["fraction"] == 0.25 and holdout["holdout_examples"] == 16 and len(trials[0]["folds"]) == 1
    assert " on 16 examples; " in summary
    best = read_json(run.output("Tuner", "best_hyperparameters").uri, "best_hyperparameters.txt")
    (config_path,) = glob.glob(os.path.join(run.output("Trainer", "model").uri, "**", "adapter_config.json"),
                               recursive=True)
    config = read_json(os.path.dirname(config_path), "adapter_config.json")
    trainer_flags = tiny_kubeflow_run.spec.root.dag.tasks["Trainer"].inputs.parameters["custom_config"]
    assert json.loads(trainer_flags.runtime_value.constant.string_value)["epochs"] == TRAINER_EPOCHS
    assert config["training"]["epochs"] == best["values"]["epochs"] != TRAINER_EPOCHS
    assert config["training"]["learning_rate"] == best["values"]["learning_rate"]
    assert config["tuning"]["trials"] == 1
