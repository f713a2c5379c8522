"""A test double for the KFP v2 launcher: executes, on this machine, a spec written by `python -m kubeflow.runner`.

    python -m kubeflow.launcher kubeflow/adapter-bert-glue-mrpc.json [--run_id RUN_ID] [--warm]

Not an orchestrator for users (use Vertex AI Pipelines or Kubeflow Pipelines, see kubeflow/README.md). It exists
because no cluster and no container engine are available here, so that the compiled spec itself, not the Python
pipeline object it came from, can be executed and tested. It runs every task the way the KFP v2 launcher runs it in
its pod:
  - tasks in the DAG's topological order (ties by name), one at a time;
  - each executor's container `command` + `args` exactly as the spec has them, in a subprocess whose `python` is
    this virtualenv's interpreter (the image installs the same lock) and with the image's TF_USE_LEGACY_KERAS=1;
    with `warm`, each `python -m` command runs in a child forked from one interpreter that imported TensorFlow,
    TFX and Beam once (kubeflow/forkserver.py: the same entry point and arguments, without the import each
    fresh interpreter pays);
  - placeholders filled by KFP's own resolver (kfp.local.placeholder_utils): `{{$}}` is the task's ExecutorInput
    (kfp-pipeline-spec protos): parameter values from the task's runtimeValue constants, the root's
    componentInputParameters or upstream output parameters; input artifacts as the upstream executors wrote them
    into their executor output file (URI and metadata merged into the provisioned artifact, as the launcher does
    before recording it); output artifact URIs `<pipeline root>/<pipeline name>/<run id>/<task>/<output>`
    (the file:// root's local path: see local_path); the executor output file
    `<task directory>/executor_output.json`;
  - a container's lifecycle pre-cache check (TFX's ExampleGen driver) first, with the same ExecutorInput: the
    artifact metadata it writes (span, version, input fingerprint) is merged into the outputs the executor gets,
    and its file stays where TFX's executor entry point reads the updated execution properties from.
What KFP does that this does not (scheduling, caching, retries, images, metadata store, ...): kubeflow/README.md.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import yaml
from google.protobuf import json_format, struct_pb2
from kfp.local import executor_input_utils, placeholder_utils
from kfp.pipeline_spec import pipeline_spec_pb2 as pb

from kubeflow.forkserver import ForkServer, is_python_module_command

EXECUTOR_OUTPUT_FILE = "executor_output.json"
# What kubeflow/Dockerfile sets for every container (ENV), beyond the inherited environment.
IMAGE_ENV = {"TF_USE_LEGACY_KERAS": "1"}
LOG_TAIL_LINES = 40


@dataclass
class TaskRun:
    """One executed task: what it was given and ran, what it wrote, how long it took (hook and executor), its log."""

    name: str
    seconds: float
    executor_input: pb.ExecutorInput
    executor_output: pb.ExecutorOutput
    log_path: str
    commands: List[List[str]]  # the processes run: the pre-cache check's, if any, then the executor's


@dataclass
class PipelineRun:
    run_id: str
    run_root: str
    tasks: List[TaskRun]

    def task(self, name: str) -> TaskRun:
        (run,) = [t for t in self.tasks if t.name == name]
        return run

    def output(self, task: str, key: str) -> pb.RuntimeArtifact:
        """An output artifact as downstream tasks receive it."""
        return self.task(task).executor_output.artifacts[key].artifacts[0]


class TaskFailed(RuntimeError):
    pass


def load_spec(path: str) -> Tuple[pb.PipelineSpec, pb.PipelineJob.RuntimeConfig]:
    """A PipelineJob .json (spec + runtime config) or a bare PipelineSpec .yaml, as kubeflow.runner writes them."""
    with open(path) as f:
        document = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    if "pipelineSpec" not in document:
        return json_format.ParseDict(document, pb.PipelineSpec()), pb.PipelineJob.RuntimeConfig()
    spec = json_format.ParseDict(document["pipelineSpec"], pb.PipelineSpec())
    runtime_config = json_format.ParseDict(document.get("runtimeConfig", {}), pb.PipelineJob.RuntimeConfig())
    return spec, runtime_config


def local_path(uri: str) -> str:
    """The path on this machine of a file:// URI (or a plain path): the harness runs every pod here.

    Artifact URIs are provisioned as such paths, not as file:// URIs: Beam 2.60 has no file:// file system
    (its LocalFileSystem takes bare paths only), so TFX's Beam components could not write under a file:// root.
    """
    if uri.startswith("file://"):
        return uri[len("file://"):]
    if "://" in uri:
        raise ValueError(f"pipeline root {uri!r}: this launcher double runs on this machine and needs a file:// "
                         "pipeline root (compile with --pipeline_root file:///ABSOLUTE/PATH).")
    return uri


def topological_order(tasks: Mapping[str, pb.PipelineTaskSpec]) -> List[str]:
    """Task names, each after every task it depends on (dependentTasks and the producers of its inputs)."""
    upstream: Dict[str, Set[str]] = {}
    for name, task in tasks.items():
        producers = set(task.dependent_tasks)
        producers |= {a.task_output_artifact.producer_task for a in task.inputs.artifacts.values()
                      if a.HasField("task_output_artifact")}
        producers |= {p.task_output_parameter.producer_task for p in task.inputs.parameters.values()
                      if p.HasField("task_output_parameter")}
        unknown = producers - set(tasks)
        if unknown:
            raise ValueError(f"task {name!r} depends on {sorted(unknown)}, which are not tasks of the root DAG.")
        upstream[name] = producers
    order: List[str] = []
    while len(order) < len(tasks):
        ready = sorted(n for n in tasks if n not in order and upstream[n] <= set(order))
        if not ready:
            raise ValueError(f"the DAG has a cycle among {sorted(set(tasks) - set(order))}.")
        order.append(ready[0])
    return order


def container_of(spec: pb.PipelineSpec, component: pb.ComponentSpec, task_name: str
                 ) -> pb.PipelineDeploymentConfig.PipelineContainerSpec:
    deployment = json_format.ParseDict(json_format.MessageToDict(spec.deployment_spec), pb.PipelineDeploymentConfig())
    executor = deployment.executors[component.executor_label]
    kind = executor.WhichOneof("spec")
    if kind != "container":
        raise ValueError(
            f"task {task_name!r} has a {kind} executor ({component.executor_label}); this launcher double runs "
            "container executors only (open-source KFP 2.x does not run TFX resolver executors either).")
    return executor.container


def root_parameters(spec: pb.PipelineSpec, runtime_config: pb.PipelineJob.RuntimeConfig) -> Dict[str, struct_pb2.Value]:
    """The pipeline's input parameters: the runtime config's values over the spec's defaults."""
    values = {name: definition.default_value for name, definition in spec.root.input_definitions.parameters.items()
              if definition.HasField("default_value")}
    values.update(runtime_config.parameter_values)
    return values


