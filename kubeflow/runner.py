"""Compiles the pipeline for Vertex AI Pipelines or Kubeflow Pipelines (KubeflowV2DagRunner, KFP v2 pipeline spec).

    python -m kubeflow.runner --image IMAGE --pipeline_root gs://BUCKET/root --data_dir gs://BUCKET/glue \\
        --serving_dir gs://BUCKET/serving --output kubeflow/adapter-bert-glue-mrpc.json [training flags] \\
        [-- <Beam arguments, e.g. --runner=DataflowRunner --project=P --region=R --temp_location=gs://BUCKET/tmp>]
    python -m kubeflow.runner --task_spec task.yaml --data_dir gs://BUCKET/mydata ...   (your own dataset)

The same create_pipeline(...) as `python -m pipeline.run`, with its training flags and checks. Nothing runs
here and neither the data files nor the backbone are read: the pods resolve them at run time, from the image.
A --task_spec file is read here only: the task description travels inside the compiled spec (as JSON in the
components' properties), so the pods never need it; its relative file paths start at --data_dir, and
without --data_dir every file it names must be a URI.
The file written depends on --output's extension:
  .json         a PipelineJob (pipelineSpec + runtimeConfig), for Vertex AI Pipelines;
  .yaml / .yml  the PipelineSpec alone, KFP's package format (kfp.Client, the KFP UI; Vertex AI reads it too).
Both carry the pipeline root as the spec's defaultPipelineRoot. See kubeflow/README.md for what runs where.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from pipeline import console

if __name__ == "__main__":  # before TensorFlow is imported (pipeline/console.py)
    console.setup_command(sys.argv[1:])
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import yaml

from pipeline import configs, run

REMOTE_FLAGS = ("pipeline_root", "data_dir", "serving_dir")
OUTPUT_EXTENSIONS = (".json", ".yaml", ".yml")


def parse_args(argv: Sequence[str]) -> Tuple[argparse.Namespace, List[str]]:
    """Kubeflow's flags plus every shared flag of pipeline.run, and the Beam arguments given after a lone `--`."""
    ours, beam_args = run.split_beam_args(argv)
    parser = argparse.ArgumentParser(prog="python -m kubeflow.runner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True, help="container image every component runs in (built from kubeflow/Dockerfile)")
    parser.add_argument("--pipeline_root", required=True, help="where the pods write artifacts, e.g. gs://BUCKET/root")
    parser.add_argument("--data_dir", help="GLUE data in the standard layout, e.g. gs://BUCKET/glue (<dir>/MRPC/train.tsv ...); "
                        "with --task_spec: where its relative file paths start (required unless it names URIs only)")
    parser.add_argument("--serving_dir", "--saved_models_dir", dest="serving_dir", required=True,
                        help="Pusher destination: <serving_dir>/<task>/<version>/, e.g. gs://BUCKET/serving")
    parser.add_argument("--output", help="file to write, .json or .yaml (default <pipeline name>.json in the current directory)")
    run.add_pipeline_flags(parser)
    console.add_verbose_flag(parser)
    args = parser.parse_args(ours)
    if args.data_dir is None and not args.task_spec:
        parser.error("--data_dir is required (with --task, the GLUE data the pods read, e.g. gs://BUCKET/glue).")
    for flag in REMOTE_FLAGS:
        if getattr(args, flag) is not None and "://" not in getattr(args, flag):
            parser.error(f"--{flag} {getattr(args, flag)!r} must be a URI the pods can reach (gs://, s3://, ...), "
                         "not a path on this machine.")
    if args.output and not args.output.endswith(OUTPUT_EXTENSIONS):
        parser.error(f"--output {args.output!r} must end with one of {', '.join(OUTPUT_EXTENSIONS)}.")
    return args, beam_args


def compile_pipeline(args: argparse.Namespace, beam_args: List[str]) -> Tuple[str, Dict[str, Any]]:
    """Builds the pipeline and its PipelineJob; returns the output path and the job as a dict."""
    from tfx import v1 as tfx

    from pipeline.pipeline import UNCACHED_NODES, create_pipeline, pipeline_name_for

    config = run.training_config(args, check_backbone=False)
    task = config.task_description()
    data_dir = run.data_dir(args)
    local = [task.split_path(split, data_dir) for split in task.splits if "://" not in task.split_path(split, data_dir)]
    if local:
        raise ValueError(f"--task_spec {args.task_spec}: {', '.join(local)} must be URIs the pods can reach (gs://, "
                         "s3://, ...): name them so in the spec, or give relative paths and --data_dir gs://...")
    name = pipeline_name_for(config.task, configs.PIPELINE_NAME)
    pipeline = create_pipeline(
        pipeline_name=name, pipeline_root=args.pipeline_root, data_dir=data_dir, serving_dir=args.serving_dir,
        config=config, min_eval_value=args.min_eval_value, max_regression=args.max_regression,
        compare_with_baseline=not args.no_baseline, constant_margin=args.constant_margin,
        beam_pipeline_args=beam_args, enable_cache=not args.no_cache, data_checks=run.data_checks(args),
    )
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        # Schema 2.1.0, the one the KFP 2 SDK writes; TFX defaults to the older 2.0.0 (deprecated parameter fields).
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=args.image, use_pipeline_spec_2_1=True),
    )
    job = runner.run(pipeline, write_out=False)
    for node in UNCACHED_NODES:  # they compare with what is served now: never reuse an earlier run's result
        job["pipelineSpec"]["root"]["dag"]["tasks"][node].pop("cachingOptions", None)
    # The YAML has no runtimeConfig: keep the root in the spec too, as the KFP SDK does, for runs submitted without one.
    job["pipelineSpec"]["defaultPipelineRoot"] = args.pipeline_root
    return args.output or f"{name}.json", job


def write_pipeline(path: str, job: Dict[str, Any]) -> None:
    """The PipelineJob as JSON (Vertex AI), or its PipelineSpec as YAML (Kubeflow Pipelines)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        if path.endswith(".json"):
            json.dump(job, f, indent=2, sort_keys=True)
        else:
            yaml.safe_dump(job["pipelineSpec"], f, sort_keys=True)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args, beam_args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        path, job = compile_pipeline(args, beam_args)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    write_pipeline(path, job)
    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
    print(f"wrote {path}: pipeline {job['displayName']}, {len(tasks)} tasks, image {args.image}, root {args.pipeline_root}")


if __name__ == "__main__":
    main()
