"""Kubeflow orchestration: the compiled KFP v2 spec is valid, and it is the local pipeline, task for task.

No cluster is needed or used: kubeflow.runner compiles into tmp_path, the files are parsed strictly with the
KFP pipeline-spec protos, and compared with create_pipeline(...) built from the same flags.
"""
import importlib
import json
import os
import re
from typing import Any, Dict, List

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from kubeflow import runner
from modules.glue import get_task
from pipeline import configs, pipeline, run

IMAGE = "europe-docker.pkg.dev/my-project/ml/adapter-bert-tfx:1"
ROOT = "gs://my-bucket/pipeline-root"
DATA = "gs://my-bucket/glue"
SERVING = "gs://my-bucket/serving"
BEAM_ARGS = ["--runner=DataflowRunner", "--project=my-project", "--region=europe-west4",
             "--temp_location=gs://my-bucket/tmp", f"--sdk_container_image={IMAGE}"]
RUN_EXECUTOR = ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
GPU_IMAGE = "europe-docker.pkg.dev/my-project/ml/adapter-bert-tfx-gpu:1"
# The Trainer's machine, as flags and as KFP's own SDK sets the same on a task (kfp.dsl.PipelineTask).
TRAINER_FLAGS = ["--trainer_cpu", "7500m", "--trainer_memory", "30Gi", "--trainer_accelerator", "NVIDIA_TESLA_T4",
                 "--trainer_accelerator_count", "2", "--trainer_image", GPU_IMAGE]
KFP_TASK_SETTINGS = [("set_cpu_limit", "7500m"), ("set_memory_limit", "30Gi"),
                     ("set_accelerator_type", "NVIDIA_TESLA_T4"), ("set_accelerator_limit", 2)]
DOCKERFILE = os.path.join(configs.REPO_ROOT, "kubeflow", "Dockerfile")


def flags(task: str, output: str, *extra: str) -> List[str]:
    return ["--image", IMAGE, "--pipeline_root", ROOT, "--data_dir", DATA, "--serving_dir", SERVING,
            "--task", task, "--output", output, *extra, "--", *BEAM_ARGS]


def compile_to(path: str, task: str, *extra: str) -> None:
    runner.main(flags(task, path, *extra))


def local_pipeline(task: str, *extra: str):
    """The pipeline the local runner would build from the same flags."""
    args, beam_args = runner.parse_args(flags(task, "unused.json", *extra))
    return pipeline.create_pipeline(
        pipeline_name=pipeline.pipeline_name_for(task, configs.PIPELINE_NAME), pipeline_root=ROOT, data_dir=DATA,
        serving_dir=SERVING, config=run.training_config(args, check_backbone=False), beam_pipeline_args=beam_args,
        compare_with_baseline=not args.no_baseline, constant_margin=args.constant_margin,
    )


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Dict[str, str]:
    out = tmp_path_factory.mktemp("kubeflow")
    paths = {"mrpc": str(out / "adapter-bert-glue-mrpc.json"), "mrpc_yaml": str(out / "adapter-bert-glue-mrpc.yaml"),
             "mnli": str(out / "nested" / "adapter-bert-glue-mnli.json"),
             "mrpc_no_baseline": str(out / "adapter-bert-glue-mrpc-no-baseline.json"),
             "mrpc_trainer_machine": str(out / "adapter-bert-glue-mrpc-trainer-machine.json")}
    compile_to(paths["mrpc"], "mrpc")
    compile_to(paths["mrpc_trainer_machine"], "mrpc", *TRAINER_FLAGS)
    compile_to(paths["mrpc_no_baseline"], "mrpc", "--no_baseline")
    compile_to(paths["mrpc_yaml"], "mrpc")
    # A hub backbone that cannot be downloaded here: it is resolved in the container at run time, not now.
    compile_to(paths["mnli"], "mnli", "--model", "bert-base-cased", "--bottleneck_size", "32", "--epochs", "1")
    return paths


