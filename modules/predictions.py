"""Prediction files people read: one row per test example, in the GLUE server's format or the input's own.

Used by the pipeline's PredictionWriter (test splits, after BulkInferrer) and by `python -m pipeline.predict
--input FILE --output FILE` (any unlabelled file after deployment), so both write the same files.

  GLUE tasks   the file the server expects for the split (`modules.glue.submission_file`: MRPC.tsv, MNLI-m.tsv,
               AX.tsv, ...), header "index<TAB>prediction", the test file's index, in its order; the label as the
               server wants it (the task's label value: RTE "not_entailment", MRPC "1"), a score clipped to the
               task's score_range (STS-B: [0, 5]).
  your tasks   the input's format (csv, jsonl; tsv for tsv), named "<split>.<format>" (test.csv): "id" (the row's
               own "index"/"id" column, else its 0-based row number), then "label_name" (the label value),
               "label" (the class id) and one "probability_<label>" column per class; a regression task
               writes "id" and "score".
Rows are written in the order of their id (for files without an id column, the file's order).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from typing import Dict, List, Optional, Sequence, Tuple

from modules.glue import GlueTask, submission_file

GLUE_HEADER = ("index", "prediction")
ID_COLUMN = "id"


@dataclasses.dataclass(frozen=True)
class PredictionRow:
    """One test example's answer: its id and class id with probabilities, or a score (regression)."""

    index: int
    label_id: Optional[int] = None
    probabilities: Optional[Tuple[float, ...]] = None
    score: Optional[float] = None


def file_name(task: GlueTask, split: str) -> str:
    """Where a split's predictions go: the GLUE server's name, or "<split>.<format>" for a user's task."""
    return submission_file(task, split) or f"{split}.{task.format}"


def probability_columns(task: GlueTask) -> List[str]:
    return [f"probability_{name}" for name in task.label_names]


def clipped(task: GlueTask, score: float) -> float:
    """A regression score inside the task's score_range (the GLUE server rejects STS-B scores outside [0, 5])."""
    if task.score_range is None:
        return score
    low, high = task.score_range
    return min(max(score, low), high)


def check_rows(task: GlueTask, rows: Sequence[PredictionRow], where: str) -> None:
    """Every row answers the task (a finite score, or a class id with one probability per class)."""
    for row in rows:
        if task.is_regression:
            ok = row.score is not None and math.isfinite(row.score)
        else:
            ok = (row.label_id is not None and 0 <= row.label_id < task.num_labels and row.probabilities is not None
                  and len(row.probabilities) == task.num_labels)
        if not ok:
            raise ValueError(f"{where}: the prediction for id {row.index} does not answer task {task.name}: {row}.")


def format_predictions(task: GlueTask, split: str, rows: Sequence[PredictionRow]) -> str:
    """The file's whole text, rows in id order."""
    check_rows(task, rows, f"task {task.name} split {split}")
    rows = sorted(rows, key=lambda row: row.index)
    out = io.StringIO(newline="")
    if submission_file(task, split):
        out.write("\t".join(GLUE_HEADER) + "\n")
        for row in rows:
            answer = f"{clipped(task, row.score):.3f}" if task.is_regression else task.label_names[row.label_id]
            out.write(f"{row.index}\t{answer}\n")
        return out.getvalue()
    records = [_record(task, row) for row in rows]
    if task.format == "jsonl":
        return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    columns = [ID_COLUMN, "score"] if task.is_regression else [ID_COLUMN, "label_name", "label",
                                                               *probability_columns(task)]
    if task.format == "csv":
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    else:  # tsv: tab-separated, no quoting, like the input (label values hold no tabs: they are task spec values)
        writer = csv.DictWriter(out, fieldnames=columns, delimiter="\t", quoting=csv.QUOTE_NONE,
                                lineterminator="\n", escapechar="\\")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()


def _record(task: GlueTask, row: PredictionRow) -> Dict[str, object]:
    if task.is_regression:
        return {ID_COLUMN: row.index, "score": round(clipped(task, row.score), 6)}
    return {ID_COLUMN: row.index, "label_name": task.label_names[row.label_id], "label": row.label_id,
            **{column: round(p, 6) for column, p in zip(probability_columns(task), row.probabilities)}}
