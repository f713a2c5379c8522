"""TrainabilityGate: data that cannot train a useful model stops the run before Transform, naming the split, the
feature, the numbers and the flag; every real GLUE task passes the default thresholds.

1. Each check, provoked on small files in the GLUE format, through the real GlueExampleGen, GlueSchemaGen,
   StatisticsGen and TrainabilityGate executors: a training split with one label, a rare class, STS-B scores of
   train and dev far apart, an eval split smaller than a batch, dev pairs copied into train. Each fails with
   its own line and flag, and passes once that flag allows it.
2. The thresholds are flags of pipeline.run and kubeflow.runner: a bad value is refused before any work, and
   the values reach the compiled Kubeflow spec.
3. Every real GLUE task in ../shared/glue with a train and a dev file passes the defaults. Its statistics come
   from TFDV's in-memory generator with the pipeline's schema (StatisticsGen runs the same generators on Beam);
   the measured values are printed (pytest -s).
4. One pipeline run (module fixture, tiny BERT) on doctored MRPC files with all four problems: the run stops at
   TrainabilityGate listing them; Transform, Trainer, Evaluator and Pusher never ran; nothing was pushed.
"""
import os
import random
import types
from statistics import mean
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from conftest import ancestors, glue_dir_or_skip
from modules.glue import FEATURE_TEXT_A, FEATURE_TEXT_B, TASKS, get_task
from pipeline.configs import DataChecks

MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
SUBJECTS = ["The company", "The president", "Analysts", "The police", "Investors", "The court", "My father"]
VERBS = ["said", "reported", "found", "thought", "heard", "decided", "noticed"]
OBJECTS = ["sales rose five percent", "the river was cold", "the market fell", "profit fell in the second quarter",
           "the city needs water", "the stock price went up", "the king left early"]
Row = Tuple[object, str, str]  # label (class id or score), sentence1, sentence2


# ----------------------------------------------------------------------------------------------- helpers

def sentence_pairs(count: int, seed: int) -> List[Tuple[str, str]]:
    """Distinct, news-like sentence pairs (a day number keeps them apart)."""
    rng = random.Random(seed)
    pairs = []
    for i in range(count):
        day = seed * 1000 + i
        first = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} on day {day}."
        second = f"On day {day}, {rng.choice(SUBJECTS).lower()} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."
        pairs.append((first, second))
    return pairs


def rows(labels: Sequence[object], seed: int) -> List[Row]:
    return [(label, a, b) for label, (a, b) in zip(labels, sentence_pairs(len(labels), seed))]


