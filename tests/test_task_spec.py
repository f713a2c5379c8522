"""Task specs: the format, its validation, the readers of user files (CSV, JSON Lines) and their bad-row policy,
the metrics a spec may ask for, and how the one description reaches every stage and the Kubeflow pods."""
import json
import os
import re
from typing import Any, Dict, List

import numpy as np
import pytest
import tensorflow as tf
import yaml

from components.glue_example_gen import GlueExampleGen, executor
from modules import glue, metrics
from modules.glue import FEATURE_INDEX, FEATURE_LABEL, FEATURE_TEXT_A, FEATURE_TEXT_B, GlueTask, TaskSpecError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_SPEC = os.path.join(REPO_ROOT, "docs", "task_spec_example.yaml")

INTENTS: Dict[str, Any] = {
    "name": "intents", "format": "jsonl", "files": {"train": "train.jsonl", "eval": "dev.jsonl"},
    "text_a": "text", "label": "intent", "labels": ["billing", "bug", "feature", 4], "metrics": ["macro_f1", "accuracy"],
}


def write(path, text: str) -> str:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return str(path)


def write_spec(directory, spec: Dict[str, Any], name: str = "task.yaml") -> str:
    return write(os.path.join(str(directory), name), yaml.safe_dump(spec))


def rows(examples: List[tf.train.Example]) -> List[tuple]:
    """(text_a, text_b, label or None, idx) of each example."""
    out = []
    for example in examples:
        f = example.features.feature
        label = None
        if FEATURE_LABEL in f:
            label = f[FEATURE_LABEL].int64_list.value[0] if f[FEATURE_LABEL].int64_list.value else f[FEATURE_LABEL].float_list.value[0]
        out.append((f[FEATURE_TEXT_A].bytes_list.value[0].decode(), f[FEATURE_TEXT_B].bytes_list.value[0].decode(),
                    label, f[FEATURE_INDEX].int64_list.value[0]))
    return out


# --- the format and its validation ----------------------------------------------------------------------


def test_glue_tasks_are_specs_that_survive_json():
    for task in glue.TASKS.values():
        assert GlueTask.from_json(task.to_json()) == task
    mrpc = glue.get_task("mrpc")
    assert (mrpc.positive_label, mrpc.positive_class, mrpc.main_metric) == ("1", 1, "f1")
    assert glue.get_task("mnli").eval_splits == ("eval", "eval_mismatched")
    assert glue.get_task("stsb").score_range == (0.0, 5.0) and glue.get_task("stsb").is_regression


def test_the_documented_example_loads_with_files_next_to_it():
    task = glue.load_task_spec(EXAMPLE_SPEC)
    assert (task.name, task.format, task.text_b, task.num_labels) == ("tickets", "csv", "body", 4)
    assert task.splits["train"] == os.path.join(REPO_ROOT, "docs", "tickets", "train.csv")
    assert task.test_splits == ("test",) and task.eval_splits == ("eval",)


def test_relative_files_start_at_data_dir_when_given_and_uris_stay(tmp_path):
    path = write_spec(tmp_path, {**INTENTS, "files": {"train": "a/train.jsonl", "eval": "gs://bucket/dev.jsonl"}})
    assert glue.load_task_spec(path).splits == {"train": f"{tmp_path}/a/train.jsonl", "eval": "gs://bucket/dev.jsonl"}
    assert glue.load_task_spec(path, "gs://data/x").splits["train"] == "gs://data/x/a/train.jsonl"


def test_label_values_may_be_numbers_and_are_matched_as_text(tmp_path):
    task = glue.load_task_spec(write_spec(tmp_path, {**INTENTS, "labels": [0, 1, 2.5], "metrics": ["f1"],
                                                     "positive_label": 2.5}))
    assert task.label_names == ("0", "1", "2.5") and task.positive_class == 2


