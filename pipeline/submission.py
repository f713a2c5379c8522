"""A GLUE submission zip from the predictions the pipeline published for each task's served model.

    python -m pipeline.submission --out glue_submission.zip [--tasks mrpc rte ...] [--allow_partial]

Each GLUE task's run publishes its test predictions to <predictions_dir>/<task>/<version>/ (PredictionWriter),
<version> being the serving version of the model that made them. Per task this takes the version being served
(the highest under <serving_dir>/<task>/, what TF Serving loads; so a rollback of serving versions changes the
predictions too) and puts its files into the zip under the names the GLUE server expects (CoLA.tsv, MNLI-m.tsv,
AX.tsv, ...). It lists the tasks that have no predictions and refuses to write a partial zip unless
--allow_partial is given (the server scores a submission only when every task is in it).
"""
import argparse
import os
import sys
import zipfile
from typing import Dict, List, Optional, Sequence, Tuple

from modules.glue import TASKS, get_task, submission_file
from pipeline import configs


# GLUE's diagnostic set is not in every GLUE download: a task's zip entry is complete without it.
OPTIONAL_FILES = ("AX.tsv",)


def _versions(directory: str) -> List[int]:
    """The numeric version directories (components.pusher.existing_versions without its TensorFlow import: this
    command only reads local files)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def task_files(task_name: str, predictions_dir: str, serving_dir: str) -> Tuple[Dict[str, str], str]:
    """({file name in the zip: path} of the served version's predictions, "") or ({}, why there are none)."""
    task = get_task(task_name)
    served = _versions(os.path.join(serving_dir, task.name))
    if not served:
        return {}, f"no model served under {os.path.join(serving_dir, task.name)}"
    directory = os.path.join(predictions_dir, task.name, str(served[-1]))
    if not os.path.isdir(directory):
        return {}, f"the served version {served[-1]} has no predictions ({directory} does not exist)"
    names = [submission_file(task, split) for split in task.test_splits]
    files = {name: os.path.join(directory, name) for name in names if os.path.isfile(os.path.join(directory, name))}
    missing = [name for name in names if name not in files and name not in OPTIONAL_FILES]
    if missing:
        return {}, f"{directory} lacks {', '.join(missing)}"
    return files, ""


def collect(tasks: Sequence[str], predictions_dir: str, serving_dir: str) -> Tuple[Dict[str, str], Dict[str, str]]:
    """({file name in the zip: path}, {task: why it is missing})."""
    files, missing = {}, {}
    for name in tasks:
        found, why = task_files(name, predictions_dir, serving_dir)
        files.update(found)
        if why:
            missing[name] = why
    return files, missing


def write_zip(path: str, files: Dict[str, str]) -> None:
    """The zip, written to a temporary name and renamed: a failed run leaves no half-written submission."""
    temp = f"{path}.tmp"
    with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            archive.write(files[name], arcname=name)
    os.replace(temp, path)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.submission", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the zip to write, e.g. glue_submission.zip")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help="GLUE tasks to include (default: all nine)")
    parser.add_argument("--predictions_dir", default=os.path.join(configs.DEFAULT_OUTPUT_DIR, "predictions"),
                        help="where the pipeline published predictions (default outputs/predictions)")
    parser.add_argument("--serving_dir", default=os.path.join(configs.DEFAULT_OUTPUT_DIR, "serving"),
                        help="the served models, whose versions say which predictions to take (default outputs/serving)")
    parser.add_argument("--allow_partial", action="store_true", help="write the zip even if some tasks are missing")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        tasks = list(dict.fromkeys(get_task(name).name for name in args.tasks))
    except ValueError as e:
        parser.error(str(e))
    files, missing = collect(tasks, args.predictions_dir, args.serving_dir)
    for name, why in missing.items():
        print(f"missing {name}: {why}", file=sys.stderr)
    if not files:
        sys.exit(f"error: no predictions for any of {', '.join(tasks)}; nothing written.")
    if missing and not args.allow_partial:
        sys.exit(f"error: {len(missing)} of {len(tasks)} tasks have no predictions; the GLUE server scores only "
                 "complete submissions. Run their pipelines, or pass --allow_partial.")
    write_zip(args.out, files)
    print(f"wrote {args.out}: {', '.join(sorted(files))}")


if __name__ == "__main__":
    main()