def write_files(data_dir: str, task_name: str, splits: Dict[str, List[Row]]) -> str:
    """<data_dir>/<TASK>/{train,dev}.tsv in the original format of MRPC or STS-B."""
    task = get_task(task_name)
    os.makedirs(os.path.join(data_dir, task.directory), exist_ok=True)
    for file_name, split_rows in splits.items():
        if task_name == "mrpc":
            lines = [MRPC_HEADER] + [f"{label}\t{1000 + 2 * i}\t{1001 + 2 * i}\t{a}\t{b}"
                                     for i, (label, a, b) in enumerate(split_rows)]
        else:
            lines = [STSB_HEADER] + [f"{i}\tmain-news\theadlines\t2015\t{i:04d}\tnone\tnone\t{a}\t{b}\t{label:.3f}"
                                     for i, (label, a, b) in enumerate(split_rows)]
        with open(os.path.join(data_dir, task.directory, file_name), "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(lines) + "\n")
    return data_dir


def write_schema(uri: str, task_name: str, max_label_skew: float):
    """A Schema artifact written by the GlueSchemaGen executor."""
    from tfx.types import standard_artifacts

    from components.glue_schema_gen import GlueSchemaGen

    schema = standard_artifacts.Schema()
    schema.uri = uri
    os.makedirs(uri, exist_ok=True)
    GlueSchemaGen.EXECUTOR_SPEC.executor_class().Do(
        {}, {"schema": [schema]}, {"task_spec": get_task(task_name).to_json(), "max_label_skew": max_label_skew})
    return schema


def in_memory_statistics(serialized: List[bytes], schema):
    """TFDV's statistics of serialized tf.Examples, computed in this process with StatisticsGen's generators."""
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.statistics import stats_impl
    from tfx_bsl.coders import example_coder

    record_batch = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(serialized)
    return stats_impl.generate_statistics_in_memory(record_batch, tfdv.StatsOptions(schema=schema))


def ingest(root: str, task_name: str, splits: Dict[str, List[Row]]) -> types.SimpleNamespace:
    """The files as the gate's input artifacts: Examples read by GlueExampleGen's reader, statistics (with the
    schema GlueSchemaGen writes) in the layout StatisticsGen writes. No Beam: the pipeline run below has it."""
    import tensorflow as tf
    from tfx.components.statistics_gen import stats_artifact_utils
    from tfx.types import artifact_utils, standard_artifacts

    from components.glue_example_gen.executor import read_examples
    from components.glue_schema_gen import glue_schema

    task = get_task(task_name)
    data_dir = write_files(os.path.join(root, "glue"), task_name, splits)
    schema = write_schema(os.path.join(root, "schema"), task_name, DataChecks().max_label_skew(task))
    examples = standard_artifacts.Examples()
    examples.uri = os.path.join(root, "examples")
    statistics = standard_artifacts.ExampleStatistics()
    statistics.uri = os.path.join(root, "statistics")
    split_names = ["train", *task.eval_splits]
    for artifact in (examples, statistics):
        artifact.split_names = artifact_utils.encode_split_names(split_names)
    for split in split_names:
        path = os.path.join(data_dir, task.directory, task.splits[split])
        serialized = [example.SerializeToString() for example in read_examples(path, task, labeled=True)]
        os.makedirs(os.path.join(examples.uri, f"Split-{split}"))
        with tf.io.TFRecordWriter(os.path.join(examples.uri, f"Split-{split}", "data_tfrecord-00000-of-00001.gz"),
                                  options="GZIP") as writer:
            for record in serialized:
                writer.write(record)
        os.makedirs(os.path.join(statistics.uri, f"Split-{split}"))
        with open(os.path.join(statistics.uri, f"Split-{split}", stats_artifact_utils.BINARY_PB_BASENAME), "wb") as f:
            f.write(in_memory_statistics(serialized, glue_schema(task_name)).SerializeToString())
    return types.SimpleNamespace(root=root, task=task_name, examples=examples, schema=schema, statistics=statistics)


def gate(inputs: types.SimpleNamespace, batch_size: int = 32, max_label_skew: Optional[float] = None,
         **thresholds: float) -> None:
    """Runs the TrainabilityGate executor with the default thresholds, except those given."""
    from components.trainability_gate import TrainabilityGate

    schema = inputs.schema
    if max_label_skew is not None:
        schema = write_schema(os.path.join(inputs.root, f"schema-{max_label_skew}"), inputs.task, max_label_skew)
    defaults = DataChecks()
    TrainabilityGate.EXECUTOR_SPEC.executor_class().Do(
        {"statistics": [inputs.statistics], "schema": [schema], "examples": [inputs.examples]}, {},
        {"task_spec": get_task(inputs.task).to_json(), "batch_size": batch_size,
         "min_class_share": thresholds.get("min_class_share", defaults.min_class_share),
         "max_pair_overlap": thresholds.get("max_pair_overlap", defaults.max_pair_overlap)})


def problems(inputs: types.SimpleNamespace, **settings) -> List[str]:
    """The gate's problem lines (empty if it let the data through)."""
    try:
        gate(inputs, **settings)
    except RuntimeError as error:
        first, *lines = str(error).splitlines()
        assert first == "The data cannot train a useful model; stopping before training:"
        return [line.strip() for line in lines]
    return []


# ------------------------------------------------------------------------------- 1. each check provoked

def test_a_training_split_with_a_single_label_stops_naming_the_missing_class_and_the_label_skew(tmp_path) -> None:
    """The issue's case: every training row says "paraphrase"; dev is balanced."""
    inputs = ingest(str(tmp_path), "mrpc", {"train.tsv": rows([1] * 60, seed=1), "dev.tsv": rows([0, 1] * 20, seed=2)})
    assert problems(inputs) == [
        "split 'train', feature 'label': class '0' (id 0) has 0 of 60 examples (0.00%); every class needs at least "
        "one and 5.00% (--min_class_share 0.1 of an even share of 1/2).",
        "split 'eval' against 'train', feature 'label': L-infinity distance 0.5000, above 0.2 (--max_label_linf); "
        "train 0 0.0%, 1 100.0%; eval 0 50.0%, 1 50.0%.",
    ]
    # A missing class is never allowed, whatever the share threshold.
    assert [line for line in problems(inputs, min_class_share=0.0) if "class '0'" in line]


def test_a_rare_class_stops_the_run_unless_min_class_share_allows_it(tmp_path) -> None:
    train, dev = [0] * 3 + [1] * 97, [0] + [1] * 39  # 3.0% and 2.5%: the same balance, no skew
    inputs = ingest(str(tmp_path), "mrpc", {"train.tsv": rows(train, seed=1), "dev.tsv": rows(dev, seed=2)})
    assert problems(inputs) == [
        "split 'train', feature 'label': class '0' (id 0) has 3 of 100 examples (3.00%); every class needs at least "
        "one and 5.00% (--min_class_share 0.1 of an even share of 1/2)."]
    assert problems(inputs, min_class_share=0.05) == []  # at least 2.50%


def test_scores_of_train_and_dev_far_apart_stop_the_run_by_jensen_shannon_divergence(tmp_path) -> None:
    rng = random.Random(0)
    train = [round(rng.uniform(0.0, 1.5), 1) for _ in range(60)]
    dev = [round(rng.uniform(3.5, 5.0), 1) for _ in range(40)]
    inputs = ingest(str(tmp_path), "stsb", {"train.tsv": rows(train, seed=1), "dev.tsv": rows(dev, seed=2)})
    assert problems(inputs) == [  # no score of one split falls in a histogram bucket of the other
        "split 'eval' against 'train', feature 'label': Jensen-Shannon divergence 1.0000, above 0.1 (--max_label_js); "
        f"mean score train {mean(train):.2f}, eval {mean(dev):.2f}."]
    assert problems(inputs, max_label_skew=1.0) == []


def test_a_split_smaller_than_one_batch_stops_the_run_naming_batch_size(tmp_path) -> None:
    inputs = ingest(str(tmp_path), "mrpc", {"train.tsv": rows([0, 1] * 30, seed=1), "dev.tsv": rows([0, 1] * 20, seed=2)})
    assert problems(inputs) == []  # 60 and 40 examples, batches of 32
    assert problems(inputs, batch_size=48) == ["split 'eval': 40 examples, fewer than one batch (--batch_size 48)."]


def test_dev_pairs_copied_into_train_stop_the_run_unless_max_pair_overlap_allows_it(tmp_path) -> None:
    train = rows([0, 1] * 30, seed=1)
    copied = train[:10]
    same_first_sentence = [(label, a, "A different second sentence.") for label, a, _ in train[10:15]]  # not leaked
    dev = rows([0, 1] * 12 + [0], seed=2) + copied + same_first_sentence  # 10 of 40 examples are training pairs
    inputs = ingest(str(tmp_path), "mrpc", {"train.tsv": train, "dev.tsv": dev})
    first = min(a for _, a, _ in copied)[:80]
    assert problems(inputs) == [
        "split 'eval', features 'sentence1', 'sentence2': 10 of 40 examples (25.00%) have a pair that is also in "
        f"split 'train', above 5.00% (--max_pair_overlap 0.05); the first has sentence1 {first!r}."]
    assert problems(inputs, max_pair_overlap=0.25) == []


# -------------------------------------------------------------------------------------- 2. the flags

@pytest.mark.parametrize("flag", ["--min_class_share", "--max_label_linf", "--max_label_js", "--max_pair_overlap"])
def test_a_threshold_outside_0_1_is_refused_before_any_work(tmp_path, flag: str) -> None:
    from pipeline import run

    output_dir = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--output_dir", str(output_dir), flag, "1.5"])
    assert exit_info.value.code == f"error: {flag} must be in [0, 1], got 1.5."
    assert not output_dir.exists()


def test_the_thresholds_reach_the_compiled_kubeflow_spec(tmp_path) -> None:
    from kubeflow import runner

    args, beam_args = runner.parse_args([
        "--image", "image:1", "--pipeline_root", "gs://b/root", "--data_dir", "gs://b/glue", "--serving_dir",
        "gs://b/serving", "--task", "rte", "--batch_size", "8", "--max_label_linf", "0.3", "--min_class_share", "0.2",
        "--max_pair_overlap", "0.01"])
    _, job = runner.compile_pipeline(args, beam_args)
    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]

    def constant(task: str, parameter: str):
        return tasks[task]["inputs"]["parameters"][parameter]["runtimeValue"]["constant"]

    assert constant("GlueSchemaGen", "max_label_skew") == 0.3
    assert [constant("TrainabilityGate", p) for p in ("min_class_share", "max_pair_overlap", "batch_size")] == [0.2, 0.01, 8]
    assert "TrainabilityGate" in tasks["Transform"]["dependentTasks"]