def merge_artifact(source: pb.RuntimeArtifact, destination: pb.RuntimeArtifact) -> None:
    """What the launcher does with an executor's output artifact: a URI it set wins, metadata fields are merged in."""
    if source.uri:
        destination.uri = source.uri
    for key, value in source.metadata.fields.items():
        destination.metadata.fields[key].CopyFrom(value)


def build_executor_input(
    task_name: str,
    task: pb.PipelineTaskSpec,
    component: pb.ComponentSpec,
    parameters: Mapping[str, struct_pb2.Value],
    published: Mapping[str, pb.ExecutorOutput],
    task_root: str,
) -> pb.ExecutorInput:
    """The ExecutorInput of one task: its inputs resolved from constants and upstream outputs, its outputs provisioned."""
    executor_input = pb.ExecutorInput()
    inputs = executor_input.inputs
    for key, source in task.inputs.parameters.items():
        kind = source.WhichOneof("kind")
        if kind == "runtime_value" and source.runtime_value.HasField("constant"):
            inputs.parameter_values[key].CopyFrom(source.runtime_value.constant)
        elif kind == "component_input_parameter":
            inputs.parameter_values[key].CopyFrom(parameters[source.component_input_parameter])
        elif kind == "task_output_parameter":
            producer = source.task_output_parameter
            inputs.parameter_values[key].CopyFrom(
                published[producer.producer_task].parameter_values[producer.output_parameter_key])
        else:
            raise ValueError(f"task {task_name!r} parameter {key!r}: {kind} inputs are not supported "
                             "(kubeflow.runner writes schema 2.1.0 constants).")
    for key, source in task.inputs.artifacts.items():
        if not source.HasField("task_output_artifact"):
            raise ValueError(f"task {task_name!r} artifact {key!r}: only upstream task outputs are supported.")
        producer = source.task_output_artifact
        inputs.artifacts[key].CopyFrom(published[producer.producer_task].artifacts[producer.output_artifact_key])
    outputs = executor_input.outputs
    for key, definition in component.output_definitions.artifacts.items():
        outputs.artifacts[key].artifacts.add(type=definition.artifact_type, uri=os.path.join(task_root, key))
    for key in component.output_definitions.parameters:
        outputs.parameters[key].output_file = os.path.join(task_root, "parameters", key)
    outputs.output_file = os.path.join(task_root, EXECUTOR_OUTPUT_FILE)
    return executor_input


