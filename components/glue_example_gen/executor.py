"""Beam executor of GlueExampleGen: reads one data file per split of a task (GLUE or a user's task spec)
into tf.train.Examples.

Every task is converted to the schema of modules/glue.py (FEATURE_TEXT_A, FEATURE_TEXT_B, FEATURE_LABEL,
FEATURE_INDEX); which columns hold what comes from the task description, found by column name.

Parsing, by the task's format:
  - tsv (every GLUE file): lines are split on "\\n" and fields on "\\t" only, with no quoting, so quotes in
    sentences survive byte for byte;
  - csv: Python's csv module (comma, double-quote quoting): a quoted field may hold commas, tabs, doubled
    quotes and line breaks; a row's line number is the line it starts on;
  - jsonl: one JSON object per line; text fields must be strings, labels strings or numbers.
Text is kept exactly as written (no stripping). A UTF-8 byte-order mark before the first line (MRPC) and
a "\\r" before "\\n" (files edited on Windows) are dropped; blank lines are not rows. TSV and CSV files
start with a header line unless the task gives their `columns` (CoLA's labeled files).

Bad-data policy. A problem inside a file is a ValueError naming the file, the 1-based line number
and what was expected; a missing file is one naming its path. The executor raises, and TFX publishes
no artifact for a failed execution.
  - missing file, unknown task: fail (the component also checks files when the pipeline is built).
  - header without a column the task needs (sentence, label): fail; it is the wrong file or task.
    (JSON Lines have no header: a record without a needed field is a malformed row.)
  - invalid UTF-8: fail; a wrong encoding affects a whole file, skipping rows would hide it.
  - unknown label, score that is not a finite number, "index"/"id" that is not an integer: fail;
    they mean the file does not match the task description, and skipping would bias the labels.
  - malformed row: wrong number of columns, or an empty (blank) sentence, which is what a stray tab
    or line break inside a sentence produces; in JSON Lines also a line that is not a JSON object, a
    missing field or a text that is not a string. Skipped with a warning naming file:line, but only
    while such rows are at most MAX_MALFORMED_FRACTION (0.1%) of the file's rows (real QQP
    train.tsv has a handful); beyond that: fail, listing the first ones. Skipped rows keep their
    row number, so FEATURE_INDEX of the other rows does not shift. A test (unlabeled) file is never
    thinned: every test row must get its prediction, so one malformed row fails it.
  - no data rows at all: fail; an empty split would only fail later, far from its cause.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Dict, Iterator, List, Sequence, Tuple, Union

import apache_beam as beam
import tensorflow as tf
from absl import logging
from google.protobuf import struct_pb2
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.proto import example_gen_pb2
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from modules.glue import (
    FEATURE_INDEX,
    FEATURE_LABEL,
    FEATURE_TEXT_A,
    FEATURE_TEXT_B,
    INDEX_COLUMNS,
    GlueTask,
    label_text,
)

# Key of the task description (JSON, GlueTask.to_json) in the Struct packed into the component's custom_config.
TASK_KEY = "task"

# Largest share of a file's rows that may be skipped as malformed (0.1%).
MAX_MALFORMED_FRACTION = 0.001

# How many malformed rows an error message lists.
_MAX_LISTED = 5

_BOM = "\ufeff"


def is_labeled(task: GlueTask, split: str) -> bool:
    """Test splits carry no label column; every other split (train, eval*) must have one."""
    return split not in task.test_splits


def make_custom_config(task: GlueTask) -> example_gen_pb2.CustomConfig:
    """Packs the task description, as JSON, for the executor (CustomConfig holds an Any; a Struct needs no
    own proto)."""
    config = example_gen_pb2.CustomConfig()
    config.custom_config.Pack(struct_pb2.Struct(fields={TASK_KEY: struct_pb2.Value(string_value=task.to_json())}))
    return config


def task_from_exec_properties(exec_properties: Dict[str, Any]) -> GlueTask:
    """The task description written into custom_config by GlueExampleGen."""
    config = example_gen_pb2.CustomConfig()
    proto_utils.json_to_proto(exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or "{}", config)
    fields = struct_pb2.Struct()
    if not config.custom_config.Unpack(fields) or TASK_KEY not in fields:
        raise ValueError(f"custom_config holds no task (expected a Struct with key {TASK_KEY!r}).")
    return GlueTask.from_json(fields[TASK_KEY])


def _bytes_feature(text: str) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode("utf-8")]))


def _int_feature(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def _label_feature(task: GlueTask, value: Any, where: str) -> tf.train.Feature:
    """Class id (index in task.label_names) or, for regression, the float score. JSON numbers are matched as
    text: 3 is the label "3"."""
    if task.is_regression:
        try:
            score = math.nan if isinstance(value, bool) else float(value)
        except (TypeError, ValueError):
            score = math.nan
        if not math.isfinite(score):
            raise ValueError(f"{where}: {task.label} {value!r} is not a finite number (task {task.name} is scored).")
        return tf.train.Feature(float_list=tf.train.FloatList(value=[score]))
    if label_text(value) not in task.label_names:
        raise ValueError(
            f"{where}: unknown label {value!r} in column {task.label!r}; "
            f"task {task.name} expects one of {', '.join(repr(n) for n in task.label_names)}."
        )
    return _int_feature(task.label_names.index(label_text(value)))


def _decode(raw: bytes, where: str) -> str:
    """One line without its line ending, as text; invalid UTF-8 is an error at this line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{where}: invalid UTF-8 at byte {error.start + 1} of the line; data files must be UTF-8."
        ) from None
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    return line