def test_in_the_pipeline_everything_that_trains_or_pushes_waits_for_the_gate(tmp_path) -> None:
    from modules.config import TrainingConfig
    from pipeline.pipeline import create_pipeline

    data_dir = write_files(str(tmp_path / "glue"), "stsb", {"train.tsv": rows([1.0, 4.0], 1), "dev.tsv": rows([2.0], 2)})
    pipeline = create_pipeline(pipeline_name="p", pipeline_root=str(tmp_path / "root"), data_dir=data_dir,
                               serving_dir=str(tmp_path / "serving"), config=TrainingConfig(task="stsb", batch_size=4),
                               data_checks=DataChecks(max_label_js=0.25, min_class_share=0.3, max_pair_overlap=0.0))
    nodes = {component.id: component for component in pipeline.components}

    assert {"StatisticsGen", "GlueSchemaGen", "DataGate", "GlueExampleGen"} <= ancestors(pipeline, "TrainabilityGate")
    for node_id in ("Transform", "Trainer", "Evaluator_eval", "Pusher"):
        assert "TrainabilityGate" in ancestors(pipeline, node_id), node_id
    assert nodes["StatisticsGen"].inputs["schema"] is nodes["GlueSchemaGen"].outputs["schema"]  # categorical label
    assert nodes["GlueSchemaGen"].exec_properties["max_label_skew"] == 0.25  # a score: Jensen-Shannon
    assert {k: nodes["TrainabilityGate"].exec_properties[k] for k in ("batch_size", "min_class_share", "max_pair_overlap")} \
        == {"batch_size": 4, "min_class_share": 0.3, "max_pair_overlap": 0.0}


