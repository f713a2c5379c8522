"""One local pipeline run on a small MRPC sample with a tiny random BERT, shared by the end-to-end test modules.

    def test_x(tiny_mrpc_run):   # tests/conftest.py: session-scoped, made by the first test that asks for it
        tiny_mrpc_run.first.states, tiny_mrpc_run.pushed, tiny_mrpc_run.argv, ...

It is `python -m pipeline.run` in its own process, the way a user runs it, so that its whole console
(TensorFlow's C++ lines too) is seen. A tiny-BERT MRPC run costs 1-2 minutes on 2 shared cores, and three
modules need exactly this one: test_pipeline_e2e checks the run (and reruns the same command),
test_kubeflow_execution compares the model its compiled spec pushes with this run's, and test_reliability's
first run ("A") is this one. Tests read it and never change it: a test that needs to write next to it copies
what it writes to (test_reliability copies the serving directory); the one exception, test_pipeline_e2e's rerun
of the same command, adds a second run to the database and pushes nothing.
"""
import os
import random
import subprocess
import sys
import types
from typing import List, Tuple

from tiny_bert import write_tiny_bert

TASK = "mrpc"
MAX_SEQ_LENGTH = 32
TRAIN_ROWS, EVAL_ROWS, TEST_ROWS = 64, 32, 24
MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"
MRPC_TEST_HEADER = "index\t#1 ID\t#2 ID\t#1 String\t#2 String"
TYPO_BEAM_FLAG = "--direct_num_wokers=2"
# Under these the tiny model learns the task (dev accuracy 0.94 here; test_reliability wants 0.85), far above the
# constant predictor (F1 0.6667 on this dev set), so it is blessed.
TRAINING = ["--task", TASK, "--epochs", "10", "--batch_size", "16", "--learning_rate", "0.01",
            "--max_seq_length", str(MAX_SEQ_LENGTH), "--bottleneck_size", "16"]

# Words of tests/tiny_bert.py's vocabulary. Label 1: sentence1 is mostly about animals; label 0: about vehicles.
ANIMALS = ("dog", "horse", "bird", "fish", "animal")
VEHICLES = ("car", "boat", "plane", "ship", "machine")
FILLER = ("the", "a", "on", "under", "big", "small", "red", "blue", "green", "old", "new", "near")


def synthetic_sentence(rng: random.Random, topic: tuple) -> str:
    words = [rng.choice(topic) if rng.random() < 0.6 else rng.choice(FILLER) for _ in range(rng.randint(4, 9))]
    return " ".join(words) + " ."


def write_mrpc(data_dir: str, train_rows: int, eval_rows: int, shuffle_train_labels: bool, seed: int,
               test_rows: int = 0) -> str:
    """<data_dir>/MRPC/{train,dev}.tsv in the original format (BOM, header, label, two ids, two sentences); the
    label is learnable from sentence1's topic, so a tiny model learns it in a few steps (the release gate
    blesses only a model that beats the constant predictor). Deterministic; balanced labels.

    shuffle_train_labels: the training labels are permuted (the dev labels stay right), so a model trained on
    them is no better than chance on dev.
    test_rows: also a test.tsv of that many rows in GLUE's test format (index, two ids, two sentences; no label).
    """
    rng = random.Random(seed)
    os.makedirs(os.path.join(data_dir, "MRPC"), exist_ok=True)
    for file_name, count, shuffle in (("train.tsv", train_rows, shuffle_train_labels), ("dev.tsv", eval_rows, False)):
        rows = []
        for i in range(count):
            label = i % 2
            first = synthetic_sentence(rng, ANIMALS if label else VEHICLES)
            second = synthetic_sentence(rng, FILLER + ANIMALS + VEHICLES)
            rows.append([label, first, second])
        if shuffle:
            labels = [row[0] for row in rows]
            rng.shuffle(labels)
            for row, label in zip(rows, labels):
                row[0] = label
        lines = [MRPC_HEADER] + [f"{label}\t{1000 + 2 * i}\t{1001 + 2 * i}\t{a}\t{b}"
                                 for i, (label, a, b) in enumerate(rows)]
        with open(os.path.join(data_dir, "MRPC", file_name), "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(lines) + "\n")
    if test_rows:
        lines = [MRPC_TEST_HEADER] + [
            f"{i}\t{5000 + 2 * i}\t{5001 + 2 * i}\t{synthetic_sentence(rng, ANIMALS if i % 3 else VEHICLES)}\t"
            f"{synthetic_sentence(rng, FILLER + ANIMALS + VEHICLES)}" for i in range(test_rows)]
        with open(os.path.join(data_dir, "MRPC", "test.tsv"), "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(lines) + "\n")
    return data_dir


def run_cli(argv: List[str]) -> Tuple[str, str]:
    """`python -m pipeline.run argv` in a new process, as a user runs it: (stdout, stderr)."""
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-m", "pipeline.run", *argv], cwd=repo_root, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-5000:]
    return result.stdout, result.stderr


def first_run(root: str) -> types.SimpleNamespace:
    """Writes the tiny BERT and the MRPC sample under `root` and runs the pipeline on them once."""
    from pipeline.configs import PIPELINE_NAME
    from pipeline.pipeline import pipeline_name_for
    from pipeline.runs import pipeline_runs

    # initializer_range 0.2: outputs that depend on the input, so comparing two models' answers means something.
    model_dir = write_tiny_bert(os.path.join(root, "tiny_bert"), hidden_size=32, num_layers=2, initializer_range=0.2)
    data_dir = write_mrpc(os.path.join(root, "glue"), TRAIN_ROWS, EVAL_ROWS, shuffle_train_labels=False, seed=0,
                          test_rows=TEST_ROWS)
    serving_dir, metadata_path = os.path.join(root, "serving"), os.path.join(root, "metadata.sqlite")
    argv = [*TRAINING, "--model", model_dir, "--data_dir", data_dir, "--output_dir", os.path.join(root, "out"),
            "--serving_dir", serving_dir, "--metadata_path", metadata_path,
            "--", TYPO_BEAM_FLAG]  # a real warning for the console test; Beam ignores the flag
    summary, console = run_cli(argv)
    (first,) = pipeline_runs(metadata_path, pipeline_name_for(TASK, PIPELINE_NAME))
    return types.SimpleNamespace(
        model_dir=model_dir, data_dir=data_dir, serving_dir=serving_dir, metadata_path=metadata_path, argv=argv,
        summary=summary, console=console, first=first,
        pushed=first.output("PushedModel").custom_properties["pushed_destination"].string_value,
        predictions=first.output("InferenceResult").custom_properties["published_to"].string_value,
    )