def strict_job(path: str) -> pipeline_spec_pb2.PipelineSpec:
    """Parses the PipelineJob wrapper and its pipelineSpec, both rejecting any unknown field."""
    with open(path) as f:
        text = f.read()
    json_format.Parse(text, pipeline_spec_pb2.PipelineJob(), ignore_unknown_fields=False)
    return json_format.ParseDict(json.loads(text)["pipelineSpec"], pipeline_spec_pb2.PipelineSpec(),
                                 ignore_unknown_fields=False)


def spec_dict(path: str) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)["pipelineSpec"]


def constant(task: Dict[str, Any], parameter: str) -> Any:
    return task["inputs"]["parameters"][parameter]["runtimeValue"]["constant"]


def pusher(tasks: Dict[str, Any]) -> Dict[str, Any]:
    (task,) = [task for name, task in tasks.items() if "Pusher" in name]
    return task


def test_json_is_a_strict_pipeline_job_with_root_and_name(outputs):
    spec = strict_job(outputs["mrpc"])
    with open(outputs["mrpc"]) as f:
        job = json.load(f)
    assert spec.schema_version == "2.1.0"
    assert spec.pipeline_info.name == job["displayName"] == "adapter-bert-glue-mrpc"
    assert spec.default_pipeline_root == job["runtimeConfig"]["gcsOutputDirectory"] == ROOT


def test_yaml_is_a_strict_pipeline_spec_that_kfp_loads(outputs):
    from kfp import components

    with open(outputs["mrpc_yaml"]) as f:
        spec = json_format.ParseDict(yaml.safe_load(f), pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    assert spec.default_pipeline_root == ROOT
    assert json_format.MessageToDict(spec) == json_format.MessageToDict(strict_job(outputs["mrpc"]))
    loaded = components.load_component_from_file(outputs["mrpc_yaml"])  # what kfp.Client uploads
    assert set(loaded.pipeline_spec.root.dag.tasks) == set(spec.root.dag.tasks)


@pytest.mark.parametrize("kind", ["mrpc", "mrpc_yaml"])
def test_vertex_ai_sdk_builds_a_job_from_it(outputs, kind):
    """What aiplatform.PipelineJob(template_path=...).submit() would send, built offline (no submit, no credentials)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform

    job = aiplatform.PipelineJob(display_name="test", template_path=outputs[kind], project="my-project",
                                 location="europe-west4", credentials=AnonymousCredentials())
    assert job._gca_resource.runtime_config.gcs_output_directory == ROOT
    assert set(job._gca_resource.pipeline_spec["root"]["dag"]["tasks"]) == set(spec_dict(outputs["mrpc"])["root"]["dag"]["tasks"])


@pytest.mark.parametrize("task", ["mrpc", "mnli"])
def test_dag_is_the_local_pipeline(outputs, task):
    local = local_pipeline(task)
    tasks = strict_job(outputs[task]).root.dag.tasks
    assert set(tasks) == {c.id for c in local.components}
    for name, kfp_task in tasks.items():
        upstream = {u.id for u in next(c for c in local.components if c.id == name).upstream_nodes}
        assert set(kfp_task.dependent_tasks) == upstream, name


@pytest.mark.parametrize("kind", ["mrpc", "mrpc_no_baseline"])
def test_the_gate_needs_no_resolver_task_so_open_source_kfp_runs_it(outputs, kind):
    """The baseline is read from the serving directory at run time: no resolver task, no ML Metadata query."""
    spec = spec_dict(outputs[kind])
    assert all(set(executor) == {"container"} for executor in spec["deploymentSpec"]["executors"].values())
    evaluator = spec["root"]["dag"]["tasks"]["Evaluator_eval"]
    assert set(evaluator["inputs"]["artifacts"]) == {"examples", "model"}
    if kind == "mrpc":
        assert constant(evaluator, "served_models_dir") == f"{SERVING}/mrpc"
    else:
        assert "served_models_dir" not in evaluator["inputs"]["parameters"]
    assert constant(evaluator, "constant_margin") == configs.DEFAULT_CONSTANT_MARGIN


def test_only_the_gated_evaluator_is_never_taken_from_the_cache(outputs):
    """What is served can change between runs; every other task keeps KFP's caching."""
    tasks = spec_dict(outputs["mrpc"])["root"]["dag"]["tasks"]
    assert [name for name, task in tasks.items() if not task.get("cachingOptions", {}).get("enableCache")] == [
        pipeline.BLESSING_EVALUATOR]


def test_mnli_evaluates_both_dev_sets_and_pushes_on_matched(outputs):
    tasks = spec_dict(outputs["mnli"])["root"]["dag"]["tasks"]
    evaluators = sorted(name for name in tasks if name.startswith("Evaluator"))
    assert evaluators == ["Evaluator_eval", "Evaluator_eval_mismatched"]
    for name, split in [("Evaluator_eval", "eval"), ("Evaluator_eval_mismatched", "eval_mismatched")]:
        assert json.loads(constant(tasks[name], "example_splits")) == [split]
    assert "Evaluator_eval_mismatched" not in pusher(tasks)["dependentTasks"]


@pytest.mark.parametrize("task", ["mrpc", "mnli"])
def test_every_executor_runs_the_image_with_the_beam_args(outputs, task):
    spec = spec_dict(outputs[task])
    executors = spec["deploymentSpec"]["executors"]
    for name, kfp_task in spec["root"]["dag"]["tasks"].items():
        executor = executors[spec["components"][kfp_task["componentRef"]["name"]]["executorLabel"]]
        container = executor["container"]
        assert container["image"] == IMAGE, name
        assert container["command"] == RUN_EXECUTOR, name
        assert container["args"][-len(BEAM_ARGS):] == BEAM_ARGS, name


def test_executors_and_module_paths_resolve_in_this_project(outputs):
    spec = spec_dict(outputs["mrpc"])
    tasks, executors = spec["root"]["dag"]["tasks"], spec["deploymentSpec"]["executors"]
    class_paths = {}
    for name, kfp_task in tasks.items():
        args = executors[spec["components"][kfp_task["componentRef"]["name"]]["executorLabel"]].get("container", {}).get("args", [])
        if "--executor_class_path" in args:
            class_paths[name] = args[args.index("--executor_class_path") + 1]
    assert class_paths["GlueExampleGen"] == "components.glue_example_gen.executor.Executor"
    assert class_paths["GlueSchemaGen"] == "components.glue_schema_gen.GlueSchemaGen_Executor"
    assert class_paths["DataGate"] == "components.data_gate.DataGate_Executor"
    for path in class_paths.values():  # the pods import exactly these, from the same packages
        module, _, attribute = path.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), attribute), type), path
    assert constant(tasks["Transform"], "preprocessing_fn") == pipeline.PREPROCESSING_FN == "modules.preprocessing.preprocessing_fn"
    assert constant(tasks["Trainer"], "run_fn") == pipeline.RUN_FN == "modules.trainer.run_fn"
    assert '"module": "modules.metrics"' in constant(tasks["Evaluator_eval"], "eval_config")