# ---------------------------------------------------------------------------- 3. the real GLUE tasks

@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_every_real_glue_task_passes_the_default_checks(task_name: str) -> None:
    from components.glue_example_gen.executor import read_examples
    from components.glue_schema_gen import add_label_skew_comparator, glue_schema
    from components.trainability_gate import check_data

    task = get_task(task_name)
    data_dir = os.path.join(glue_dir_or_skip(task.directory), task.directory)
    labeled = {split: task.splits[split] for split in ["train", *task.eval_splits]}
    missing = [name for name in labeled.values() if not os.path.exists(os.path.join(data_dir, name))]
    if missing:
        pytest.skip(f"{task.directory} has no {', '.join(missing)} in ../shared/glue (see its SOURCES.md)")
    checks = DataChecks()
    schema = glue_schema(task.name)
    add_label_skew_comparator(schema, task, checks.max_label_skew(task))
    examples = {split: list(read_examples(os.path.join(data_dir, name), task, labeled=True))
                for split, name in labeled.items()}
    statistics = {split: in_memory_statistics([e.SerializeToString() for e in split_examples], schema)
                  for split, split_examples in examples.items()}

    def text_pairs(split: str):
        return ((e.features.feature[FEATURE_TEXT_A].bytes_list.value[0], e.features.feature[FEATURE_TEXT_B].bytes_list.value[0])
                for e in examples[split])

    found, measured = check_data(task, statistics, schema, text_pairs, batch_size=32,
                                 min_class_share=checks.min_class_share, max_pair_overlap=checks.max_pair_overlap)
    print(f"\n{task.name}:\n  " + "\n  ".join(measured))
    assert found == []