def read_executor_output(path: str) -> pb.ExecutorOutput:
    executor_output = pb.ExecutorOutput()
    if os.path.exists(path):
        with open(path) as f:
            json_format.Parse(f.read(), executor_output)
    return executor_output


def container_env() -> Dict[str, str]:
    """The environment of every container process: this one's, the image's ENV, this venv's `python` first."""
    return {**os.environ, **IMAGE_ENV,
            "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}


def run_container(command: Sequence[str], args: Sequence[str], executor_input: pb.ExecutorInput,
                  component: pb.ComponentSpec, run_id: str, task_name: str, pipeline_root: str, log_path: str,
                  fork_server: Optional[ForkServer] = None) -> List[str]:
    """One container process, as its pod would run it: placeholders filled, `python` from this venv, log to a file;
    forked from `fork_server` if given (a `python -m` command), else a fresh interpreter.

    Returns the command line it ran."""
    executor_input_dict = executor_input_utils.executor_input_to_dict(executor_input, component)
    argv = placeholder_utils.replace_placeholders(
        full_command=[*command, *args], executor_input_dict=executor_input_dict,
        pipeline_resource_name=run_id, task_resource_name=task_name, pipeline_root=pipeline_root)
    with tempfile.TemporaryDirectory(prefix=f"{task_name}-workdir-") as workdir:
        if fork_server is not None and is_python_module_command(argv):
            returncode = fork_server.run(argv, workdir, log_path)
        else:
            with open(log_path, "ab") as log:
                returncode = subprocess.run(argv, cwd=workdir, env=container_env(), stdout=log,
                                            stderr=subprocess.STDOUT).returncode
    if returncode != 0:
        with open(log_path, errors="replace") as f:
            tail = "".join(f.readlines()[-LOG_TAIL_LINES:])
        raise TaskFailed(f"task {task_name!r} failed: `{' '.join(command)}` exited with {returncode}; "
                         f"full log {log_path}, last lines:\n{tail}")
    return argv


def publish(task_name: str, run_id: str, executor_input: pb.ExecutorInput, written: pb.ExecutorOutput) -> pb.ExecutorOutput:
    """The task's outputs as downstream tasks receive them: each provisioned artifact (URI, type) with what the
    executor wrote merged in, named as the metadata store would name it; the output parameters it wrote."""
    published = pb.ExecutorOutput()
    for key, provisioned in executor_input.outputs.artifacts.items():
        artifact = published.artifacts[key].artifacts.add()
        artifact.CopyFrom(provisioned.artifacts[0])
        if key in written.artifacts:
            merge_artifact(written.artifacts[key].artifacts[0], artifact)
        artifact.name = f"{run_id}/{task_name}/{key}"
    for key in executor_input.outputs.parameters:
        if key not in written.parameter_values:
            raise TaskFailed(f"task {task_name!r} did not write its output parameter {key!r}.")
        published.parameter_values[key].CopyFrom(written.parameter_values[key])
    return published


def run(spec_path: str, run_id: Optional[str] = None, progress: Callable[[str], None] = print,
        warm: bool = False) -> PipelineRun:
    """Executes every task of the spec's root DAG; raises TaskFailed naming the first task that fails.

    warm: fork each task's process from one interpreter that imported TensorFlow, TFX and Beam once
    (kubeflow/forkserver.py), instead of starting a fresh interpreter per process."""
    spec, runtime_config = load_spec(spec_path)
    pipeline_root = (runtime_config.gcs_output_directory or spec.default_pipeline_root).rstrip("/")
    if not pipeline_root:
        raise ValueError(f"{spec_path} has no pipeline root (runtimeConfig.gcsOutputDirectory or defaultPipelineRoot).")
    pipeline_name = spec.pipeline_info.name
    run_id = run_id or f"{pipeline_name}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S-%f}"
    run_root = os.path.join(local_path(pipeline_root), pipeline_name, run_id)
    log_dir = os.path.join(run_root, "logs")
    os.makedirs(log_dir)  # a new run id: an existing directory would mix two runs' artifacts
    parameters = root_parameters(spec, runtime_config)
    with (ForkServer(container_env(), os.path.join(log_dir, "forkserver.log")) if warm
          else contextlib.nullcontext()) as fork_server:
        return PipelineRun(run_id, run_root, run_tasks(spec, parameters, run_root, pipeline_root, run_id, progress,
                                                       fork_server))


def run_tasks(spec: pb.PipelineSpec, parameters: Mapping[str, struct_pb2.Value], run_root: str, pipeline_root: str,
              run_id: str, progress: Callable[[str], None], fork_server: Optional[ForkServer]) -> List[TaskRun]:
    """Runs every task in topological order and returns what each did."""
    tasks = spec.root.dag.tasks
    log_dir = os.path.join(run_root, "logs")
    published: Dict[str, pb.ExecutorOutput] = {}
    runs: List[TaskRun] = []
    for name in topological_order(tasks):
        task = tasks[name]
        component = spec.components[task.component_ref.name]
        container = container_of(spec, component, name)
        task_root = os.path.join(run_root, name)
        os.makedirs(task_root)
        log_path = os.path.join(log_dir, f"{name}.log")
        executor_input = build_executor_input(name, task, component, parameters, published, task_root)
        for artifacts in executor_input.outputs.artifacts.values():
            # On gs:// no directory has to exist before an executor writes into it; on a local disk it does
            # (TFX's own launcher creates them too: tfx.orchestration.portable.outputs_utils.make_output_dirs).
            os.makedirs(artifacts.artifacts[0].uri)
        progress(f"[{len(runs) + 1}/{len(tasks)}] {name} ...")
        start = time.monotonic()
        commands = []
        if container.lifecycle.HasField("pre_cache_check"):
            hook = container.lifecycle.pre_cache_check
            commands.append(run_container(hook.command, hook.args, executor_input, component, run_id, name,
                                          pipeline_root, log_path, fork_server))
            driver_output = read_executor_output(executor_input.outputs.output_file)
            for key, artifacts in driver_output.artifacts.items():
                merge_artifact(artifacts.artifacts[0], executor_input.outputs.artifacts[key].artifacts[0])
        commands.append(run_container(container.command, container.args, executor_input, component, run_id, name,
                                      pipeline_root, log_path, fork_server))
        seconds = time.monotonic() - start
        published[name] = publish(name, run_id, executor_input, read_executor_output(executor_input.outputs.output_file))
        runs.append(TaskRun(name, seconds, executor_input, published[name], log_path, commands))
        progress(f"[{len(runs)}/{len(tasks)}] {name} succeeded in {seconds:.1f} s")
    return runs


def summary(pipeline_run: PipelineRun) -> str:
    lines = [f"run {pipeline_run.run_id}: {len(pipeline_run.tasks)} tasks succeeded, artifacts under {pipeline_run.run_root}",
             f"{'task':<34}{'wall time':>12}"]
    lines += [f"{t.name:<34}{t.seconds:>10.1f} s" for t in pipeline_run.tasks]
    lines.append(f"{'total':<34}{sum(t.seconds for t in pipeline_run.tasks):>10.1f} s")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kubeflow.launcher", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="a .json PipelineJob or .yaml PipelineSpec written by `python -m kubeflow.runner`")
    parser.add_argument("--run_id", help="run directory name under <pipeline root>/<pipeline name>/ (default: name and UTC time)")
    parser.add_argument("--warm", action="store_true",
                        help="fork each task's process from one interpreter that imported TensorFlow, TFX and Beam once")
    args = parser.parse_args(argv)
    try:
        pipeline_run = run(args.spec, args.run_id, warm=args.warm)
    except (ValueError, FileExistsError, TaskFailed) as e:
        sys.exit(f"error: {e}")
    print(summary(pipeline_run))


if __name__ == "__main__":
    main()
