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
The Trainer's machine: --trainer_cpu, --trainer_memory, --trainer_accelerator[_count], --trainer_image; with --tune
the Tuner, which trains too, runs on the same machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from pipeline import console

if __name__ == "__main__":  # before TensorFlow is imported (pipeline/console.py)
    console.setup_command(sys.argv[1:])
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import yaml
from kfp.pipeline_spec import pipeline_spec_pb2

from pipeline import configs, run

REMOTE_FLAGS = ("pipeline_root", "data_dir", "serving_dir")
OUTPUT_EXTENSIONS = (".json", ".yaml", ".yml")
ResourceSpec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
# The formats of KFP's own SDK (PipelineTask.set_cpu_limit / set_memory_limit; here memory needs its unit), turned
# into the units of the spec's ResourceSpec: vCPUs, and decimal gigabytes (the KFP backend's pod limit "<value>G").
CPU = re.compile(r"(?P<number>([0-9]*[.])?[0-9]+)(?P<milli>m?)")
MEMORY = re.compile(r"(?P<number>([0-9]*[.])?[0-9]+)(?P<unit>[KMGT]i?)")
MEMORY_UNITS = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40}
# Vertex AI's accelerator names (NVIDIA_TESLA_T4, NVIDIA_L4, TPU_V3, ...) or a Kubernetes extended resource
# name, as the KFP backend sets it as the pod's limit (nvidia.com/gpu).
ACCELERATOR = re.compile(r"[A-Z][A-Z0-9]*_[A-Z0-9_]+"
                         r"|[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


def trainer_resources(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Optional[ResourceSpec]:
    """The Trainer's machine from --trainer_cpu, --trainer_memory and --trainer_accelerator[_count], checked
    (parser.error names the flag); None if none is given, leaving the platform's default machine."""
    spec = ResourceSpec()
    if args.trainer_cpu is not None:
        match = CPU.fullmatch(args.trainer_cpu)
        if not match or float(match["number"]) <= 0:
            parser.error(f"--trainer_cpu {args.trainer_cpu!r}: expected a positive number of vCPUs, e.g. 8 or 0.5, "
                         "or millicores, e.g. 500m.")
        spec.cpu_limit = float(match["number"]) / (1000 if match["milli"] else 1)
    if args.trainer_memory is not None:
        match = MEMORY.fullmatch(args.trainer_memory)
        if not match or float(match["number"]) <= 0:
            parser.error(f"--trainer_memory {args.trainer_memory!r}: expected a positive amount with its unit, e.g. "
                         f"32G or 30Gi (units {', '.join(MEMORY_UNITS)}).")
        spec.memory_limit = float(match["number"]) * MEMORY_UNITS[match["unit"]] / 1e9
    if args.trainer_accelerator_count is not None and args.trainer_accelerator is None:
        parser.error("--trainer_accelerator_count needs --trainer_accelerator (the accelerator's type).")
    if args.trainer_accelerator is not None:
        if not ACCELERATOR.fullmatch(args.trainer_accelerator):
            parser.error(f"--trainer_accelerator {args.trainer_accelerator!r}: expected a Vertex AI accelerator type "
                         "such as NVIDIA_TESLA_T4 or NVIDIA_L4, or a Kubernetes resource name such as nvidia.com/gpu.")
        count = 1 if args.trainer_accelerator_count is None else args.trainer_accelerator_count
        if count < 1:
            parser.error(f"--trainer_accelerator_count {count}: expected a positive number of accelerators.")
        spec.accelerator.type = args.trainer_accelerator
        spec.accelerator.count = count
    return spec if spec.ListFields() else None


def describe_machine(resources: Optional[ResourceSpec], image: str) -> str:
    """E.g. "8 vCPUs, 32 GB, 1 x NVIDIA_L4, image IMAGE"; the platform's default for what is not set."""
    parts = []
    if resources and resources.cpu_limit:
        parts.append(f"{resources.cpu_limit:.4g} vCPUs")
    if resources and resources.memory_limit:
        parts.append(f"{resources.memory_limit:.4g} GB")
    if resources and resources.accelerator.type:
        parts.append(f"{resources.accelerator.count} x {resources.accelerator.type}")
    return ", ".join(parts + [f"image {image}"])


def add_trainer_flags(parser: argparse.ArgumentParser) -> None:
    """The Trainer's machine: only it trains a model; every other task keeps the platform's default machine."""
    trainer = parser.add_argument_group("the Trainer's machine (default: the platform's, e.g. Vertex AI's "
                                        "e2-standard-4; see kubeflow/README.md)")
    trainer.add_argument("--trainer_cpu", metavar="CPUS", help="vCPUs, e.g. 8, or millicores, e.g. 7500m")
    trainer.add_argument("--trainer_memory", metavar="AMOUNT", help="memory with its unit, e.g. 32G or 30Gi")
    trainer.add_argument("--trainer_accelerator", metavar="TYPE",
                         help="Vertex AI: NVIDIA_TESLA_T4, NVIDIA_L4, ...; Kubeflow Pipelines: nvidia.com/gpu")
    trainer.add_argument("--trainer_accelerator_count", type=int, metavar="N",
                         help="accelerators of that type (default 1)")
    trainer.add_argument("--trainer_image", metavar="IMAGE",
                         help="the Trainer's container image, e.g. one with CUDA for a GPU (default --image)")


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
    add_trainer_flags(parser)
    console.add_verbose_flag(parser)
    args = parser.parse_args(ours)
    args.trainer_resources = trainer_resources(args, parser)
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
    from tfx.orchestration.kubeflow.v2.pipeline_builder import DEFAULT_IMAGE_PATH_KEY

    from pipeline.pipeline import UNCACHED_NODES, create_pipeline, pipeline_name_for

    config = run.training_config(args, check_backbone=False)
    tuning = run.tuning_config(args, config)
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
        tuning=tuning,
    )
    # The Trainer, and with --tune the Tuner, whose trials are training runs: both on the Trainer's machine.
    training = [c for c in pipeline.components if isinstance(c, (tfx.components.Trainer, tfx.components.Tuner))]
    if args.trainer_resources:
        for node in training:
            node.with_platform_config(args.trainer_resources)  # the executor's container resources in the spec
    # One image, or the Trainer's own: TFX's per-component image map, with the default under its key.
    images = ({DEFAULT_IMAGE_PATH_KEY: args.image, **{node.id: args.trainer_image for node in training}}
              if args.trainer_image else args.image)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        # Schema 2.1.0, the one the KFP 2 SDK writes; TFX defaults to the older 2.0.0 (deprecated parameter fields).
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=images, use_pipeline_spec_2_1=True),
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
    if args.trainer_resources or args.trainer_image:
        nodes = "Trainer and Tuner" if args.tune else "Trainer"
        print(f"{nodes}: {describe_machine(args.trainer_resources, args.trainer_image or args.image)}")


if __name__ == "__main__":
    main()
