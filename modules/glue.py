"""The one table of GLUE tasks: files, columns, labels and metrics, used by every pipeline stage.

Every task is read into the same example schema (see FEATURE_* below): two sentences, a label
(int class id, or float score for the regression task STS-B) and the example's original index.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

# The single tf.Example schema every task is converted to.
FEATURE_TEXT_A = "sentence1"
FEATURE_TEXT_B = "sentence2"  # empty string for single-sentence tasks
FEATURE_LABEL = "label"  # int64 class id, or float32 score (regression); absent in test splits
FEATURE_INDEX = "idx"  # the row's own "index"/"id" column where the file has one, else its 0-based row number

# Columns tried, in order, for FEATURE_INDEX.
INDEX_COLUMNS = ("index", "id")


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """How one GLUE task is stored on disk and scored.

    Attributes:
      name: the lower-case name used on the command line and in artifacts ("mrpc").
      directory: the task's folder in the standard GLUE layout ("MRPC").
      splits: split name -> file name in the task folder. "train"/"eval" splits carry labels; names
        starting with "test" are unlabeled.
      text_a, text_b: header names of the sentence columns (text_b None: single-sentence task).
      label: header name of the label column in labeled files.
      label_names: the label strings as written in the files, in class-id order; empty for regression.
      header: column names for labeled files that have no header line (CoLA); None if the files have one.
      metrics: GLUE metrics reported on eval, the first is the one that decides blessing.
    """

    name: str
    directory: str
    splits: Dict[str, str]
    text_a: str
    text_b: Optional[str]
    label: str
    label_names: Tuple[str, ...]
    metrics: Tuple[str, ...]
    header: Optional[Tuple[str, ...]] = None

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        """Width of the model's output: number of classes, or 1 for a regression score."""
        return len(self.label_names) or 1

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    @property
    def eval_splits(self) -> Tuple[str, ...]:
        return tuple(s for s in self.splits if s.startswith("eval"))

    @property
    def test_splits(self) -> Tuple[str, ...]:
        return tuple(s for s in self.splits if s.startswith("test"))


_STANDARD_SPLITS = {"train": "train.tsv", "eval": "dev.tsv", "test": "test.tsv"}
_BINARY = ("0", "1")
_ENTAILMENT = ("entailment", "not_entailment")

TASKS: Dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask(
            name="cola", directory="CoLA", splits=_STANDARD_SPLITS, text_a="sentence", text_b=None,
            label="label", label_names=_BINARY, metrics=("mcc", "accuracy"),
            header=("source", "label", "original_label", "sentence"),
        ),
        GlueTask(
            name="sst2", directory="SST-2", splits=_STANDARD_SPLITS, text_a="sentence", text_b=None,
            label="label", label_names=_BINARY, metrics=("accuracy",),
        ),
        GlueTask(
            name="mrpc", directory="MRPC", splits=_STANDARD_SPLITS, text_a="#1 String", text_b="#2 String",
            label="Quality", label_names=_BINARY, metrics=("f1", "accuracy"),
        ),
        GlueTask(
            name="stsb", directory="STS-B", splits=_STANDARD_SPLITS, text_a="sentence1", text_b="sentence2",
            label="score", label_names=(), metrics=("spearman", "pearson"),
        ),
        GlueTask(
            name="qqp", directory="QQP", splits=_STANDARD_SPLITS, text_a="question1", text_b="question2",
            label="is_duplicate", label_names=_BINARY, metrics=("f1", "accuracy"),
        ),
        GlueTask(
            name="mnli", directory="MNLI",
            splits={
                "train": "train.tsv",
                "eval": "dev_matched.tsv",
                "eval_mismatched": "dev_mismatched.tsv",
                "test": "test_matched.tsv",
                "test_mismatched": "test_mismatched.tsv",
            },
            text_a="sentence1", text_b="sentence2", label="gold_label",
            label_names=("contradiction", "entailment", "neutral"), metrics=("accuracy",),
        ),
        GlueTask(
            name="qnli", directory="QNLI", splits=_STANDARD_SPLITS, text_a="question", text_b="sentence",
            label="label", label_names=_ENTAILMENT, metrics=("accuracy",),
        ),
        GlueTask(
            name="rte", directory="RTE", splits=_STANDARD_SPLITS, text_a="sentence1", text_b="sentence2",
            label="label", label_names=_ENTAILMENT, metrics=("accuracy",),
        ),
        GlueTask(
            name="wnli", directory="WNLI", splits=_STANDARD_SPLITS, text_a="sentence1", text_b="sentence2",
            label="label", label_names=_BINARY, metrics=("accuracy",),
        ),
    )
}


def get_task(name: str) -> GlueTask:
    """Looks a task up by its name, case- and dash-insensitively ("SST-2" -> "sst2")."""
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"Unknown GLUE task {name!r}: expected one of {', '.join(TASKS)}.")
    return TASKS[key]