# ------------------------------------------------------------- 4. one pipeline run: nothing trained or pushed

@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    """train: 48 rows, all "paraphrase"; dev: 12 rows (batches of 16), half of them copied from train."""
    from pipeline import run
    from pipeline.configs import PIPELINE_NAME
    from pipeline.pipeline import pipeline_name_for
    from pipeline.runs import pipeline_runs
    from tiny_bert import write_tiny_bert

    root = tmp_path_factory.mktemp("stopped")
    train = rows([1] * 48, seed=1)
    dev = train[:6] + rows([0] * 6, seed=2)
    data_dir = write_files(str(root / "glue"), "mrpc", {"train.tsv": train, "dev.tsv": dev})
    serving_dir, metadata_path = str(root / "serving"), str(root / "metadata.sqlite")
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--task", "mrpc", "--model", write_tiny_bert(root / "tiny_bert"), "--data_dir", data_dir,
                  "--output_dir", str(root / "out"), "--serving_dir", serving_dir, "--metadata_path", metadata_path,
                  "--batch_size", "16", "--max_seq_length", "32"])
    (record,) = pipeline_runs(metadata_path, pipeline_name_for("mrpc", PIPELINE_NAME))
    return types.SimpleNamespace(message=exit_info.value.code, run=record, serving_dir=serving_dir)


def test_the_run_stops_at_the_gate_with_every_problem(stopped_run) -> None:
    message = stopped_run.message
    assert message.startswith("error: the pipeline stopped: RuntimeError: The data cannot train a useful model; "
                              "stopping before training:"), message
    for expected in ("split 'train', feature 'label': class '0' (id 0) has 0 of 48 examples",
                     "split 'eval': 12 examples, fewer than one batch (--batch_size 16).",
                     "split 'eval' against 'train', feature 'label': L-infinity distance 0.5000, above 0.2 (--max_label_linf)",
                     "split 'eval', features 'sentence1', 'sentence2': 6 of 12 examples (50.00%) have a pair that is "
                     "also in split 'train', above 5.00% (--max_pair_overlap 0.05)"):
        assert expected in message, message


def test_nothing_is_transformed_trained_evaluated_or_pushed(stopped_run) -> None:
    states = stopped_run.run.states
    assert states["TrainabilityGate"] == "FAILED", states
    for node in ("GlueExampleGen", "GlueSchemaGen", "StatisticsGen", "ExampleValidator", "DataGate"):
        assert states[node] == "COMPLETE", states
    assert not {"Transform", "Trainer", "Evaluator_eval", "Pusher"} & set(states), states
    assert not {"Model", "ModelBlessing", "PushedModel"} & set(stopped_run.run.outputs)
    assert not os.path.exists(stopped_run.serving_dir)
