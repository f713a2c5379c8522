"""`create_pipeline`: the one definition of the pipeline, used unchanged by every runner (local Beam, Kubeflow).

GlueExampleGen -> StatisticsGen -> GlueSchemaGen -> ExampleValidator -> DataGate -> Transform -> Trainer
-> Evaluator per eval split (against the latest blessed model) -> AtomicPusher.
"""
from __future__ import annotations

import os
from typing import List, Optional

from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from components.data_gate import DataGate
from components.glue_example_gen.component import GlueExampleGen
from components.glue_schema_gen import GlueSchemaGen
from components.pusher import AtomicPusher
from modules.glue import canonical_name
from modules.metrics import evaluator_configs
from pipeline.configs import TrainingConfig

PREPROCESSING_FN = "modules.preprocessing.preprocessing_fn"
RUN_FN = "modules.trainer.run_fn"


def pipeline_name_for(task: str, prefix: str) -> str:
    """One pipeline (and ML Metadata context) per task, so a task's baseline is always its own last blessed model.

    `task`: a task's name (GLUE names in any spelling: "SST-2" is sst2)."""
    return f"{prefix}-{canonical_name(task)}"


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_dir: str,
    serving_dir: str,
    config: TrainingConfig,
    min_eval_value: float = 0.0,
    max_regression: float = 0.01,
    compare_with_baseline: bool = True,
    metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
    beam_pipeline_args: Optional[List[str]] = None,
    enable_cache: bool = True,
) -> tfx.dsl.Pipeline:
    """Builds the TFX pipeline for one task (config.task_spec: a GLUE task or a user's task spec).

    Args:
      data_dir: where the task's relative file paths start (GLUE: the folder holding MRPC/, RTE/, ...).
      min_eval_value: the task's main metric (GlueTask.metrics[0]) must reach this on eval to be blessed.
      max_regression: a model more than this below the latest blessed model's main metric is not blessed.
      compare_with_baseline: False drops the latest-blessed-model Resolver and the change threshold (blessing
        then rests on min_eval_value alone): open-source Kubeflow Pipelines 2.x cannot run TFX resolver tasks.
    """
    task = config.task_description()
    example_gen = GlueExampleGen(data_dir=data_dir, task=task)
    labeled_splits = ["train", *task.eval_splits]
    statistics_gen = tfx.components.StatisticsGen(
        examples=example_gen.outputs["examples"], exclude_splits=list(task.test_splits)
    )
    schema_gen = GlueSchemaGen(task_spec=task.to_json())
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    data_gate = DataGate(anomalies=example_validator.outputs["anomalies"])
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        splits_config=tfx.proto.SplitsConfig(analyze=["train"], transform=labeled_splits),
        custom_config=config.to_dict(),
    )
    transform.add_upstream_node(data_gate)
    trainer = tfx.components.Trainer(
        run_fn=RUN_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        custom_config=config.to_dict(),
    )
    baselines = [
        tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
        ).with_id("latest_blessed_model_resolver")
    ] if compare_with_baseline else []
    evaluators = [
        tfx.components.Evaluator(
            examples=example_gen.outputs["examples"],
            example_splits=[split],  # an Evaluator merges its splits: one per split keeps MNLI's two apart
            model=trainer.outputs["model"],
            baseline_model=baselines[0].outputs["model"] if baselines else None,
            eval_config=split_config,
        ).with_id(f"Evaluator_{split}")
        for split, split_config in evaluator_configs(
            task, min_eval_value, max_regression if compare_with_baseline else None).items()
    ]
    pusher = AtomicPusher(  # tfx.components.Pusher, publishing each version directory atomically
        model=trainer.outputs["model"],
        model_blessing=evaluators[0].outputs["blessing"],  # the "eval" split decides
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=os.path.join(serving_dir, task.name))
        ),
    ).with_id("Pusher")  # the node id TFX's Pusher had: same MLMD contexts and Kubeflow task name
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, example_validator, data_gate, transform, trainer,
                    *baselines, *evaluators, pusher],
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [],
    )
