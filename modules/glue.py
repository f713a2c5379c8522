"""The task description every pipeline stage reads: files, columns, labels and metrics of one dataset.

A task is described by a task spec: a mapping of the fields below, written by users as a YAML file
(`load_task_spec`; JSON is valid YAML too) and serialized as JSON (`GlueTask.to_json`) into the
pipeline's component properties, so every stage (ExampleGen, schema, Transform, Trainer, Evaluator,
bundle) and every Kubeflow pod gets the same description without reading the spec file. The nine GLUE
tasks are nine built-in specs of the same kind (GLUE_SPECS), looked up by name with `get_task`.

Spec fields (README.md, "Bring your own data", has a full example):
  name          lower-case letters, digits and dashes, starting with a letter ("tickets"); names the
                pipeline, the serving directory and a bundle's signature. Not one of the GLUE names, nor
                "predict" (a bundle's generic signature).
  files         split -> file: "train" and "eval" (labeled) are required; more labeled splits are named
                "eval_<x>", unlabeled ones "test" or "test_<x>". Relative paths are resolved against
                --data_dir when given, else against the spec file's directory; gs:// and other URIs work.
  format        "tsv" (default: tab-separated, no quoting, like GLUE), "csv" (comma-separated, with
                double-quote quoting: fields may hold commas, tabs, quotes and line breaks) or "jsonl"
                (one JSON object per line; the column names below are its keys).
  columns       tsv/csv only: column names of the labeled files, which then have no header line.
                Without it, every labeled file's first line is its header.
  test_columns  the same for the unlabeled (test) files.
  text_a        the column of the (first) text.
  text_b        the column of the second text of a pair task; absent or null for single-text tasks.
  label         the label column.
  labels        the label values in class-id order (strings or numbers, any number >= 2), or
                "regression" for a real-valued score.
  metrics       evaluation metrics; the first decides blessing. Classification: accuracy, f1 (of the
                class positive_label), macro_f1 (unweighted mean of every class's F1; for more than two
                classes), mcc (Matthews correlation). Regression: pearson, spearman.
  positive_label  the class whose F1 "f1" reports (GLUE MRPC and QQP: "1"); required with f1.
  score_range   regression only, optional: [min, max] every score must lie in (checked before training).
  directory     the folder of the files under the data directory (GLUE: "MRPC"); default none.

Every task is read into the same example schema (see FEATURE_* below): two texts, a label (int class
id, or float score for regression) and the example's original index.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import posixpath
import re
from typing import Any, Dict, Mapping, Optional, Tuple

# The single tf.Example schema every task is converted to.
FEATURE_TEXT_A = "sentence1"
FEATURE_TEXT_B = "sentence2"  # empty string for single-sentence tasks
FEATURE_LABEL = "label"  # int64 class id, or float32 score (regression); absent in test splits
FEATURE_INDEX = "idx"  # the row's own "index"/"id" column where the file has one, else its 0-based row number

# Columns tried, in order, for FEATURE_INDEX.
INDEX_COLUMNS = ("index", "id")

FORMATS = ("tsv", "csv", "jsonl")
REGRESSION = "regression"
CLASSIFICATION_METRICS = ("accuracy", "f1", "macro_f1", "mcc")
REGRESSION_METRICS = ("pearson", "spearman")
_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
BUNDLE_GENERIC_SIGNATURE = "predict"  # a task name in a bundle is a signature name too: this one is taken
_SPLIT = re.compile(r"^(train|eval|eval_[a-z0-9_]+|test|test_[a-z0-9_]+)$")
_REQUIRED_FIELDS = ("name", "files", "text_a", "label", "labels", "metrics")
_OPTIONAL_FIELDS = ("format", "columns", "test_columns", "text_b", "positive_label", "score_range", "directory")


class TaskSpecError(ValueError):
    """A task spec that cannot describe a dataset; the message names the spec, the field and what was expected."""


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """How one task's data is stored and scored (a validated task spec; see the module docstring).

    Attributes:
      name: the lower-case name used on the command line and in artifacts ("mrpc").
      directory: the task's folder under the data directory ("MRPC"; "" when `splits` holds full paths).
      splits: split name -> file, relative to <data_dir>/<directory>, or an absolute path or URI. "train"/"eval*"
        splits carry labels; names starting with "test" are unlabeled.
      text_a, text_b: names of the text columns (text_b None: single-text task).
      label: name of the label column in labeled files.
      label_names: the label values as written in the files, in class-id order; empty for regression.
      metrics: metrics reported on eval, the first is the one that decides blessing.
      format: "tsv", "csv" or "jsonl".
      columns: column names of labeled files that have no header line (CoLA); None if the files have one.
      test_columns: the same for test files.
      positive_label: the class "f1" is computed for; None when the task has no f1 metric.
      score_range: (min, max) of a regression score, or None.
    """

    name: str
    directory: str
    splits: Dict[str, str]
    text_a: str
    text_b: Optional[str]
    label: str
    label_names: Tuple[str, ...]
    metrics: Tuple[str, ...]
    format: str = "tsv"
    columns: Optional[Tuple[str, ...]] = None
    test_columns: Optional[Tuple[str, ...]] = None
    positive_label: Optional[str] = None
    score_range: Optional[Tuple[float, float]] = None

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
        """"eval" (which decides blessing) first, then the other labeled eval_<x> splits."""
        return ("eval",) + tuple(s for s in self.splits if s.startswith("eval_"))

    @property
    def test_splits(self) -> Tuple[str, ...]:
        return tuple(s for s in self.splits if s.startswith("test"))

    @property
    def positive_class(self) -> int:
        """Class id of positive_label, the class "f1" scores."""
        if self.positive_label is None:
            raise ValueError(f"Task {self.name} names no positive_label, so it has no f1.")
        return self.label_names.index(self.positive_label)

    def split_path(self, split: str, data_dir: str) -> str:
        """The split's file: as given when absolute or a URI, else under <data_dir>/<directory>/."""
        file = self.splits[split]
        if is_absolute(file):
            return file
        relative = posixpath.normpath("/".join(part.rstrip("/") for part in (self.directory, file) if part))
        return "/".join(part.rstrip("/") for part in (data_dir, relative) if part)

    def to_spec(self) -> Dict[str, Any]:
        """The task as a spec mapping (JSON-serializable); `from_spec(to_spec())` gives the same task."""
        spec: Dict[str, Any] = {
            "name": self.name, "format": self.format, "files": dict(self.splits),
            "text_a": self.text_a, "text_b": self.text_b, "label": self.label,
            "labels": list(self.label_names) if self.label_names else REGRESSION, "metrics": list(self.metrics),
        }
        optional = {"directory": self.directory or None, "positive_label": self.positive_label,
                    "columns": self.columns, "test_columns": self.test_columns, "score_range": self.score_range}
        spec.update({key: list(value) if isinstance(value, tuple) else value
                     for key, value in optional.items() if value is not None})
        return spec

    def to_json(self) -> str:
        return json.dumps(self.to_spec(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "GlueTask":
        return cls.from_spec(json.loads(text), source="serialized task spec")

    @classmethod
    def from_spec(cls, spec: Any, source: str = "task spec") -> "GlueTask":
        """Validates a spec mapping; errors name `source`, the field and what was expected."""
        return _SpecReader(spec, source).task()


def is_absolute(path: str) -> bool:
    """An absolute local path, or a URI (gs://, s3://, hdfs://...)."""
    return "://" in path or os.path.isabs(path)


def label_text(value: Any) -> Optional[str]:
    """A label value as text ("1" for 1, "1.5" for 1.5), or None for what cannot be a label (bool, null, list...)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


class _SpecReader:
    """Checks one spec mapping field by field."""

    def __init__(self, spec: Any, source: str):
        self.source = source
        if not isinstance(spec, Mapping):
            self.fail(None, f"a mapping of fields ({', '.join(_REQUIRED_FIELDS)}, ...)", spec)
        self.spec = spec
        unknown = sorted(set(spec) - set(_REQUIRED_FIELDS) - set(_OPTIONAL_FIELDS))
        if unknown:
            raise TaskSpecError(f"{source}: unknown field {unknown[0]!r}; the fields are "
                                f"{', '.join(_REQUIRED_FIELDS + _OPTIONAL_FIELDS)}.")
        missing = [field for field in _REQUIRED_FIELDS if field not in spec]
        if missing:
            raise TaskSpecError(f"{source}: missing field {missing[0]!r} (required: {', '.join(_REQUIRED_FIELDS)}).")

    def fail(self, field: Optional[str], expected: str, got: Any) -> None:
        where = f"{self.source}: field {field!r}" if field else self.source
        raise TaskSpecError(f"{where}: expected {expected}, got {got!r}.")

    def string(self, field: str, optional: bool = False) -> Optional[str]:
        value = self.spec.get(field)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            self.fail(field, "a non-empty string", value)
        return value

    def columns(self, field: str, file_format: str) -> Optional[Tuple[str, ...]]:
        value = self.spec.get(field)
        if value is None:
            return None
        if file_format == "jsonl":
            self.fail(field, "no column names for format 'jsonl' (its records name their fields)", value)
        if (not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value)
                or len(set(value)) != len(value)):
            self.fail(field, "a list of distinct, non-empty column names", value)
        return tuple(value)

    def task(self) -> GlueTask:
        name = self.string("name")
        if not _NAME.match(name):
            self.fail("name", "lower-case letters, digits and dashes, starting with a letter", name)
        if name == BUNDLE_GENERIC_SIGNATURE:
            self.fail("name", f"another name: a multi-task bundle serves every task under {name!r}", name)
        file_format = self.spec.get("format", "tsv")
        if file_format not in FORMATS:
            self.fail("format", f"one of {', '.join(FORMATS)}", file_format)
        files = self.spec["files"]
        if not isinstance(files, Mapping) or not all(isinstance(f, str) and f for f in files.values()):
            self.fail("files", "a mapping of split name to file path (train: ..., eval: ...)", files)
        for split in files:
            if not isinstance(split, str) or not _SPLIT.match(split):
                self.fail("files", "split names train, eval, eval_<name>, test or test_<name>", split)
        for split in ("train", "eval"):
            if split not in files:
                self.fail("files", f"a {split!r} file", dict(files))
        text_a, text_b, label = self.string("text_a"), self.string("text_b", optional=True), self.string("label")
        columns = self.columns("columns", file_format)
        test_columns = self.columns("test_columns", file_format)
        for field, column in (("text_a", text_a), ("text_b", text_b), ("label", label)):
            if column is not None and columns is not None and column not in columns:
                self.fail(field, f"one of the columns {list(columns)}", column)
            if column is not None and field != "label" and test_columns is not None and column not in test_columns:
                self.fail(field, f"one of the test_columns {list(test_columns)}", column)
        label_names = self.labels()
        metrics = self.metrics(label_names)
        positive_label = self.positive_label(label_names, metrics)
        return GlueTask(
            name=name, directory=self.spec.get("directory") or "", splits=dict(files), text_a=text_a, text_b=text_b,
            label=label, label_names=label_names, metrics=metrics, format=file_format, columns=columns,
            test_columns=test_columns, positive_label=positive_label, score_range=self.score_range(label_names),
        )

    def labels(self) -> Tuple[str, ...]:
        value = self.spec["labels"]
        if value == REGRESSION:
            return ()
        names = [label_text(v) for v in value] if isinstance(value, list) else []
        if len(names) < 2 or None in names or len(set(names)) != len(names):
            self.fail("labels", f"{REGRESSION!r} or a list of at least two distinct label values (strings or numbers)",
                      value)
        return tuple(names)

    def metrics(self, label_names: Tuple[str, ...]) -> Tuple[str, ...]:
        value = self.spec["metrics"]
        allowed = CLASSIFICATION_METRICS if label_names else REGRESSION_METRICS
        kind = "a classification" if label_names else "a regression"
        if not isinstance(value, list) or not value or len(set(map(str, value))) != len(value):
            self.fail("metrics", f"a non-empty list of distinct metrics of {kind} task ({', '.join(allowed)})", value)
        for metric in value:
            if metric not in allowed:
                self.fail("metrics", f"metrics of {kind} task: {', '.join(allowed)}", metric)
        return tuple(value)

    def positive_label(self, label_names: Tuple[str, ...], metrics: Tuple[str, ...]) -> Optional[str]:
        value = self.spec.get("positive_label")
        if value is None:
            if "f1" in metrics:
                self.fail("positive_label", "the label whose F1 the metric 'f1' reports (one of the labels)", value)
            return None
        text = label_text(value)
        if text not in label_names:
            self.fail("positive_label", f"one of the labels {list(label_names)}", value)
        return text

    def score_range(self, label_names: Tuple[str, ...]) -> Optional[Tuple[float, float]]:
        value = self.spec.get("score_range")
        if value is None:
            return None
        if label_names:
            self.fail("score_range", f"no score_range for a classification task (labels: {REGRESSION!r} has one)", value)
        numbers = isinstance(value, list) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        if not numbers or not value[0] < value[1]:
            self.fail("score_range", "[min, max], two finite numbers with min < max", value)
        return float(value[0]), float(value[1])


_GLUE_FILES = {"train": "train.tsv", "eval": "dev.tsv", "test": "test.tsv"}
_BINARY = ["0", "1"]
_ENTAILMENT = ["entailment", "not_entailment"]

# The nine GLUE tasks, as task specs in the original GLUE layout (<data_dir>/<directory>/<file>).
GLUE_SPECS: Tuple[Dict[str, Any], ...] = (
    {"name": "cola", "directory": "CoLA", "files": _GLUE_FILES, "text_a": "sentence", "label": "label",
     "labels": _BINARY, "metrics": ["mcc", "accuracy"],
     "columns": ["source", "label", "original_label", "sentence"]},  # labeled files have no header line
    {"name": "sst2", "directory": "SST-2", "files": _GLUE_FILES, "text_a": "sentence", "label": "label",
     "labels": _BINARY, "metrics": ["accuracy"]},
    {"name": "mrpc", "directory": "MRPC", "files": _GLUE_FILES, "text_a": "#1 String", "text_b": "#2 String",
     "label": "Quality", "labels": _BINARY, "metrics": ["f1", "accuracy"], "positive_label": "1"},
    {"name": "stsb", "directory": "STS-B", "files": _GLUE_FILES, "text_a": "sentence1", "text_b": "sentence2",
     "label": "score", "labels": REGRESSION, "metrics": ["spearman", "pearson"], "score_range": [0.0, 5.0]},
    {"name": "qqp", "directory": "QQP", "files": _GLUE_FILES, "text_a": "question1", "text_b": "question2",
     "label": "is_duplicate", "labels": _BINARY, "metrics": ["f1", "accuracy"], "positive_label": "1"},
    {"name": "mnli", "directory": "MNLI",
     "files": {"train": "train.tsv", "eval": "dev_matched.tsv", "eval_mismatched": "dev_mismatched.tsv",
               "test": "test_matched.tsv", "test_mismatched": "test_mismatched.tsv",
               "test_ax": "../diagnostic/diagnostic.tsv"},  # GLUE's diagnostic set, scored by the MNLI model
     "text_a": "sentence1", "text_b": "sentence2", "label": "gold_label",
     "labels": ["contradiction", "entailment", "neutral"], "metrics": ["accuracy"]},
    {"name": "qnli", "directory": "QNLI", "files": _GLUE_FILES, "text_a": "question", "text_b": "sentence",
     "label": "label", "labels": _ENTAILMENT, "metrics": ["accuracy"]},
    {"name": "rte", "directory": "RTE", "files": _GLUE_FILES, "text_a": "sentence1", "text_b": "sentence2",
     "label": "label", "labels": _ENTAILMENT, "metrics": ["accuracy"]},
    {"name": "wnli", "directory": "WNLI", "files": _GLUE_FILES, "text_a": "sentence1", "text_b": "sentence2",
     "label": "label", "labels": _BINARY, "metrics": ["accuracy"]},
)

# The GLUE server's file name for each test split's predictions; every other split is "<directory>.tsv".
_SUBMISSION_FILES = {("mnli", "test"): "MNLI-m.tsv", ("mnli", "test_mismatched"): "MNLI-mm.tsv",
                     ("mnli", "test_ax"): "AX.tsv"}

TASKS: Dict[str, GlueTask] = {
    spec["name"]: GlueTask.from_spec(spec, source=f"built-in task {spec['name']}") for spec in GLUE_SPECS
}


def canonical_name(name: str) -> str:
    """A task's name as stored: GLUE names in any spelling ("SST-2" -> "sst2"), others in lower case (spec names
    are lower-case)."""
    key = name.lower().replace("-", "")
    return key if key in TASKS else name.lower()


def get_task(name: str) -> GlueTask:
    """Looks a GLUE task up by its name, case- and dash-insensitively ("SST-2" -> "sst2")."""
    key = canonical_name(name)
    if key not in TASKS:
        raise ValueError(f"Unknown GLUE task {name!r}: expected one of {', '.join(TASKS)} "
                         "(or describe your own dataset in a task spec file: --task_spec).")
    return TASKS[key]


def submission_file(task: GlueTask, split: str) -> Optional[str]:
    """The file the GLUE server expects a test split's predictions in ("MRPC.tsv"); None for a user's task."""
    if task.name not in TASKS or split not in task.test_splits:
        return None
    return _SUBMISSION_FILES.get((task.name, split), f"{task.directory}.tsv")


def load_task_spec(path: str, data_dir: Optional[str] = None) -> GlueTask:
    """Reads and validates a YAML (or JSON) task spec file; relative file paths become absolute ones.

    Relative paths are resolved against `data_dir` when given, else against the spec file's directory,
    so the returned task (and its JSON) names every file completely.
    """
    import yaml  # here only: serving clients import this module without needing PyYAML

    try:
        with open(path, encoding="utf-8") as f:
            spec = yaml.safe_load(f)
    except OSError as e:
        raise TaskSpecError(f"Cannot read the task spec {path}: {e.strerror}.") from None
    except yaml.YAMLError as e:
        raise TaskSpecError(f"{path} is not valid YAML: {e}") from None
    task = GlueTask.from_spec(spec, source=path)
    if task.name in TASKS:
        raise TaskSpecError(f"{path}: field 'name': {task.name!r} is a built-in GLUE task (use --task {task.name}); "
                            "give your dataset another name.")
    base = data_dir if data_dir is not None else os.path.dirname(os.path.abspath(path))
    if not is_absolute(base):
        base = os.path.abspath(base)
    files = {split: task.split_path(split, base) for split in task.splits}
    return dataclasses.replace(task, splits=files, directory="")


def task_from_config(config: Mapping[str, Any]) -> GlueTask:
    """The task of a Transform/Trainer custom_config: its serialized "task_spec", or the GLUE task named "task"."""
    if config.get("task_spec"):
        return GlueTask.from_spec(config["task_spec"], source="custom_config task_spec")
    return get_task(config["task"])
