"""Bundles several tasks' adapters on one frozen backbone into one SavedModel and pushes it for TF Serving.

    python -m pipeline.bundle --tasks mrpc,rte,sst2 [--output_dir outputs] [--serving_dir DIR]
    python -m pipeline.bundle --adapters path/to/Model/7 path/to/other/adapters [--tasks ...]
    python -m pipeline.bundle --tasks mrpc --task_spec my/tickets.yaml

--tasks: each task's latest pushed (blessed) model of pipeline adapter-bert-glue-<task>, found in ML Metadata
(a task spec's task by its name, e.g. --tasks mrpc,tickets; --task_spec FILE names it by its spec file)
(<output_dir>/metadata.sqlite, or --metadata_path). --adapters: explicit Trainer Model artifact directories
or their adapters/ directories. Any combination works. The task descriptions (inputs, label names) come
from the adapter artifacts' adapter_config.json, written by the Trainer: no spec file is read for them.

Writes <serving_dir>/glue_bundle/<version>/ (default serving dir <output_dir>/serving), a new numeric
version published atomically. Signatures: one per task ("mrpc": sentence1, sentence2 -> probabilities,
label, label_name) and "predict" / "serving_default" (task, sentence1, sentence2 -> probabilities padded to
the largest number of labels, label, label_name, score, num_labels); see modules/bundle.py. Adding a task = run its
pipeline, then run this again with the longer task list: the other tasks' adapters are reused as pushed.
Refused, before anything is written: two adapter sets of one task, adapters trained on another backbone
(other shapes or other weights), a task without a pushed model.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

from pipeline import console

if __name__ == "__main__":  # before TensorFlow is imported (pipeline/console.py)
    console.setup_command(sys.argv[1:])
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from pipeline import configs


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bundle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="", help="comma-separated task names, each from its latest pushed model")
    parser.add_argument("--task_spec", action="append", default=[], metavar="FILE",
                        help="a task spec file whose task to bundle, like its name in --tasks (repeatable)")
    parser.add_argument("--adapters", nargs="*", default=[], metavar="DIR",
                        help="Model artifact or adapters directories to bundle as well (task read from their config)")
    parser.add_argument("--output_dir", default=configs.DEFAULT_OUTPUT_DIR,
                        help="the pipelines' output dir: default parent of --metadata_path and --serving_dir")
    parser.add_argument("--metadata_path", help="SQLite ML Metadata file (default <output_dir>/metadata.sqlite)")
    parser.add_argument("--serving_dir", "--saved_models_dir", dest="serving_dir",
                        help="push destination: <serving_dir>/<name>/<version>/ (default <output_dir>/serving)")
    parser.add_argument("--name", default="glue_bundle", help="the bundle's model name under --serving_dir")
    parser.add_argument("--model", help="backbone (default: the one the adapters were trained with, from their config)")
    parser.add_argument("--pipeline_prefix", default=configs.PIPELINE_NAME,
                        help="task pipelines are named <prefix>-<task>")
    console.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    if not args.tasks and not args.adapters and not args.task_spec:
        parser.error("give --tasks, --task_spec and/or --adapters")
    return args


def _size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Runs the CLI; returns the pushed version directory."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from components import adapter_bundle
    from modules.bundle import ALL_TASKS_SIGNATURE, BundleError
    from modules.glue import load_task_spec

    start = time.time()
    metadata_path = args.metadata_path or os.path.join(args.output_dir, "metadata.sqlite")
    serving_dir = args.serving_dir or os.path.join(args.output_dir, "serving")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        tasks += [load_task_spec(path).name for path in args.task_spec]
    except ValueError as e:
        sys.exit(f"error: {e}")
    try:
        sources = adapter_bundle.find_pushed_adapters(metadata_path, tasks, args.pipeline_prefix) if tasks else []
        sources += [adapter_bundle.AdapterSource(path=path) for path in args.adapters]
        result = adapter_bundle.create_bundle(sources, serving_dir, model=args.model, name=args.name)
    except BundleError as e:
        sys.exit(f"error: {e}\nNothing was written.")

    info = result.manifest
    print("\n" + "=" * 78)
    print(f"{'task':<8}{'signature inputs':<22}{'parameters':>12}  adapters from")
    single_sizes = []
    for task, entry in info["tasks"].items():
        source = entry.get("source", {})
        pushed = source.get("pushed_destination")
        if pushed and os.path.isdir(pushed):
            single_sizes.append(_size(pushed))
        origin = f"pushed {pushed}" if pushed else entry["adapters_dir"]
        inputs = ", ".join(info["signatures"][task]["inputs"])
        print(f"{task:<8}{inputs:<22}{entry['trained_parameters']:>12,}  {origin}")
    print("-" * 78)
    print(f"backbone:  {info['backbone']['model']} ({info['backbone_parameters']:,} parameters, stored once)")
    print("generic:   signature 'predict' / 'serving_default' (task, sentence1, sentence2)")
    shared = info["signatures"][ALL_TASKS_SIGNATURE]["shared_prefixes"]
    print("all tasks: signature 'all_tasks' (sentence1, sentence2)" + "".join(
        f"; {', '.join(p['tasks'])} run the embeddings and layers 0-{p['layers'] - 1} once" for p in shared))
    size = _size(result.path)
    line = f"bundle:    {result.path} ({_mb(size)})"
    if len(single_sizes) == len(info["tasks"]):
        line += f"; the {len(single_sizes)} single-task SavedModels: {_mb(sum(single_sizes))}"
    print(line)
    if result.dropped:
        print(f"WARNING:   the previous version served {', '.join(result.dropped)}, which this one does not: a model "
              "server loading the newest version stops answering them (list every task to keep).")
    print(f"wall time: {time.time() - start:.1f} s")
    print("=" * 78)
    return result.path


if __name__ == "__main__":
    main()
