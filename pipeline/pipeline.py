"""`create_pipeline`: the one definition of the pipeline, used unchanged by every runner (local Beam, Kubeflow).

GlueExampleGen -> StatisticsGen (with GlueSchemaGen's schema) -> ExampleValidator -> DataGate -> TrainabilityGate
-> Transform -> [Tuner, with --tune: the recipe per task, chosen on a holdout carved from train] -> Trainer
-> Evaluator per eval split (the first one gated: against the served model, above the constant predictor)
-> AtomicPusher; and, when the task has test files, BulkInferrer (the blessed model on the test splits)
-> PredictionWriter (prediction files published beside the pushed version).
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.dsl.compiler import compiler
from tfx.dsl.components.base.base_node import BaseNode
from tfx.proto.orchestration import pipeline_pb2

from components.data_gate import DataGate
from components.evaluator import GatedEvaluator
from components.glue_example_gen.component import GlueExampleGen
from components.glue_schema_gen import GlueSchemaGen
from components.prediction_writer import PredictionWriter
from components.pusher import AtomicPusher
from components.trainability_gate import TrainabilityGate
from components.tuner import SearchTuner
from modules.config import TrainingConfig, TuningConfig
from modules.glue import GlueTask, canonical_name
from modules.metrics import evaluator_configs
from modules.serving import BULK_SIGNATURE, numeric_outputs
from modules.tuner import SEARCH_ROOT_KEY, TUNING_KEY
from pipeline.configs import DEFAULT_CONSTANT_MARGIN, DataChecks

PREPROCESSING_FN = "modules.preprocessing.preprocessing_fn"
RUN_FN = "modules.trainer.run_fn"
TUNER_FN = "modules.tuner.tuner_fn"
TUNER = "Tuner"
BLESSING_EVALUATOR = "Evaluator_eval"
# Nodes that run on every pipeline run even when their inputs are cached: what is served can change between
# runs (another run's push, a rollback), and the gated Evaluator compares with it. Every orchestrator applies
# this: `compile_local` here, kubeflow.runner in the compiled spec.
UNCACHED_NODES = (BLESSING_EVALUATOR,)


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
    constant_margin: float = DEFAULT_CONSTANT_MARGIN,
    metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
    beam_pipeline_args: Optional[List[str]] = None,
    enable_cache: bool = True,
    data_checks: DataChecks = DataChecks(),
    predictions_dir: Optional[str] = None,
    tuning: Optional[TuningConfig] = None,
) -> tfx.dsl.Pipeline:
    """Builds the TFX pipeline for one task (config.task_spec: a GLUE task or a user's task spec).

    Args:
      data_dir: where the task's relative file paths start (GLUE: the folder holding MRPC/, RTE/, ...).
      min_eval_value: the main GLUE metric (GlueTask.metrics[0]) must reach this on eval to be blessed; it can
        only raise the floor set by the constant predictor.
      max_regression: a model more than this below the served model's main metric is not blessed.
      compare_with_baseline: False blesses without comparing with the served model (an explicit opt-out).
      constant_margin: the main metric must beat the constant predictor's score on eval by at least this.
      data_checks: the thresholds of TrainabilityGate, which stops the run before Transform.
      predictions_dir: where the test splits' predictions are published, <predictions_dir>/<task>/<version>/
        (default: "predictions" beside serving_dir).
      tuning: a Tuner between Transform and Trainer searches these settings, and the Trainer trains with its
        choice; None (no --tune): the Trainer trains with `config` as it is.
    """
    if constant_margin < 0:
        raise ValueError(f"--constant_margin must be >= 0 (it can only raise the floor), got {constant_margin}.")
    task = config.task_description()
    example_gen = GlueExampleGen(data_dir=data_dir, task=task)
    labeled_splits = ["train", *task.eval_splits]
    schema_gen = GlueSchemaGen(task_spec=task.to_json(), max_label_skew=data_checks.max_label_skew(task))
    statistics_gen = tfx.components.StatisticsGen(  # the schema makes the label categorical: class counts
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        exclude_splits=list(task.test_splits),
    )
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    data_gate = DataGate(anomalies=example_validator.outputs["anomalies"])
    trainability_gate = TrainabilityGate(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"],
        examples=example_gen.outputs["examples"], task_spec=task.to_json(), batch_size=config.batch_size,
        min_class_share=data_checks.min_class_share, max_pair_overlap=data_checks.max_pair_overlap,
    )
    trainability_gate.add_upstream_node(data_gate)  # its checks assume data that matches the schema
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        splits_config=tfx.proto.SplitsConfig(analyze=["train"], transform=labeled_splits),
        custom_config=config.transform_dict(),
        # StatisticsGen already describes the raw data; statistics of token id lists would inform nobody, and
        # computing both took a third of Transform's time on the tests' small runs.
        disable_statistics=True,
    )
    transform.add_upstream_node(trainability_gate)
    tuner = search_tuner(transform, config, tuning, pipeline_root) if tuning else None
    trainer = tfx.components.Trainer(
        run_fn=RUN_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        custom_config=config.to_dict(),
        hyperparameters=tuner.outputs["best_hyperparameters"] if tuner else None,
    )
    serving_base = os.path.join(serving_dir, task.name)
    (blessing_split, blessing_config), *report_configs = evaluator_configs(
        task, min_eval_value, max_regression if compare_with_baseline else None).items()
    evaluators = [GatedEvaluator(
        examples=example_gen.outputs["examples"], model=trainer.outputs["model"], eval_config=blessing_config,
        split=blessing_split, served_models_dir=serving_base if compare_with_baseline else None,
        constant_margin=constant_margin,
    ).with_id(BLESSING_EVALUATOR)]
    evaluators += [  # reported only (MNLI mismatched): an Evaluator unions its example_splits, so one per split
        tfx.components.Evaluator(
            examples=example_gen.outputs["examples"], example_splits=[split], model=trainer.outputs["model"],
            eval_config=split_config,
        ).with_id(f"Evaluator_{split}")
        for split, split_config in report_configs
    ]
    pusher = AtomicPusher(  # tfx.components.Pusher, publishing each version directory atomically
        model=trainer.outputs["model"],
        model_blessing=evaluators[0].outputs["blessing"],  # the "eval" split decides
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_base)
        ),
    ).with_id("Pusher")  # the node id TFX's Pusher had: same MLMD contexts and Kubeflow task name
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=[example_gen, schema_gen, statistics_gen, example_validator, data_gate, trainability_gate,
                    transform, *([tuner] if tuner else []), trainer, *evaluators, pusher,
                    *prediction_stage(example_gen, trainer, evaluators[0], pusher, task,
                                      predictions_dir or default_predictions_dir(serving_dir))],
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [],
    )


def search_tuner(transform: tfx.components.Transform, config: TrainingConfig, tuning: TuningConfig,
                 pipeline_root: str) -> SearchTuner:
    """The Tuner: trials on the transformed train split only (its holdout is carved from train, so the eval split
    that decides blessing never reaches the search); its searches live under <pipeline_root>/Tuner/searches/,
    where a killed search resumes."""
    tuning.check_training(config)
    return SearchTuner(
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        tuner_fn=TUNER_FN,
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["train"]),  # no eval split: the holdout is carved from train
        custom_config={**config.to_dict(), TUNING_KEY: tuning.to_dict(),
                       SEARCH_ROOT_KEY: os.path.join(pipeline_root, TUNER, "searches")},
    ).with_id(TUNER)


def default_predictions_dir(serving_dir: str) -> str:
    """"predictions" beside the serving directory: outputs/serving -> outputs/predictions."""
    return os.path.join(os.path.dirname(serving_dir.rstrip("/")) or ".", "predictions")


def bulk_inferrer_specs(task: GlueTask, splits: List[str]
                        ) -> Tuple[tfx.proto.DataSpec, tfx.proto.ModelSpec, tfx.proto.OutputExampleSpec]:
    """BulkInferrer's settings: the test splits, the numeric signature, its outputs added to each example."""
    columns = [tfx.proto.PredictOutputCol(output_key=name, output_column=name) for name in numeric_outputs(task)]
    return (tfx.proto.DataSpec(example_splits=splits), tfx.proto.ModelSpec(model_signature_name=[BULK_SIGNATURE]),
            tfx.proto.OutputExampleSpec(output_columns_spec=[tfx.proto.OutputColumnsSpec(
                predict_output=tfx.proto.PredictOutput(output_columns=columns))]))


def prediction_stage(example_gen: GlueExampleGen, trainer: tfx.components.Trainer, blessing_evaluator: GatedEvaluator,
                     pusher: AtomicPusher, task: GlueTask, predictions_dir: str) -> List[BaseNode]:
    """BulkInferrer on the test splits (only for a blessed model) and the PredictionWriter; none without test files."""
    if not example_gen.test_splits:
        return []
    data_spec, model_spec, output_example_spec = bulk_inferrer_specs(task, example_gen.test_splits)
    bulk_inferrer = tfx.components.BulkInferrer(
        examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
        model_blessing=blessing_evaluator.outputs["blessing"], data_spec=data_spec, model_spec=model_spec,
        output_example_spec=output_example_spec,
    )
    writer = PredictionWriter(
        examples=example_gen.outputs["examples"], inference=bulk_inferrer.outputs["output_examples"],
        pushed_model=pusher.outputs["pushed_model"], task_spec=task.to_json(), predictions_dir=predictions_dir,
    )
    return [bulk_inferrer, writer]


def compile_local(pipeline: tfx.dsl.Pipeline) -> pipeline_pb2.Pipeline:
    """The pipeline IR for LocalDagRunner.run_with_ir, with caching off for UNCACHED_NODES."""
    ir = compiler.Compiler().compile(pipeline)
    for node in ir.nodes:
        if node.pipeline_node.node_info.id in UNCACHED_NODES:
            node.pipeline_node.execution_options.caching_options.enable_cache = False
    return ir