def _require_column(columns: Sequence[str], name: str, where: str, task: GlueTask) -> None:
    if name not in columns:
        raise ValueError(
            f"{where}: header has no column {name!r} (columns: {', '.join(columns)}); "
            f"is this a {task.directory + ' ' if task.directory else ''}file of task {task.name}?"
        )


def _lines(f: tf.io.gfile.GFile, path: str) -> Iterator[Tuple[str, str]]:
    """(where, text) per line, where = "path:line" for messages; drops a leading byte-order mark."""
    for line_number, raw in enumerate(f, start=1):
        where = f"{path}:{line_number}"
        line = _decode(raw, where)
        if line_number == 1 and line.startswith(_BOM):
            line = line[len(_BOM):]
        yield where, line


def read_examples(path: str, task: GlueTask, labeled: bool) -> Iterator[tf.train.Example]:
    """Yields one tf.train.Example per data row of a task file in the task's format, or raises ValueError
    (see module doc).

    Reads through tf.io.gfile so gs:// and other remote paths work, and streams so MNLI's large train
    file is never held in memory.
    """
    if not tf.io.gfile.exists(path):
        raise ValueError(f"Data file not found: {path} (task {task.name}).")
    has_header = task.format != "jsonl" and (task.columns if labeled else task.test_columns) is None
    with tf.io.gfile.GFile(path, "rb") as f:
        lines = _lines(f, path)
        records = _json_records(lines) if task.format == "jsonl" else _table_records(lines, path, task, labeled)
        rows = 0
        malformed: List[str] = []
        for where, record in records:
            row_number = rows
            rows += 1
            problem = record if isinstance(record, str) else _text_problem(task, record, labeled)
            if problem:
                malformed.append(f"{where}: {problem}")
                continue
            yield _example(task, record, where, row_number, labeled)
    if rows == 0:
        expected = "a header line and at least one row" if has_header else "at least one row"
        raise ValueError(f"{path}: no data rows (expected {expected}).")
    _check_malformed(path, rows, malformed, MAX_MALFORMED_FRACTION if labeled else 0.0)


# A data row: (where, {column: value}), or (where, what is wrong with it) for a malformed row.
_Record = Tuple[str, Union[Dict[str, Any], str]]


def _table_records(lines: Iterator[Tuple[str, str]], path: str, task: GlueTask, labeled: bool) -> Iterator[_Record]:
    """Rows of a TSV (split on tabs, no quoting) or CSV (RFC 4180 quoting) file, keyed by column name."""
    given = task.columns if labeled else task.test_columns
    rows = _csv_rows(lines, path) if task.format == "csv" else ((where, line.split("\t")) for where, line in lines if line)
    if given is None:
        first = next(rows, None)
        if first is None:
            raise ValueError(f"{path}: empty file (expected a header line and at least one row).")
        where, columns = first
    else:
        where, columns = f"{path}:1", list(given)
    for name in (task.text_a, task.text_b, task.label if labeled else None):
        if name is not None:
            _require_column(columns, name, where, task)
    separated = "comma-separated fields" if task.format == "csv" else "tab-separated columns"
    for where, values in rows:
        if len(values) != len(columns):
            yield where, f"expected {len(columns)} {separated} ({', '.join(columns)}), found {len(values)}"
        else:
            yield where, dict(zip(columns, values))


def _csv_rows(lines: Iterator[Tuple[str, str]], path: str) -> Iterator[Tuple[str, List[str]]]:
    """CSV records with the line each starts on (a quoted field may span lines); blank lines are skipped."""
    reader = csv.reader(line + "\n" for _, line in lines)
    while True:
        start = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise ValueError(f"{path}:{start}: not valid CSV ({error}).") from None
        if values:
            yield f"{path}:{start}", values


