"""Fetches one GLUE task into the standard layout GlueExampleGen reads, for users with network but no data.

    python -m components.glue_example_gen.download --task mrpc --data_dir DIR

Sources are those of the well-known download_glue_data.py: the official archives on
dl.fbaipublicfiles.com, and for MRPC (which GLUE does not host) SentEval's copies of the Microsoft
files, split into train/dev by GLUE's list of dev ids exactly as that script does, so the files are
byte-identical to the usual ones (including the byte-order mark before "Quality").
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import urllib.request
import zipfile
from typing import Iterator, List, Optional

from modules.glue import GlueTask, get_task

_GLUE_URL = "https://dl.fbaipublicfiles.com/glue/data/"
# Archives not named after the task directory (the rest are <directory>.zip).
_ARCHIVE_NAMES = {"qqp": "QQP-clean.zip", "qnli": "QNLIv2.zip"}
_MRPC_TRAIN = "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_train.txt"
_MRPC_TEST = "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_test.txt"
_MRPC_DEV_IDS = _GLUE_URL + "mrpc_dev_ids.tsv"
_MRPC_TEST_HEADER = "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"


def _fetch(url: str, path: str) -> None:
    print(f"Downloading {url}")
    with urllib.request.urlopen(url, timeout=120) as response, open(path, "wb") as out:
        shutil.copyfileobj(response, out)


def _msr_rows(path: str) -> Iterator[List[str]]:
    """Data rows of a Microsoft paraphrase file: Quality, #1 ID, #2 ID, #1 String, #2 String."""
    with io.open(path, encoding="utf-8") as f:
        next(f, None)
        for number, line in enumerate(f, start=2):
            row = line.strip().split("\t")
            if len(row) != 5:
                raise ValueError(f"{path}:{number}: expected 5 tab-separated columns, found {len(row)}.")
            yield row


def assemble_mrpc(train_txt: str, test_txt: str, dev_ids_tsv: str, out_dir: str) -> None:
    """Writes train.tsv, dev.tsv and test.tsv of GLUE MRPC from the Microsoft files (no network)."""
    os.makedirs(out_dir, exist_ok=True)
    with io.open(dev_ids_tsv, encoding="utf-8") as f:
        dev_ids = {tuple(line.strip().split("\t")) for line in f if line.strip()}
    with io.open(train_txt, encoding="utf-8") as f:
        header = f.readline()
    with io.open(os.path.join(out_dir, "train.tsv"), "w", encoding="utf-8", newline="\n") as train, \
            io.open(os.path.join(out_dir, "dev.tsv"), "w", encoding="utf-8", newline="\n") as dev:
        train.write(header)
        dev.write(header)
        for row in _msr_rows(train_txt):
            (dev if (row[1], row[2]) in dev_ids else train).write("\t".join(row) + "\n")
    with io.open(os.path.join(out_dir, "test.tsv"), "w", encoding="utf-8", newline="\n") as test:
        test.write(_MRPC_TEST_HEADER)
        for index, row in enumerate(_msr_rows(test_txt)):
            test.write("\t".join([str(index)] + row[1:]) + "\n")


def download(task: GlueTask, data_dir: str) -> str:
    """Downloads and unpacks one task into <data_dir>/<task.directory>/ and returns that directory."""
    task_dir = os.path.join(data_dir, task.directory)
    os.makedirs(data_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if task.name == "mrpc":
            train, test, dev_ids = (os.path.join(tmp, name) for name in ("train.txt", "test.txt", "dev_ids.tsv"))
            _fetch(_MRPC_TRAIN, train)
            _fetch(_MRPC_TEST, test)
            _fetch(_MRPC_DEV_IDS, dev_ids)
            assemble_mrpc(train, test, dev_ids, task_dir)
        else:
            archive = os.path.join(tmp, "task.zip")
            _fetch(_GLUE_URL + _ARCHIVE_NAMES.get(task.name, f"{task.directory}.zip"), archive)
            with zipfile.ZipFile(archive) as zip_file:
                zip_file.extractall(data_dir)
            if task.name == "mnli":  # GLUE's diagnostic set, which the MNLI model answers for the server's AX.tsv
                os.makedirs(os.path.join(data_dir, "diagnostic"), exist_ok=True)
                _fetch(_GLUE_URL + "AX.tsv", os.path.join(data_dir, "diagnostic", "diagnostic.tsv"))
    if not os.path.isdir(task_dir):
        raise RuntimeError(f"The {task.name} download did not create {task_dir}; check {data_dir}.")
    return task_dir


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, help="GLUE task name, e.g. mrpc, sst2, mnli")
    parser.add_argument("--data_dir", required=True, help="directory to hold the <TASK>/ folders")
    args = parser.parse_args(argv)
    print(f"Done: {download(get_task(args.task), args.data_dir)}")


if __name__ == "__main__":
    main()