@pytest.mark.parametrize("change, message", [
    ({"name": "Tickets"}, "field 'name': expected lower-case letters, digits and dashes"),
    ({"name": "rte"}, "field 'name': 'rte' is a built-in GLUE task"),
    ({"name": "predict"}, "field 'name': expected another name: a multi-task bundle serves every task under 'predict'"),
    ({"format": "xlsx"}, "field 'format': expected one of tsv, csv, jsonl, got 'xlsx'"),
    ({"files": {"train": "t.jsonl"}}, "field 'files': expected a 'eval' file"),
    ({"files": {"train": "t", "eval": "e", "holdout": "h"}}, "field 'files': expected split names train, eval"),
    ({"labels": ["a"]}, "field 'labels': expected 'regression' or a list of at least two distinct label values"),
    ({"labels": [True, False]}, "field 'labels': expected 'regression' or a list"),
    ({"metrics": ["pearson"]}, "field 'metrics': expected metrics of a classification task: accuracy, f1, macro_f1, mcc"),
    ({"labels": "regression"}, "field 'metrics': expected metrics of a regression task: pearson, spearman"),
    ({"metrics": ["f1"]}, "field 'positive_label': expected the label whose F1"),
    ({"positive_label": "nope"}, "field 'positive_label': expected one of the labels"),
    ({"columns": ["text", "intent"]}, "field 'columns': expected no column names for format 'jsonl'"),
    ({"format": "csv", "columns": ["text", "other"]}, "field 'label': expected one of the columns ['text', 'other']"),
    ({"score_range": [0, 1]}, "field 'score_range': expected no score_range for a classification task"),
    ({"labels": "regression", "metrics": ["spearman"], "score_range": [5, 1]}, "field 'score_range': expected [min, max]"),
    ({"text_a": ""}, "field 'text_a': expected a non-empty string"),
    ({"lables": ["a", "b"]}, "unknown field 'lables'"),
])
def test_invalid_specs_name_the_field_and_what_was_expected(tmp_path, change, message):
    path = write_spec(tmp_path, {**INTENTS, **change})
    with pytest.raises(TaskSpecError, match=re.escape(f"{path}: ") + ".*" + re.escape(message)):
        glue.load_task_spec(path)


def test_missing_field_and_unreadable_files(tmp_path):
    spec = dict(INTENTS)
    del spec["text_a"]
    with pytest.raises(TaskSpecError, match="missing field 'text_a'"):
        glue.load_task_spec(write_spec(tmp_path, spec))
    with pytest.raises(TaskSpecError, match="not valid YAML"):
        glue.load_task_spec(write(tmp_path / "bad.yaml", "name: [unclosed"))
    with pytest.raises(TaskSpecError, match="Cannot read the task spec .*nowhere.yaml"):
        glue.load_task_spec(str(tmp_path / "nowhere.yaml"))


# --- reading user files ---------------------------------------------------------------------------------

PAIRS = {"name": "pairs", "format": "csv", "files": {"train": "train.csv", "eval": "dev.csv"},
         "text_a": "question", "text_b": "answer", "label": "match", "labels": [0, 1], "metrics": ["f1", "accuracy"],
         "positive_label": 1}


def test_csv_quoted_fields_keep_tabs_commas_quotes_and_line_breaks(tmp_path):
    task = GlueTask.from_spec(PAIRS)
    path = write(tmp_path / "train.csv", (
        '\ufeffquestion,answer,match\r\n'
        '"Is it 3,5 or\t4?","He said ""four"".",1\r\n'
        '\r\n'
        'plain,"two\nlines",0\n'
    ))
    assert rows(executor.read_examples(path, task, labeled=True)) == [
        ("Is it 3,5 or\t4?", 'He said "four".', 1, 0), ("plain", "two\nlines", 0, 1)]


