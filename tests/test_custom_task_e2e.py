"""Bring your own data, end to end: two user datasets described by task spec files, each through the whole
local pipeline (`python -m pipeline.run --task_spec`, as a user runs it) with a tiny random BERT:
  - "intents": 4 classes, JSON Lines, one text, string labels, macro-F1 deciding blessing;
  - "pairs": a sentence-pair task in CSV whose quoted fields hold tabs, commas, doubled quotes and line
    breaks, numeric labels, F1 of the class 1.
Each also has an unlabelled test file (ids out of order in JSON Lines; CSV rows without an id column, whose row
numbers are their ids), whose predictions the pipeline publishes in the input's own format.
One run per dataset (64 train / 32 eval rows, 10 epochs of a few steps), both started together by one
module-scoped fixture that every test reads. Every text carries its own ticket number, so no eval example
repeats a training one (the TrainabilityGate refuses leaked eval sets), and the label is learnable from a
keyword, so the model beats the constant predictor (the release gate). Every component completed, the Evaluator
reports the spec's metrics, the model is pushed to <serving_dir>/<name>/<version>/, the examples hold the texts
byte for byte, and the pushed model's signatures return label names with the class ids.
"""
import csv
import json
import os
import random
import subprocess
import sys
import types
from typing import Any, Dict, List

import numpy as np
import pytest
import tensorflow as tf
import yaml

from tiny_bert import write_tiny_bert

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TIMEOUT = 3600  # a hung run still ends; two side by side on an overloaded 2-core machine passed 15 min
TRAIN_ROWS, EVAL_ROWS, TEST_ROWS = 64, 32, 12
INTENT_WORDS = {
    "billing": ["invoice", "refund", "charge", "payment"],
    "bug": ["crash", "error", "broken", "freeze"],
    "feature": ["please add", "would like", "wish", "idea"],
    "praise": ["great", "love", "thank you", "good"],
}
CSV_SPECIALS = ['a "quoted" word', "tab\there", "comma, inside", "two\nlines"]