def test_flags_reach_the_spec_and_remote_data_is_not_read_now(outputs):
    tasks = spec_dict(outputs["mnli"])["root"]["dag"]["tasks"]
    config = json.loads(constant(tasks["Trainer"], "custom_config"))
    assert (config["task"], config["model"], config["bottleneck_size"], config["epochs"]) == ("mnli", "bert-base-cased", 32, 1)
    # Transform gets the tokenization settings only: a run changing a training setting reuses its cached output.
    assert json.loads(constant(tasks["Transform"], "custom_config")) == {
        key: config[key] for key in ("task", "task_spec", "model", "max_seq_length")}
    assert constant(tasks["GlueExampleGen"], "input_base") == DATA
    splits = json.loads(constant(tasks["GlueExampleGen"], "input_config"))["splits"]
    mnli = get_task("mnli")
    assert [(s["name"], s["pattern"]) for s in splits] == [  # every split declared: test files are predicted
        (split, mnli.split_path(split, DATA)[len(DATA) + 1:]) for split in mnli.splits]
    assert [s["name"] for s in splits][-3:] == ["test", "test_mismatched", "test_ax"]
    assert f'"{SERVING}/mnli"' in json.dumps(pusher(tasks)["inputs"]["parameters"]).replace('\\"', '"')
    assert constant(tasks["PredictionWriter"], "predictions_dir") == SERVING.rsplit("/", 1)[0] + "/predictions"


