"""The bundling step: every task's latest pushed adapters on one backbone, pushed as one SavedModel.

    from components.adapter_bundle import find_pushed_adapters, create_bundle
    sources = find_pushed_adapters("outputs/metadata.sqlite", ["mrpc", "rte", "sst2"])
    result = create_bundle(sources, serving_dir="outputs/serving")   # -> outputs/serving/glue_bundle/<version>/

A plain Python step (run by `python -m pipeline.bundle`), not a TFX component: its inputs are the outputs of
N separate pipelines (one per task, each its own ML Metadata context, see pipeline/pipeline.py), which a
component inside any one of them cannot consume. A bundling pipeline would need a resolver reading the
other pipelines' contexts, i.e. this same query, plus orchestration that buys nothing here (no Beam, and
caching would only hide a newly pushed task model). `create_bundle` takes plain directories, so wrapping
it in a component later is a thin layer.

Where a task's adapters come from: the task pipeline "adapter-bert-glue-<task>" in ML Metadata; its
newest PushedModel with pushed=1 (highest pushed version: what TF Serving serves for that task); the
Pusher execution that wrote it; that execution's input Model artifact; `<Model uri>/adapters`, written
by modules.trainer.run_fn. Explicit directories (a Model artifact or its adapters directory) work too.

Everything is checked and traced before anything is written (see modules.bundle.BundleError): a refused
combination leaves no directory behind. The SavedModel is written to a private temporary directory and
published by components.pusher.push_model: copied to <serving_dir>/<name>/.tmp-* and renamed to the next
free numeric version in one rename(2), so a model server never sees a half-written version.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import tempfile
from typing import Dict, List, Optional, Sequence

from modules import backbone as backbone_lib
from modules.bundle import (
    ALL_TASKS_SIGNATURE,
    GENERIC_SIGNATURE,
    BundleError,
    BundleModule,
    TaskAdapters,
    build_bundle,
    read_task_adapters,
    save_bundle,
)
from modules.glue import GlueTask, canonical_name
from modules.metrics import OUTPUT_LABEL, OUTPUT_LABEL_NAME, OUTPUT_PROBABILITIES, OUTPUT_SCORE

BUNDLE_NAME = "glue_bundle"
MANIFEST_FILE = os.path.join("assets.extra", "bundle.json")  # TF Serving ignores assets.extra
PIPELINE_PREFIX = "adapter-bert-glue"  # pipeline.configs.PIPELINE_NAME; task pipelines are "<prefix>-<task>"


@dataclasses.dataclass(frozen=True)
class AdapterSource:
    """Where one task's adapters come from: a directory, and (from ML Metadata) the push it belongs to."""

    path: str  # a Model artifact directory or its adapters/ subdirectory
    provenance: Dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class BundleResult:
    path: str  # <serving_dir>/<name>/<version>
    version: str
    tasks: List[str]
    manifest: Dict
    dropped: List[str] = dataclasses.field(default_factory=list)  # tasks the previous version served, this one not


def _metadata_store(metadata_path: str):
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    if not os.path.isfile(metadata_path):
        raise BundleError(f"No ML Metadata database at {metadata_path}: run the task pipelines first "
                          "(python -m pipeline.run --task <task>), or pass adapter directories with --adapters.")
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def latest_pushed_model(store, pipeline_name: str) -> AdapterSource:
    """The Model artifact behind the newest successful push of one pipeline, as an AdapterSource."""
    from ml_metadata.proto import metadata_store_pb2

    context = store.get_context_by_type_and_name("pipeline", pipeline_name)
    if context is None:
        raise BundleError(f"Pipeline {pipeline_name} has never run with this ML Metadata database.")
    type_names = {t.id: t.name for t in store.get_artifact_types()}
    pushed = [a for a in store.get_artifacts_by_context(context.id)
              if type_names.get(a.type_id) == "PushedModel" and a.state == metadata_store_pb2.Artifact.LIVE
              and a.custom_properties["pushed"].int_value == 1]
    if not pushed:
        raise BundleError(f"Pipeline {pipeline_name} has no pushed (blessed) model yet.")

    def newest(artifact) -> tuple:
        version = artifact.custom_properties["pushed_version"].string_value
        return (int(version) if version.isdigit() else -1, artifact.create_time_since_epoch, artifact.id)

    push = max(pushed, key=newest)
    producers = [e.execution_id for e in store.get_events_by_artifact_ids([push.id])
                 if e.type == metadata_store_pb2.Event.OUTPUT]
    inputs = [e.artifact_id for e in store.get_events_by_execution_ids(producers)
              if e.type == metadata_store_pb2.Event.INPUT]
    models = [a for a in store.get_artifacts_by_id(inputs) if type_names.get(a.type_id) == "Model"]
    if len(models) != 1:
        raise BundleError(f"Pipeline {pipeline_name}: the push {push.uri} has {len(models)} input Model artifacts, expected 1.")
    return AdapterSource(path=models[0].uri, provenance={
        "pipeline": pipeline_name,
        "model_artifact_id": models[0].id,
        "model_uri": models[0].uri,
        "pushed_destination": push.custom_properties["pushed_destination"].string_value,
        "pushed_version": push.custom_properties["pushed_version"].string_value,
    })


