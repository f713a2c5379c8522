"""Pipeline runs read back from ML Metadata: what each component did, how long it took, what it produced.

Used by the local runner's summary table and by tests that check what a run did.
"""
from __future__ import annotations

from typing import Dict, List

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata


class PipelineRun:
    """One run: execution per node id (in start order) and output artifacts per artifact type name."""

    def __init__(self, store: metadata_store.MetadataStore, context: metadata_store_pb2.Context, pipeline_name: str):
        self.executions: Dict[str, metadata_store_pb2.Execution] = {}
        for execution in sorted(store.get_executions_by_context(context.id), key=lambda e: e.create_time_since_epoch):
            nodes = [c.name for c in store.get_contexts_by_execution(execution.id) if c.type == "node"]
            self.executions[nodes[0].removeprefix(pipeline_name + ".")] = execution
        self.states = {node: metadata_store_pb2.Execution.State.Name(e.last_known_state)
                       for node, e in self.executions.items()}
        self.seconds = {node: (e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000
                        for node, e in self.executions.items()}
        types_by_id = {t.id: t.name for t in store.get_artifact_types()}
        events = store.get_events_by_execution_ids([e.id for e in self.executions.values()])
        self.outputs: Dict[str, list] = {}
        for artifact in store.get_artifacts_by_id(
                [e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT]):
            self.outputs.setdefault(types_by_id[artifact.type_id], []).append(artifact)

    def output(self, type_name: str) -> metadata_store_pb2.Artifact:
        """The single output artifact of a type (e.g. "PushedModel")."""
        artifacts = self.outputs.get(type_name, [])
        if len(artifacts) != 1:
            raise LookupError(f"{len(artifacts)} {type_name} artifacts in this run, expected 1: {artifacts}")
        return artifacts[0]


def pipeline_runs(metadata_path: str, pipeline_name: str) -> List[PipelineRun]:
    """Every run of `pipeline_name` in a SQLite ML Metadata file, oldest first."""
    store = metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(metadata_path))
    contexts = [c for c in store.get_contexts_by_type("pipeline_run")
                if any(p.name == pipeline_name for p in store.get_parent_contexts_by_context(c.id))]
    return [PipelineRun(store, c, pipeline_name) for c in sorted(contexts, key=lambda c: c.create_time_since_epoch)]