def _json_records(lines: Iterator[Tuple[str, str]]) -> Iterator[_Record]:
    """JSON Lines: one object per non-blank line."""
    for where, line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            yield where, f"not a JSON object ({error})"
            continue
        yield where, record if isinstance(record, dict) else f"not a JSON object (a {type(record).__name__})"


def _text_problem(task: GlueTask, record: Dict[str, Any], labeled: bool) -> str:
    """What makes a row malformed: a missing field or an empty (blank) text; "" if nothing."""
    for name in (task.text_a, task.text_b, task.label if labeled else None):
        if name is not None and name not in record:
            return f"no field {name!r}"
    for name in (task.text_a, task.text_b):
        if name is None:
            continue
        if not isinstance(record[name], str):
            return f"field {name!r} is not a string"
        if not record[name].strip():
            return f"empty sentence in column {name!r}"
    return ""


def _example(task: GlueTask, record: Dict[str, Any], where: str, row_number: int, labeled: bool) -> tf.train.Example:
    index = next((c for c in INDEX_COLUMNS if c in record), None)
    features = {
        FEATURE_TEXT_A: _bytes_feature(record[task.text_a]),
        FEATURE_TEXT_B: _bytes_feature("" if task.text_b is None else record[task.text_b]),
        FEATURE_INDEX: _int_feature(row_number if index is None else _parse_int(index, record[index], where)),
    }
    if labeled:
        features[FEATURE_LABEL] = _label_feature(task, record[task.label], where)
    return tf.train.Example(features=tf.train.Features(feature=features))


def _parse_int(column: str, value: Any, where: str) -> int:
    """An integer, written as one (JSON) or as its digits (text); anything else (1.5, true, "a7") is an error."""
    problem = ValueError(f"{where}: {column} {value!r} is not an integer.")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise problem
    try:
        return int(value)
    except ValueError:
        raise problem from None


def _check_malformed(path: str, rows: int, malformed: List[str], max_fraction: float) -> None:
    """Fails if more than `max_fraction` of the rows were malformed, else logs each one skipped."""
    allowed = int(rows * max_fraction)
    if len(malformed) > allowed:
        listed = "\n  ".join(malformed[:_MAX_LISTED])
        rule = (f"more than the {allowed} ({max_fraction:.1%}) that may be skipped" if max_fraction else
                "and a test file is never thinned (every row must get its prediction)")
        raise ValueError(f"{path}: {len(malformed)} of {rows} rows are malformed, {rule}. First ones:\n  {listed}")
    for problem in malformed:
        logging.warning("Skipped malformed row %s", problem)
    if malformed:
        logging.warning("%s: skipped %d malformed of %d rows.", path, len(malformed), rows)


def _split_name(exec_properties: Dict[str, Any], split_pattern: str) -> str:
    """The input split whose pattern the base executor hands over (it passes the pattern, not the name)."""
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
    for split in input_config.splits:
        if split.pattern == split_pattern:
            return split.name
    raise ValueError(f"No input split has pattern {split_pattern!r}.")


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _GlueTsvToExample(  # pylint: disable=invalid-name
    pipeline: beam.Pipeline, exec_properties: Dict[str, Any], split_pattern: str
) -> beam.pvalue.PCollection:
    """Reads one split's TSV file into tf.train.Examples; a missing file fails before the pipeline runs."""
    task = task_from_exec_properties(exec_properties)
    split = _split_name(exec_properties, split_pattern)
    path = os.path.join(exec_properties[standard_component_specs.INPUT_BASE_KEY], split_pattern)
    if not tf.io.gfile.exists(path):
        if is_labeled(task, split):
            raise ValueError(f"Data file not found: {path} (task {task.name}, split {split}).")
        logging.warning("No %s (task %s, split %s): that split is empty and gets no predictions.", path, task.name,
                        split)
        return pipeline | "NoFile" >> beam.Create([], reshuffle=False).with_output_types(tf.train.Example)
    logging.info("Reading %s split %s from %s.", task.name, split, path)
    return (
        pipeline
        | "Path" >> beam.Create([path])
        | "ReadFile" >> beam.FlatMap(read_examples, task=task, labeled=is_labeled(task, split))
    )


class Executor(BaseExampleGenExecutor):
    """ExampleGen executor for a task's TSV, CSV or JSON Lines files; the task comes from custom_config."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _GlueTsvToExample