@pytest.mark.parametrize("argv, message", [
    (["--pipeline_root", ROOT, "--data_dir", DATA, "--serving_dir", SERVING], "--image"),
    (["--image", IMAGE, "--pipeline_root", "/tmp/root", "--data_dir", DATA, "--serving_dir", SERVING],
     "--pipeline_root '/tmp/root' must be a URI"),
    (["--image", IMAGE, "--pipeline_root", ROOT, "--data_dir", "../glue", "--serving_dir", SERVING],
     "--data_dir '../glue' must be a URI"),
    (["--image", IMAGE, "--pipeline_root", ROOT, "--data_dir", DATA, "--serving_dir", SERVING, "--output", "p.txt"],
     "must end with one of .json, .yaml, .yml"),
    (flags("mrpc", "p.json", "--trainer_cpu", "0"), "--trainer_cpu '0': expected a positive number of vCPUs"),
    (flags("mrpc", "p.json", "--trainer_cpu", "8 cores"), "--trainer_cpu '8 cores': expected a positive number"),
    (flags("mrpc", "p.json", "--trainer_memory", "32"), "--trainer_memory '32': expected a positive amount with its unit"),
    (flags("mrpc", "p.json", "--trainer_memory", "32GB"), "--trainer_memory '32GB': expected"),
    (flags("mrpc", "p.json", "--trainer_accelerator_count", "2"), "--trainer_accelerator_count needs --trainer_accelerator"),
    (flags("mrpc", "p.json", "--trainer_accelerator", "T4"), "--trainer_accelerator 'T4': expected a Vertex AI accelerator"),
    (flags("mrpc", "p.json", "--trainer_accelerator", "nvidia.com/gpu", "--trainer_accelerator_count", "0"),
     "--trainer_accelerator_count 0: expected a positive number"),
])
def test_cli_rejects_what_cannot_run_on_a_cluster(argv, message, capsys):
    with pytest.raises(SystemExit):
        runner.parse_args(argv)
    assert message in capsys.readouterr().err


def executor_label(spec: Dict[str, Any], task: str) -> str:
    return spec["components"][spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]]["executorLabel"]


def executor_of(spec: Dict[str, Any], task: str) -> Dict[str, Any]:
    return spec["deploymentSpec"]["executors"][executor_label(spec, task)]


def kfp_sdk_resources(tmp_path) -> Dict[str, Any]:
    """The container resources KFP's own SDK writes for a task with KFP_TASK_SETTINGS."""
    from kfp import compiler, dsl

    @dsl.container_component
    def train():
        return dsl.ContainerSpec(image=GPU_IMAGE, command=["true"])

    @dsl.pipeline(name="resources")
    def resources_pipeline():
        task = train()
        for method, value in KFP_TASK_SETTINGS:
            getattr(task, method)(value)

    path = str(tmp_path / "kfp.yaml")
    compiler.Compiler().compile(resources_pipeline, path)
    with open(path) as f:
        (executor,) = yaml.safe_load(f)["deploymentSpec"]["executors"].values()
    return executor["container"]["resources"]


def test_trainer_machine_flags_set_the_trainer_container_only(outputs, tmp_path):
    spec = spec_dict(outputs["mrpc_trainer_machine"])
    deployment = json_format.ParseDict(spec["deploymentSpec"], pipeline_spec_pb2.PipelineDeploymentConfig(),
                                       ignore_unknown_fields=False)  # the field names KFP and Vertex AI read
    trainer = executor_of(spec, "Trainer")["container"]
    resources = deployment.executors[executor_label(spec, "Trainer")].container.resources
    assert (resources.cpu_limit, round(resources.memory_limit, 6)) == (7.5, 32.212255)  # vCPUs; GB (30 GiB)
    assert (resources.accelerator.type, resources.accelerator.count) == ("NVIDIA_TESLA_T4", 2)
    assert trainer["resources"] == kfp_sdk_resources(tmp_path)  # the same values and units as KFP's SDK writes
    assert trainer["image"] == GPU_IMAGE
    for task in spec["root"]["dag"]["tasks"]:
        if task != "Trainer":
            container = executor_of(spec, task)["container"]
            assert "resources" not in container and container["image"] == IMAGE, task


