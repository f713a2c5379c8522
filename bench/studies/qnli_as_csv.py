"""A real dataset that is not a built-in task: GLUE QNLI's labelled dev file, as a user would bring it.

    python -m bench.studies.qnli_as_csv --out_dir outputs/byod          # writes the CSV files and the task spec
    python -m pipeline.run --task_spec outputs/byod/qnli-dev.yaml --no_baseline

The 5,463 rows of <GLUE_DIR>/QNLI/dev.tsv (GLUE's test file has no labels) are split into train and eval by
one seeded rule: the row numbers 0..n-1 are shuffled with random.Random(SEED) and the first EVAL_FRACTION
of the shuffled order (rounded down) go to eval, the rest to train, each file keeping the original row order.
Both are written as CSV (header question,sentence,label; Python's csv quoting, so the commas and quotes
of Wikipedia sentences are quoted), with a task spec naming them: a pair task, labels entailment /
not_entailment, accuracy deciding blessing.

`--train_rows N` keeps only the first N rows of train (eval unchanged): a user with few labelled examples, where
the fixed recipe may not learn and `--tune` decides (docs/tuning.md):

    python -m bench.studies.qnli_as_csv --out_dir outputs/qnli200 --train_rows 200
    python -m pipeline.run --task_spec outputs/qnli200/qnli-dev.yaml --tune --tune_strategy hyperband
"""
from __future__ import annotations

import argparse
import csv
import os
import random
from typing import List, Optional, Sequence

from bench.common import glue_file_or_exit

SEED = 13
EVAL_FRACTION = 0.2
COLUMNS = ("question", "sentence", "label")
SPEC = """\
# GLUE QNLI's labelled dev file split into train and eval by bench/studies/qnli_as_csv.py (seed {seed}{kept}).
name: qnli-dev
format: csv
files: {{train: train.csv, eval: eval.csv}}
text_a: question
text_b: sentence
label: label
labels: [entailment, not_entailment]
metrics: [accuracy, mcc]
"""


def read_rows(path: str) -> List[List[str]]:
    """The (question, sentence, label) of each row of QNLI's dev.tsv (header index, question, sentence, label)."""
    with open(path, encoding="utf-8", newline="") as f:
        header, *lines = f.read().split("\n")
    columns = header.split("\t")
    rows = [line.split("\t") for line in lines if line]
    return [[row[columns.index(c)] for c in COLUMNS] for row in rows]


def split(count: int, seed: int = SEED, eval_fraction: float = EVAL_FRACTION) -> List[int]:
    """Row numbers of the eval split (sorted): the first eval_fraction of a seeded shuffle of 0..count-1."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return sorted(order[:int(count * eval_fraction)])


def write_csv(path: str, rows: Sequence[Sequence[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(rows)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", required=True, help="where train.csv, eval.csv and qnli-dev.yaml go")
    parser.add_argument("--train_rows", type=int, help="keep only the first N rows of train (default: all)")
    args = parser.parse_args(argv)
    if args.train_rows is not None and args.train_rows < 1:
        parser.error(f"--train_rows {args.train_rows}: expected a positive number of rows")
    rows = read_rows(glue_file_or_exit("QNLI", "dev.tsv"))
    eval_rows = set(split(len(rows)))
    train = [r for i, r in enumerate(rows) if i not in eval_rows][:args.train_rows]
    os.makedirs(args.out_dir, exist_ok=True)
    write_csv(os.path.join(args.out_dir, "train.csv"), train)
    write_csv(os.path.join(args.out_dir, "eval.csv"), [r for i, r in enumerate(rows) if i in eval_rows])
    spec = os.path.join(args.out_dir, "qnli-dev.yaml")
    kept = "" if args.train_rows is None else f"; the first {len(train)} rows of train"
    with open(spec, "w", encoding="utf-8") as f:
        f.write(SPEC.format(seed=SEED, kept=kept))
    print(f"{len(train)} train and {len(eval_rows)} eval rows; run: python -m pipeline.run --task_spec {spec}")


if __name__ == "__main__":
    main()
