"""Beam executor of GlueExampleGen: reads one GLUE TSV file per split into tf.train.Examples.

Every task is converted to the schema of modules/glue.py (FEATURE_TEXT_A, FEATURE_TEXT_B, FEATURE_LABEL,
FEATURE_INDEX); which columns hold what comes from the task table, found by header name.

Parsing: lines are split on "\\n" and fields on "\\t" only, with no quoting, so quotes in sentences survive
byte for byte; text is kept exactly as written (no stripping). A UTF-8 byte-order mark before the
first line (MRPC) and a "\\r" before "\\n" (files edited on Windows) are dropped; lines of zero length
(e.g. a blank last line) are not rows. Labeled files of a task with a fixed `header` (CoLA train/dev)
have no header line; every other file starts with one.

Bad-data policy. A problem inside a file is a ValueError naming the file, the 1-based line number
and what was expected; a missing file is one naming its path. The executor raises, and TFX publishes
no artifact for a failed execution.
  - missing file, unknown task: fail (the component also checks files when the pipeline is built).
  - header without a column the task needs (sentence, label): fail; it is the wrong file or task.
  - invalid UTF-8: fail; a wrong encoding affects a whole file, skipping rows would hide it.
  - unknown label, score that is not a finite number, "index"/"id" that is not an integer: fail;
    they mean the file does not match the task table, and skipping would bias the labels.
  - malformed row: wrong number of columns, or an empty (blank) sentence, which is what a stray tab
    or line break inside a sentence produces. Skipped with a warning naming file:line, but only
    while such rows are at most MAX_MALFORMED_FRACTION (0.1%) of the file's rows (real QQP
    train.tsv has a handful); beyond that: fail, listing the first ones. Skipped rows keep their
    row number, so FEATURE_INDEX of the other rows does not shift.
  - no data rows at all: fail; an empty split would only fail later, far from its cause.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Iterator, List, Sequence, Tuple

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
    get_task,
)

# Key of the task name in the Struct packed into the component's custom_config.
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
    """Packs the task name for the executor (CustomConfig holds an Any; a Struct needs no own proto)."""
    config = example_gen_pb2.CustomConfig()
    config.custom_config.Pack(struct_pb2.Struct(fields={TASK_KEY: struct_pb2.Value(string_value=task.name)}))
    return config


def task_from_exec_properties(exec_properties: Dict[str, Any]) -> GlueTask:
    """The GLUE task written into custom_config by GlueExampleGen."""
    config = example_gen_pb2.CustomConfig()
    proto_utils.json_to_proto(exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or "{}", config)
    fields = struct_pb2.Struct()
    if not config.custom_config.Unpack(fields) or TASK_KEY not in fields:
        raise ValueError(f"custom_config holds no GLUE task (expected a Struct with key {TASK_KEY!r}).")
    return get_task(fields[TASK_KEY])


def _bytes_feature(text: str) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode("utf-8")]))


def _int_feature(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def _label_feature(task: GlueTask, value: str, where: str) -> tf.train.Feature:
    """Class id (index in task.label_names) or, for regression, the float score."""
    if task.is_regression:
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise ValueError(f"{where}: {task.label} {value!r} is not a finite number (task {task.name} is scored).")
        return tf.train.Feature(float_list=tf.train.FloatList(value=[score]))
    if value not in task.label_names:
        raise ValueError(
            f"{where}: unknown label {value!r} in column {task.label!r}; "
            f"task {task.name} expects one of {', '.join(repr(n) for n in task.label_names)}."
        )
    return _int_feature(task.label_names.index(value))


def _decode(raw: bytes, where: str) -> str:
    """One line without its line ending, as text; invalid UTF-8 is an error at this line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{where}: invalid UTF-8 at byte {error.start + 1} of the line; GLUE files are UTF-8."
        ) from None
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    return line


def _column(columns: Sequence[str], name: str, where: str, task: GlueTask) -> int:
    if name not in columns:
        raise ValueError(
            f"{where}: header has no column {name!r} (columns: {', '.join(columns)}); "
            f"is this a {task.directory} file of task {task.name}?"
        )
    return columns.index(name)