def find_pushed_adapters(metadata_path: str, tasks: Sequence[str],
                         pipeline_prefix: str = PIPELINE_PREFIX) -> List[AdapterSource]:
    """Each task's latest pushed Model artifact, read from the ML Metadata SQLite file (opened read-only)."""
    store = _metadata_store(metadata_path)
    sources = []
    for task in tasks:
        name = f"{pipeline_prefix}-{canonical_name(task)}"
        try:
            sources.append(latest_pushed_model(store, name))
        except BundleError as e:
            raise BundleError(f"Task {task}: {e} Run `python -m pipeline.run --task {task}` (or --task_spec FILE "
                              "for your own dataset; blessed and pushed) first, or pass its adapters directory "
                              "with --adapters.") from e
    return sources


def backbone_of(adapter_sets: Sequence[TaskAdapters], model: Optional[str]) -> str:
    """`model` if given, else the backbone every adapter set names (the weights fingerprint is checked anyway)."""
    if model:
        return model
    named = sorted({str(adapters.config.get("model", backbone_lib.DEFAULT_MODEL)) for adapters in adapter_sets})
    if len(named) != 1:
        raise BundleError(f"The adapter sets name different backbones ({', '.join(named)}): say which one with --model "
                          "(adapters trained on other weights are refused).")
    return named[0]


def task_outputs(task: GlueTask) -> List[str]:
    """The outputs of a task's signature (modules.trainer.predict_outputs)."""
    return [OUTPUT_SCORE] if task.is_regression else [OUTPUT_PROBABILITIES, OUTPUT_LABEL, OUTPUT_LABEL_NAME]


def manifest(module: BundleModule, model: str, adapter_sets: Sequence[TaskAdapters],
             sources: Sequence[AdapterSource]) -> Dict:
    """What the bundle holds and where each task came from; stored as assets.extra/bundle.json."""
    first = adapter_sets[0].config["backbone"]
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backbone": {"model": model, **first},
        "signatures": {
            **{name: {"inputs": ["sentence1"] + (["sentence2"] if module.tasks[name].text_b else []),
                      "outputs": task_outputs(module.tasks[name])}
               for name in module.task_names},
            GENERIC_SIGNATURE: {"inputs": ["task", "sentence1", "sentence2"],
                                "outputs": ["probabilities", "label", "score", "num_labels"],
                                "max_labels": module.max_labels},
            ALL_TASKS_SIGNATURE: {"inputs": ["sentence1", "sentence2"],
                                  "outputs": [f"{name}/{output}" for name in module.task_names
                                              for output in task_outputs(module.tasks[name])],
                                  "shared_prefixes": [{"tasks": list(p.sharing), "layers": p.layers,
                                                       "max_seq_length": p.max_seq_length}
                                                      for p in module.shared_prefixes() if len(p.sharing) > 1]},
        },
        "tasks": {
            adapters.task.name: {
                "num_labels": adapters.task.num_labels,
                "max_seq_length": adapters.max_seq_length,
                "adapter": adapters.config["adapter"],
                "trained_parameters": int(sum(int(v.shape.num_elements()) for v in module.task_variables[adapters.task.name])),
                "adapters_dir": adapters.directory,
                "adapter_weights_sha256": adapters.weights_sha256(),
                **({"source": source.provenance} if source.provenance else {}),
            }
            for adapters, source in zip(adapter_sets, sources)
        },
        "backbone_parameters": int(sum(int(v.shape.num_elements()) for v in module.backbone_variables)),
    }


def served_tasks(base_directory: str) -> List[str]:
    """The tasks of the newest bundle version under base_directory (none if there is none or it has no manifest)."""
    from components.pusher import existing_versions

    versions = existing_versions(base_directory)
    path = os.path.join(base_directory, str(versions[-1]), MANIFEST_FILE) if versions else None
    if not path or not os.path.isfile(path):
        return []
    with open(path) as f:
        return sorted(json.load(f).get("tasks", {}))


def create_bundle(sources: Sequence[AdapterSource], serving_dir: str, model: Optional[str] = None,
                  name: str = BUNDLE_NAME) -> BundleResult:
    """Checks, builds and traces the bundle, then publishes it as <serving_dir>/<name>/<version>/.

    Raises BundleError, with nothing written, for duplicate tasks, adapters of another backbone (shapes or
    weights fingerprint) or unreadable adapter directories.
    """
    from components.pusher import push_model

    adapter_sets = [read_task_adapters(source.path) for source in sources]
    model = backbone_of(adapter_sets, model)
    try:
        module = build_bundle(model, adapter_sets)
    except FileNotFoundError as e:  # backbone not found
        raise BundleError(str(e)) from e
    signatures = module.signatures()  # traced before anything is written
    contents = manifest(module, model, adapter_sets, sources)
    scratch = tempfile.mkdtemp(prefix="glue-bundle-")
    try:
        saved_model = os.path.join(scratch, "model")
        save_bundle(module, saved_model, signatures)
        os.makedirs(os.path.join(saved_model, os.path.dirname(MANIFEST_FILE)), exist_ok=True)
        with open(os.path.join(saved_model, MANIFEST_FILE), "w") as f:
            json.dump(contents, f, indent=2, sort_keys=True)
        base = os.path.join(serving_dir, name)
        dropped = sorted(set(served_tasks(base)) - set(module.task_names))
        version = push_model(saved_model, base)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return BundleResult(path=os.path.join(base, version), version=version, tasks=list(module.task_names),
                        manifest=contents, dropped=dropped)