def test_without_trainer_flags_no_task_asks_for_a_machine(outputs):
    spec = spec_dict(outputs["mrpc"])
    containers = [executor["container"] for executor in spec["deploymentSpec"]["executors"].values()]
    assert [c for c in containers if "resources" in c] == []
    assert {c["image"] for c in containers} == {IMAGE}


def test_training_flags_are_validated_before_compiling(tmp_path):
    with pytest.raises(SystemExit, match="--bottleneck_size"):
        compile_to(str(tmp_path / "p.json"), "mrpc", "--bottleneck_size", "0")
    with pytest.raises(SystemExit, match="Unknown GLUE task"):
        compile_to(str(tmp_path / "p.json"), "mrcp")
    assert not os.listdir(tmp_path)


def dockerfile_instructions() -> List[List[str]]:
    """Each instruction as its words, continuation lines joined, comments dropped."""
    with open(DOCKERFILE) as f:
        text = re.sub(r"\\\n", " ", "".join(line for line in f if not line.lstrip().startswith("#")))
    return [line.split() for line in text.splitlines() if line.strip()]


def test_dockerfile_extends_the_tfx_image_with_the_locked_project():
    import apache_beam
    import tfx

    instructions = dockerfile_instructions()
    assert instructions[0] == ["FROM", f"gcr.io/tfx-oss-public/tfx:{tfx.__version__}"]
    copies = [words[1:] for words in instructions if words[0] == "COPY"]
    beam_sdk = [c for c in copies if c[0].startswith("--from=")]
    assert beam_sdk == [[f"--from=apache/beam_python3.10_sdk:{apache_beam.__version__}", "/opt/apache/beam", "/opt/apache/beam"]]
    with open(os.path.join(configs.REPO_ROOT, ".dockerignore")) as f:
        context = {line.strip()[1:] for line in f if line.startswith("!")}
    for source, _ in (c for c in copies if not c[0].startswith("--from=")):
        assert os.path.exists(os.path.join(configs.REPO_ROOT, source)), source
        assert source in context, f"{source} is excluded from the build context by .dockerignore"
    runs = [" ".join(words[1:]) for words in instructions if words[0] == "RUN"]
    assert "python -m pip install --no-deps -r requirements.lock" in runs
    assert ["ENV", "TF_USE_LEGACY_KERAS=1"] == [w for w in instructions if w[0] == "ENV"][0][:2]


def module_of(name: str) -> str:
    """'components.data_gate.DataGate_Executor' -> 'components.data_gate'; 'modules.metrics' stays: it is a module."""
    path = os.path.join(configs.REPO_ROOT, *name.split("."))
    return name if os.path.isfile(path + ".py") or os.path.isdir(path) else name.rpartition(".")[0]


def test_dockerfile_imports_every_module_the_spec_names(outputs):
    project_names = r"(?<![\w.])((?:components|modules)(?:\.\w+)+)"  # not tfx.components...
    named = {module_of(name) for name in re.findall(project_names, json.dumps(spec_dict(outputs["mrpc"])))}
    assert {"modules.preprocessing", "modules.trainer", "components.data_gate"} <= named
    smoke = next(" ".join(w) for w in dockerfile_instructions() if w[0] == "RUN" and "pkgutil.walk_packages" in " ".join(w))
    walked = set(re.search(r"for p in \(([^)]*)\)", smoke).group(1).replace(" ", "").split(","))
    copied = {words[1] for words in dockerfile_instructions() if words[0] == "COPY"}
    for module in named:  # a module of this repository, in a package the image holds and imports in full
        path = os.path.join(configs.REPO_ROOT, *module.split("."))
        assert os.path.isfile(path + ".py") or os.path.isdir(path), module
        assert module.split(".")[0] in walked & copied, module