def intents_dataset(directory: str) -> str:
    """train.jsonl / dev.jsonl of the 4-class intents task and its spec; returns the spec path."""
    rng = random.Random(0)
    names = list(INTENT_WORDS)
    for file_name, count, first_ticket in (("train.jsonl", TRAIN_ROWS, 1000), ("dev.jsonl", EVAL_ROWS, 2000)):
        with open(os.path.join(directory, file_name), "w", encoding="utf-8") as f:
            for i in range(count):
                intent = names[i % len(names)]
                text = (f"the {rng.choice(['app', 'site', 'account'])} {rng.choice(INTENT_WORDS[intent])} today, "
                        f"ticket {first_ticket + i}")
                f.write(json.dumps({"id": 100 + i, "text": text, "intent": intent}) + "\n")
    with open(os.path.join(directory, "test.jsonl"), "w", encoding="utf-8") as f:
        for i in range(TEST_ROWS):  # ids in a file order that is not theirs
            intent = names[i % len(names)]
            f.write(json.dumps({"id": 900 - 7 * (i % 3) - i, "text": f"the app {INTENT_WORDS[intent][0]} ticket {3000 + i}"})
                    + "\n")
    spec = {"name": "intents", "format": "jsonl",
            "files": {"train": "train.jsonl", "eval": "dev.jsonl", "test": "test.jsonl"},
            "text_a": "text", "label": "intent", "labels": names, "metrics": ["macro_f1", "accuracy", "mcc"]}
    path = os.path.join(directory, "intents.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(spec, f)
    return path


def pairs_rows(count: int, rng: random.Random, first_ticket: int) -> List[List[Any]]:
    rows = []
    for i in range(count):
        question = f"is the {rng.choice(['river', 'city', 'house'])} {CSV_SPECIALS[i % 4]} cold, ticket {first_ticket + i}"
        match = i % 2
        answer = question.replace("is the", "the") + " is" if match else f"the {rng.choice(['dog', 'king'])} left"
        rows.append([question, answer, match])
    return rows


def pairs_dataset(directory: str) -> str:
    """data/train.csv, data/dev.csv of the pair task (header, quoted fields) and its spec; returns the spec path."""
    rng = random.Random(1)
    os.makedirs(os.path.join(directory, "data"))
    for file_name, count, first_ticket in (("train.csv", TRAIN_ROWS, 1000), ("dev.csv", EVAL_ROWS, 2000)):
        with open(os.path.join(directory, "data", file_name), "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)  # every text quoted, labels bare numbers
            writer.writerow(["question", "answer", "match"])
            writer.writerows(pairs_rows(count, rng, first_ticket))
    with open(os.path.join(directory, "data", "test.csv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow(["question", "answer"])
        writer.writerows(row[:2] for row in pairs_rows(TEST_ROWS, rng, 3000))
    path = os.path.join(directory, "pairs.yaml")
    with open(path, "w") as f:
        f.write("name: pairs\nformat: csv\nfiles: {train: data/train.csv, eval: data/dev.csv, test: data/test.csv}\n"
                "text_a: question\ntext_b: answer\nlabel: match\nlabels: [0, 1]\nmetrics: [f1, accuracy]\n"
                "positive_label: 1\n")
    return path


def start_pipeline(root, spec_path: str, model_dir: str) -> subprocess.Popen:
    """`python -m pipeline.run --task_spec spec_path ...` in a new process: its summary (stdout) in
    <root>/summary.txt, the rest of its console in <root>/console.log."""
    argv = ["--task_spec", spec_path, "--model", model_dir, "--output_dir", str(root / "out"),
            "--serving_dir", str(root / "serving"), "--metadata_path", str(root / "metadata.sqlite"), "--epochs", "10",
            "--learning_rate", "0.01", "--batch_size", "16", "--max_seq_length", "32", "--bottleneck_size", "16",
            "--no_baseline"]
    with open(root / "summary.txt", "w") as summary, open(root / "console.log", "w") as console:
        return subprocess.Popen([sys.executable, "-m", "pipeline.run", *argv], cwd=REPO_ROOT, stdout=summary,
                                stderr=console)


def finished_run(root, spec_path: str, process: subprocess.Popen) -> types.SimpleNamespace:
    from modules.glue import load_task_spec
    from pipeline.configs import PIPELINE_NAME
    from pipeline.pipeline import pipeline_name_for
    from pipeline.runs import pipeline_runs

    process.wait(RUN_TIMEOUT)
    with open(root / "console.log") as console:
        assert process.returncode == 0, console.read()[-5000:]
    with open(root / "summary.txt") as summary:
        printed = summary.read()
    task = load_task_spec(spec_path)
    (last,) = pipeline_runs(str(root / "metadata.sqlite"), pipeline_name_for(task.name, PIPELINE_NAME))
    return types.SimpleNamespace(task=task, run=last, summary=printed, serving_dir=str(root / "serving"),
                                 spec_path=spec_path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert", hidden_size=32, num_layers=2, initializer_range=0.2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_dir) -> Dict[str, types.SimpleNamespace]:
    """Both datasets' runs, started together (two independent processes share the two cores better than one
    after the other)."""
    roots = {name: tmp_path_factory.mktemp(name) for name in ("intents", "pairs")}
    specs = {"intents": intents_dataset(str(roots["intents"])), "pairs": pairs_dataset(str(roots["pairs"]))}
    processes = {name: start_pipeline(roots[name], specs[name], model_dir) for name in roots}
    try:
        return {name: finished_run(roots[name], specs[name], processes[name]) for name in roots}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def intents(runs) -> types.SimpleNamespace:
    return runs["intents"]


@pytest.fixture(scope="module")
def pairs(runs) -> types.SimpleNamespace:
    return runs["pairs"]


@pytest.fixture(params=["intents", "pairs"])
def result(request) -> types.SimpleNamespace:
    return request.getfixturevalue(request.param)


def examples_of(run, split: str) -> List[tf.train.Example]:
    """The ExampleGen's examples of a split (Transform's output is an Examples artifact too)."""
    (uri,) = [a.uri for a in run.outputs["Examples"] if "/GlueExampleGen/" in a.uri]
    files = tf.io.gfile.glob(os.path.join(uri, f"Split-{split}", "*.gz"))
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def load_pushed(result: types.SimpleNamespace) -> Any:
    import tensorflow_text  # noqa: F401  (the Transform graph's tokenizer ops)

    pushed = result.run.output("PushedModel").custom_properties["pushed_destination"].string_value
    assert os.path.dirname(pushed.rstrip("/")) == os.path.join(result.serving_dir, result.task.name)
    return tf.saved_model.load(pushed)


def test_every_component_completed_and_the_model_was_pushed(result):
    assert set(result.run.states.values()) == {"COMPLETE"}
    assert {"GlueExampleGen", "GlueSchemaGen", "Transform", "Trainer", "Evaluator_eval", "Pusher"} <= set(result.run.states)
    assert result.run.output("ModelBlessing").custom_properties["blessed"].int_value == 1
    assert f"task:      {result.task.name}" in result.summary


def test_evaluator_reports_the_spec_metrics_on_the_whole_eval_file(result):
    from modules.metrics import overall_metrics

    values = overall_metrics(result.run.output("ModelEvaluation").uri)
    assert set(values) == {*result.task.metrics, "example_count"}
    assert values["example_count"] == EVAL_ROWS
    assert all(-1.0 <= values[m] <= 1.0 for m in result.task.metrics)


def test_json_lines_records_become_examples_with_their_ids_and_class_ids(intents):
    examples = examples_of(intents.run, "train")
    by_id = {e.features.feature["idx"].int64_list.value[0]: e for e in examples}
    assert sorted(by_id) == list(range(100, 100 + TRAIN_ROWS))
    labels = [by_id[100 + i].features.feature["label"].int64_list.value[0] for i in range(4)]
    assert labels == [0, 1, 2, 3]  # the spec's class order: billing, bug, feature, praise


def test_csv_quoted_fields_arrive_byte_for_byte(pairs):
    expected = sorted((a, b, str(match)) for a, b, match in pairs_rows(TRAIN_ROWS, random.Random(1), 1000))
    got = sorted((e.features.feature["sentence1"].bytes_list.value[0].decode(),
                  e.features.feature["sentence2"].bytes_list.value[0].decode(),
                  str(e.features.feature["label"].int64_list.value[0])) for e in examples_of(pairs.run, "train"))
    assert got == expected
    assert any("\t" in a for a, _, _ in got) and any('"' in a for a, _, _ in got) and any("\n" in a for a, _, _ in got)


def published_predictions(result) -> str:
    path = result.run.output("InferenceResult").custom_properties["published_to"].string_value
    pushed = result.run.output("PushedModel").custom_properties["pushed_version"].string_value
    assert path == os.path.join(os.path.dirname(result.serving_dir), "predictions", result.task.name, pushed)
    return path


def test_json_lines_test_predictions_keep_their_ids_and_answer_like_the_pushed_model(intents):
    with open(os.path.join(published_predictions(intents), "test.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["id"] for r in records] == sorted(900 - 7 * (i % 3) - i for i in range(TEST_ROWS))
    with open(os.path.join(os.path.dirname(intents.spec_path), "test.jsonl")) as f:
        texts = {r["id"]: r["text"] for r in map(json.loads, f)}
    answers = load_pushed(intents).signatures["predict_text"](sentence1=tf.constant([texts[r["id"]] for r in records]))
    assert [r["label_name"] for r in records] == [n.decode() for n in answers["label_name"].numpy()]
    assert [r["label"] for r in records] == answers["label"].numpy().tolist()
    probabilities = [[r[f"probability_{name}"] for name in intents.task.label_names] for r in records]
    np.testing.assert_allclose(probabilities, answers["probabilities"].numpy(), atol=1e-6)


def test_csv_test_predictions_number_the_rows_of_a_file_without_ids(pairs):
    with open(os.path.join(published_predictions(pairs), "test.csv"), newline="") as f:
        records = list(csv.DictReader(f))
    assert list(records[0]) == ["id", "label_name", "label", "probability_0", "probability_1"]
    assert [int(r["id"]) for r in records] == list(range(TEST_ROWS))
    assert all(r["label_name"] in ("0", "1") and r["label_name"] == r["label"] for r in records)


def test_signatures_return_label_names_with_class_ids(result):
    model = load_pushed(result)
    task = result.task
    if task.text_b is None:
        text = model.signatures["predict_text"](sentence1=tf.constant(["the app crash today", "love it"]))
        feature = {"sentence1": b"refund please"}
    else:
        text = model.signatures["predict_text"](sentence1=tf.constant(["a, \"b\"\tc", "x"]), sentence2=tf.constant(["d", "e"]))
        feature = {"sentence1": b"q", "sentence2": b"a"}
    example = tf.train.Example(features=tf.train.Features(feature={
        k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v])) for k, v in feature.items()}))
    served = model.signatures["serving_default"](examples=tf.constant([example.SerializeToString()]))
    for outputs in (text, served):
        names = [n.decode() for n in outputs["label_name"].numpy()]
        assert names == [task.label_names[i] for i in outputs["label"].numpy()]
        assert outputs["probabilities"].shape[1] == task.num_labels


def test_a_bundle_serves_the_custom_task_by_name_with_its_label_names(intents, model_dir, tmp_path):
    import tensorflow_text  # noqa: F401

    from components import adapter_bundle

    result = adapter_bundle.create_bundle([adapter_bundle.AdapterSource(intents.run.output("Model").uri)],
                                          str(tmp_path / "bundles"), model=model_dir)
    bundle = tf.saved_model.load(result.path)
    sentences = tf.constant(["the site refund today", "great"])
    own = bundle.signatures["intents"](sentence1=sentences)
    generic = bundle.signatures["predict"](task=tf.constant("intents"), sentence1=sentences, sentence2=tf.constant(["", ""]))
    single = load_pushed(intents).signatures["predict_text"](sentence1=sentences)
    for outputs in (own, generic):
        assert outputs["label_name"].numpy().tolist() == single["label_name"].numpy().tolist()
        assert outputs["label"].numpy().tolist() == single["label"].numpy().tolist()