def test_csv_bad_rows_name_the_line_they_start_on(tmp_path):
    task = GlueTask.from_spec(PAIRS)
    good = "".join(f'"q {i}","a, {i}",{i % 2}\n' for i in range(1000))
    path = write(tmp_path / "train.csv", 'question,answer,match\n"multi\nline",x\n' + good + '"q","  ",1\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}: 2 of 1002 rows are malformed, more than the 1")):
        list(executor.read_examples(path, task, labeled=True))
    one_bad = write(tmp_path / "one.csv", 'question,answer,match\n"multi\nline",x\n' + good)
    assert len(list(executor.read_examples(one_bad, task, labeled=True))) == 1000  # 1 of 1001 rows: skipped
    unknown = write(tmp_path / "unknown.csv", 'question,answer,match\n"a\nb",c,1\nd,e,7\n')
    with pytest.raises(ValueError, match=re.escape(f"{unknown}:4: unknown label '7' in column 'match'")):
        list(executor.read_examples(unknown, task, labeled=True))
    header = write(tmp_path / "header.csv", "question,reply,match\nq,a,1\n")
    with pytest.raises(ValueError, match=re.escape(f"{header}:1: header has no column 'answer'")):
        list(executor.read_examples(header, task, labeled=True))


def test_csv_and_tsv_without_header_take_the_given_columns(tmp_path):
    task = GlueTask.from_spec({**PAIRS, "columns": ["match", "question", "answer"], "test_columns": ["question", "answer"]})
    assert rows(executor.read_examples(write(tmp_path / "t.csv", "1,q,a\n"), task, labeled=True)) == [("q", "a", 1, 0)]
    assert rows(executor.read_examples(write(tmp_path / "u.csv", "q,a\n"), task, labeled=False)) == [("q", "a", None, 0)]
    tsv = GlueTask.from_spec({**PAIRS, "format": "tsv", "columns": ["match", "question", "answer"]})
    assert rows(executor.read_examples(write(tmp_path / "t.tsv", '1\t"q",\ta\n'), tsv, labeled=True)) == [('"q",', "a", 1, 0)]


def test_json_lines_labels_indexes_and_bad_records(tmp_path):
    task = GlueTask.from_spec(INTENTS)
    path = write(tmp_path / "train.jsonl", (
        '{"text": "refund please", "intent": "billing", "id": 7}\n'
        '\n'
        '{"text": "app crashes \\u00e9", "intent": 4, "extra": [1, 2]}\n'
    ))
    assert rows(executor.read_examples(path, task, labeled=True)) == [("refund please", "", 0, 7), ("app crashes é", "", 3, 1)]
    bad = {"not json": "{text: 1}", "an array": '["text"]', "no field 'intent'": '{"text": "x"}',
           "field 'text' is not a string": '{"text": 5, "intent": "bug"}', "empty sentence": '{"text": " ", "intent": "bug"}'}
    for problem, line in bad.items():
        path = write(tmp_path / "bad.jsonl", '{"text": "ok", "intent": "bug"}\n' + line + "\n")
        with pytest.raises(ValueError, match=re.escape(f"{path}: 1 of 2 rows are malformed") + "(.|\n)*"
                           + re.escape(f"{path}:2: ") + ".*" + re.escape(problem.replace("not json", "not a JSON object")
                                                                          .replace("an array", "not a JSON object"))):
            list(executor.read_examples(path, task, labeled=True))
    for record, message in (('{"text": "x", "intent": "Bug"}', "unknown label 'Bug'"),
                            ('{"text": "x", "intent": true}', "unknown label True"),
                            ('{"text": "x", "intent": "bug", "id": 1.5}', "id 1.5 is not an integer")):
        path = write(tmp_path / "fail.jsonl", record + "\n")
        with pytest.raises(ValueError, match=re.escape(f"{path}:1: {message}")):
            list(executor.read_examples(path, task, labeled=True))


def test_regression_json_lines_take_numbers_or_numeric_text(tmp_path):
    task = GlueTask.from_spec({**INTENTS, "labels": "regression", "metrics": ["pearson"]})
    path = write(tmp_path / "r.jsonl", '{"text": "a", "intent": 2}\n{"text": "b", "intent": "0.5"}\n')
    assert rows(executor.read_examples(path, task, labeled=True)) == [("a", "", 2.0, 0), ("b", "", 0.5, 1)]


def test_example_gen_takes_the_files_where_the_spec_puts_them(tmp_path):
    (tmp_path / "data").mkdir()
    for name in ("train.jsonl", "dev.jsonl"):
        write(tmp_path / "data" / name, '{"text": "a", "intent": "bug"}\n')
    task = glue.load_task_spec(write_spec(tmp_path / "data", INTENTS), None)
    component = GlueExampleGen(str(tmp_path / "elsewhere"), task)
    assert component.exec_properties["input_base"] == str(tmp_path / "data")
    config = json.loads(component.exec_properties["input_config"])
    assert sorted((s["name"], s["pattern"]) for s in config["splits"]) == [("eval", "dev.jsonl"), ("train", "train.jsonl")]
    assert executor.task_from_exec_properties(component.exec_properties) == task
    os.remove(tmp_path / "data" / "dev.jsonl")
    with pytest.raises(ValueError, match=re.escape(f"split 'eval' needs the file {tmp_path}/data/dev.jsonl")):
        GlueExampleGen(str(tmp_path), task)


# --- metrics --------------------------------------------------------------------------------------------


def test_macro_f1_and_f1_of_a_named_class_match_scikit_learn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    predictions[predictions == 3] = 2  # a class that is never predicted
    task = GlueTask.from_spec({**INTENTS, "metrics": ["macro_f1", "f1", "accuracy", "mcc"], "positive_label": "feature"})
    values = metrics.glue_metrics(task, labels, predictions)
    assert values["macro_f1"] == pytest.approx(f1_score(labels, predictions, average="macro"), abs=1e-12)
    assert values["f1"] == pytest.approx(f1_score(labels, predictions, labels=[2], average="macro"), abs=1e-12)


def test_the_evaluator_metric_config_carries_the_whole_task():
    task = GlueTask.from_spec({**INTENTS, "metrics": ["macro_f1", "accuracy"]})
    config = metrics.eval_config(task).metrics_specs[0].metrics[0]
    assert json.loads(config.config) == {"task": task.to_spec(), "metric": "macro_f1"}
    assert metrics.GlueMetric(**json.loads(config.config)).name == "macro_f1"


# --- command line and Kubeflow --------------------------------------------------------------------------


def test_run_refuses_a_bad_spec_before_any_work(tmp_path, capsys):
    from pipeline import run

    path = write_spec(tmp_path, {**INTENTS, "metrics": ["spearman"]})
    with pytest.raises(SystemExit, match=re.escape(f"error: {path}: field 'metrics'")):
        run.main(["--task_spec", path, "--output_dir", str(tmp_path / "out")])
    assert not os.path.exists(tmp_path / "out")
    with pytest.raises(SystemExit):
        run.parse_args(["--task", "rte", "--task_spec", path])
    assert "not allowed with argument" in capsys.readouterr().err


def test_kubeflow_pods_get_the_task_from_the_compiled_spec(tmp_path):
    from google.protobuf import json_format
    from tfx.proto import example_gen_pb2

    from kubeflow import runner

    path = write_spec(tmp_path, {**INTENTS, "files": {"train": "intents/train.jsonl", "eval": "gs://other/dev.jsonl"}})
    base = ["--image", "gcr.io/p/i:1", "--pipeline_root", "gs://b/root", "--serving_dir", "gs://b/serving",
            "--task_spec", path, "--model", "bert-base-uncased"]
    args, beam_args = runner.parse_args(base + ["--data_dir", "gs://b/data"])
    _, job = runner.compile_pipeline(args, beam_args)
    task = glue.load_task_spec(path, "gs://b/data")
    assert task.splits == {"train": "gs://b/data/intents/train.jsonl", "eval": "gs://other/dev.jsonl"}
    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]

    def constant(node: str, parameter: str) -> Any:
        return tasks[node]["inputs"]["parameters"][parameter]["runtimeValue"]["constant"]

    # The one description, whole, in every component that reads it: no pod needs the spec file.
    custom_config = json_format.Parse(constant("GlueExampleGen", "custom_config"), example_gen_pb2.CustomConfig())
    assert executor.task_from_exec_properties({"custom_config": json_format.MessageToJson(custom_config)}) == task
    assert constant("GlueExampleGen", "input_base") == "gs://"  # the deepest folder holding both files
    assert GlueTask.from_json(constant("GlueSchemaGen", "task_spec")) == task
    for node in ("Transform", "Trainer"):
        assert GlueTask.from_spec(json.loads(constant(node, "custom_config"))["task_spec"]) == task
    metric = json.loads(constant("Evaluator_eval", "eval_config"))["metrics_specs"][0]["metrics"][0]
    assert GlueTask.from_spec(json.loads(metric["config"])["task"]) == task
    assert str(tmp_path) not in json.dumps(job)
    with pytest.raises(SystemExit, match="intents/train.jsonl must be URIs the pods can reach"):
        runner.main(base + ["--output", str(tmp_path / "p.json")])