def _lines(f: tf.io.gfile.GFile, path: str) -> Iterator[Tuple[str, str]]:
    """(where, text) per line, where = "path:line" for messages; drops a leading byte-order mark."""
    for line_number, raw in enumerate(f, start=1):
        where = f"{path}:{line_number}"
        line = _decode(raw, where)
        if line_number == 1 and line.startswith(_BOM):
            line = line[len(_BOM):]
        yield where, line


def read_glue_tsv(path: str, task: GlueTask, labeled: bool) -> Iterator[tf.train.Example]:
    """Yields one tf.train.Example per data row of a GLUE TSV file, or raises ValueError (see module doc).

    Reads through tf.io.gfile so gs:// and other remote paths work, and streams so MNLI's large train
    file is never held in memory.
    """
    if not tf.io.gfile.exists(path):
        raise ValueError(f"GLUE file not found: {path} (task {task.name}).")
    has_header = not (labeled and task.header)
    with tf.io.gfile.GFile(path, "rb") as f:
        lines = _lines(f, path)
        if has_header:
            first = next(lines, None)
            if first is None:
                raise ValueError(f"{path}: empty file (expected a header line and at least one row).")
            where, header = first
            columns: Sequence[str] = header.split("\t")
        else:
            where, columns = f"{path}:1", task.header
        text_a = _column(columns, task.text_a, where, task)
        text_b = None if task.text_b is None else _column(columns, task.text_b, where, task)
        label = _column(columns, task.label, where, task) if labeled else None
        index = next((columns.index(c) for c in INDEX_COLUMNS if c in columns), None)
        rows = 0
        malformed: List[str] = []
        for where, line in lines:
            if not line:
                continue
            row_number = rows
            rows += 1
            values = line.split("\t")
            if len(values) != len(columns):
                expected = f"{len(columns)} tab-separated columns ({', '.join(columns)})"
                malformed.append(f"{where}: expected {expected}, found {len(values)}")
                continue
            blank = [columns[i] for i in (text_a, text_b) if i is not None and not values[i].strip()]
            if blank:
                malformed.append(f"{where}: empty sentence in column {blank[0]!r}")
                continue
            idx = row_number if index is None else _parse_int(values, columns, index, where)
            features = {
                FEATURE_TEXT_A: _bytes_feature(values[text_a]),
                FEATURE_TEXT_B: _bytes_feature("" if text_b is None else values[text_b]),
                FEATURE_INDEX: _int_feature(idx),
            }
            if label is not None:
                features[FEATURE_LABEL] = _label_feature(task, values[label], where)
            yield tf.train.Example(features=tf.train.Features(feature=features))
    if rows == 0:
        expected = "a header line and at least one row" if has_header else "at least one row"
        raise ValueError(f"{path}: no data rows (expected {expected}).")
    _check_malformed(path, rows, malformed)


def _parse_int(values: Sequence[str], columns: Sequence[str], at: int, where: str) -> int:
    try:
        return int(values[at])
    except ValueError:
        raise ValueError(f"{where}: {columns[at]} {values[at]!r} is not an integer.") from None


def _check_malformed(path: str, rows: int, malformed: List[str]) -> None:
    """Fails if more than MAX_MALFORMED_FRACTION of the rows were malformed, else logs each one skipped."""
    allowed = int(rows * MAX_MALFORMED_FRACTION)
    if len(malformed) > allowed:
        listed = "\n  ".join(malformed[:_MAX_LISTED])
        raise ValueError(
            f"{path}: {len(malformed)} of {rows} rows are malformed, more than the {allowed} "
            f"({MAX_MALFORMED_FRACTION:.1%}) that may be skipped. First ones:\n  {listed}"
        )
    for problem in malformed:
        logging.warning("Skipped malformed GLUE row %s", problem)
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
        raise ValueError(f"GLUE file not found: {path} (task {task.name}, split {split}).")
    logging.info("Reading GLUE %s split %s from %s.", task.name, split, path)
    return (
        pipeline
        | "Path" >> beam.Create([path])
        | "ReadTsv" >> beam.FlatMap(read_glue_tsv, task=task, labeled=is_labeled(task, split))
    )


class Executor(BaseExampleGenExecutor):
    """ExampleGen executor for GLUE TSV files; the task comes from custom_config."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _GlueTsvToExample