def test_readme_shows_the_example_spec_as_it_is():
    with open(EXAMPLE_SPEC) as spec, open(os.path.join(REPO_ROOT, "README.md")) as readme:
        assert spec.read() in readme.read()


def test_the_client_reads_label_names_from_the_model_or_the_task(tmp_path):
    from pipeline import predict

    path = write_spec(tmp_path, INTENTS)
    task = glue.load_task_spec(path)
    outputs = {"probabilities": [[0.1, 0.2, 0.3, 0.4]], "label": [3], "label_name": [b"4"]}
    assert predict.predictions_from_outputs(task, outputs)[0].label == "4"
    del outputs["label_name"]  # a model exported before label_name existed: the task's label values
    assert predict.predictions_from_outputs(task, outputs)[0].label == "4"
    assert predict.parse_args(["--model_name", "m", "--task_spec", path, "--sentence1", "hi"]).task_spec == path


def test_bundle_cli_reads_the_task_name_from_a_spec(tmp_path):
    from pipeline import bundle as cli

    path = write_spec(tmp_path, {**INTENTS, "labels": "regression"})
    with pytest.raises(SystemExit, match=re.escape(f"error: {path}: field 'metrics'")):
        cli.main(["--task_spec", path, "--metadata_path", str(tmp_path / "none.sqlite")])
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    from tfx.orchestration import metadata

    database = str(tmp_path / "metadata.sqlite")
    store = metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(database))
    store.put_context_type(metadata_store_pb2.ContextType(name="pipeline"))
    with pytest.raises(SystemExit, match="Pipeline adapter-bert-glue-intents has never run"):
        cli.main(["--task_spec", write_spec(tmp_path, INTENTS), "--metadata_path", database])
