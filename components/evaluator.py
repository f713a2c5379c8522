"""GatedEvaluator: TFX's Evaluator, gated on what is actually served and on what a constant predictor scores.

Two things TFX's Evaluator cannot decide from a pipeline definition are decided here, at run time, from
files alone, so the gate is the same under LocalDagRunner, Kubeflow Pipelines 2.x and Vertex AI (no
Resolver task, no ML Metadata query):

1. The baseline is the model being served for the task: the highest numeric version under
   `<serving_dir>/<task>/`, which is what TF Serving loads. It is whatever put it there (this pipeline on
   another orchestrator, another pipeline root or metadata database, a rollback by hand). A highest version
   that is not a loadable SavedModel stops the run naming it; nothing under the serving directory is touched.
   With nothing served, the candidate is blessed on the floor alone, and the blessing says so.
2. The floor of the main metric is max(--min_eval_value, constant predictor's score + margin), the constant
   predictor's score computed from the eval split's labels (modules/metrics.constant_predictor_score): a
   model that answers one class for everything is never blessed, whatever the data.

Then TFX's own executor runs TFMA (candidate vs baseline, the change threshold) and writes the blessing.
The blessing artifact also records the gate (`gate`: one sentence saying which threshold decided,
with the values) and the baseline's path, for the run summary.

The Evaluator must run on every pipeline run even when its inputs are cached (what is served can change
between runs): pipeline.pipeline.UNCACHED_NODES.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np
import tensorflow as tf
import tensorflow_model_analysis as tfma
from absl import logging
from tfx import types
from tfx.components.evaluator import constants as evaluator_constants
from tfx.components.evaluator import executor as evaluator_executor
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import json_utils, proto_utils
from tensorflow.python.saved_model import loader_impl

from components.pusher import SAVED_MODEL_FILE, existing_versions
from modules import glue
from modules.metrics import DISPLAY_NAMES, SIGNATURE_NAME, blessing_metric, constant_predictor_score, overall_metrics

SERVED_MODELS_KEY = "served_models_dir"
MARGIN_KEY = "constant_margin"
GATE_PROPERTY = "gate"  # on the blessing artifact: why it is (not) blessed, with the values
BASELINE_PROPERTY = "served_baseline"  # on the blessing artifact: the served version compared with, or ""


class GatedEvaluatorSpec(standard_component_specs.EvaluatorSpec):
    PARAMETERS = {
        **standard_component_specs.EvaluatorSpec.PARAMETERS,
        SERVED_MODELS_KEY: ExecutionParameter(type=str, optional=True),
        MARGIN_KEY: ExecutionParameter(type=float),
    }


def served_baseline(base_directory: str) -> Optional[str]:
    """The highest numeric version under base_directory (what TF Serving serves), checked loadable; None if none."""
    versions = existing_versions(base_directory)
    if not versions:
        return None
    path = os.path.join(base_directory, str(versions[-1]))
    problem = None
    if not fileio.exists(os.path.join(path, SAVED_MODEL_FILE)):
        problem = f"it has no {SAVED_MODEL_FILE}"
    else:
        try:
            meta_graph = loader_impl.parse_saved_model(path).meta_graphs[0]
            if SIGNATURE_NAME not in meta_graph.signature_def:
                problem = f"it has no {SIGNATURE_NAME!r} signature"
            else:
                tf.train.list_variables(os.path.join(path, "variables", "variables"))
        except (OSError, IOError, ValueError, tf.errors.OpError) as e:
            problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if problem:
        raise RuntimeError(
            f"The served model {path} is not a loadable SavedModel ({problem}). It is the highest version under "
            f"{base_directory}, the one TF Serving serves, so the new model cannot be compared with it. Repair or "
            f"remove that directory, then run again; nothing under {base_directory} was changed.")
    return path


def eval_labels(examples: List[types.Artifact], split: str) -> np.ndarray:
    """The label of every example of one split of an Examples artifact (gzipped TFRecords of tf.Examples)."""
    files = fileio.glob(os.path.join(artifact_utils.get_split_uri(examples, split), "*"))
    labels = []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        feature = tf.train.Example.FromString(record).features.feature[glue.FEATURE_LABEL]
        labels.extend(feature.int64_list.value or feature.float_list.value)
    if not labels:
        raise ValueError(f"The {split!r} split at {files} has no labeled examples to evaluate on.")
    return np.asarray(labels, dtype=np.float64)


def served_eval_shared_model(eval_saved_model_path: str, model_name: str, eval_config: tfma.EvalConfig,
                             **kwargs: Any) -> tfma.types.EvalSharedModel:
    """TFMA's default model loader; the baseline is a served version directory, the SavedModel itself.

    TFX's Evaluator asks for `<model artifact uri>/Format-Serving` (its Model artifact layout); the baseline
    artifact made by Executor.Do points at a TF Serving version directory, which holds the SavedModel directly.
    """
    if model_name == tfma.BASELINE_KEY:
        eval_saved_model_path = os.path.dirname(eval_saved_model_path.rstrip("/"))
    return tfma.default_eval_shared_model(eval_saved_model_path=eval_saved_model_path, model_name=model_name,
                                          eval_config=eval_config, **kwargs)


def gate_sentence(metric: str, value: float, constant: float, margin: float, min_value: float,
                  baseline: Optional[float], baseline_path: Optional[str], tolerance: Optional[float]) -> str:
    """Which threshold decided, with the numbers: "F1 0.8105 does not beat the constant predictor's 0.8122 + 0.01"."""
    name = DISPLAY_NAMES.get(metric, metric)
    if value < constant + margin and constant + margin >= min_value:
        return f"{name} {value:.4f} does not beat the constant predictor's {constant:.4f} + {margin:g}"
    if value < min_value:
        return f"{name} {value:.4f} is below --min_eval_value {min_value:g}"
    if baseline is not None and tolerance is not None and value < baseline - tolerance:
        return (f"{name} {value:.4f} is more than --max_regression {tolerance:g} below the served model's "
                f"{baseline:.4f} ({baseline_path})")
    floor = (f"beats the constant predictor's {constant:.4f} + {margin:g}" if constant + margin >= min_value
             else f"reaches --min_eval_value {min_value:g}")
    if baseline is None:
        served = "nothing served yet" if tolerance is not None else "no comparison with the served model (--no_baseline)"
    else:
        served = f"the served model scores {baseline:.4f} ({baseline_path})"
    return f"{name} {value:.4f} {floor}; {served}"


class Executor(evaluator_executor.Executor):
    """TFX's Evaluator executor, with the floor and the baseline set at run time (see the module docstring)."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        eval_config = tfma.EvalConfig()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.EVAL_CONFIG_KEY], eval_config)
        metric_config, task, metric = blessing_metric(eval_config)
        (split,) = json_utils.loads(exec_properties[standard_component_specs.EXAMPLE_SPLITS_KEY])
        labels = eval_labels(input_dict[standard_component_specs.EXAMPLES_KEY], split)
        constant = constant_predictor_score(task, metric, labels)
        margin = float(exec_properties[MARGIN_KEY])
        value_threshold = metric_config.threshold.value_threshold
        min_value = value_threshold.lower_bound.value
        value_threshold.lower_bound.value = max(min_value, constant + margin)
        tolerance = (-metric_config.threshold.change_threshold.absolute.value
                     if metric_config.threshold.HasField("change_threshold") else None)
        logging.info("Blessing floor for %s on %d %r examples: %.4f (constant predictor %.4f + %g, --min_eval_value %g).",
                     metric, len(labels), split, value_threshold.lower_bound.value, constant, margin, min_value)

        exec_properties = {**exec_properties,
                           standard_component_specs.EVAL_CONFIG_KEY: proto_utils.proto_to_json(eval_config)}
        input_dict = dict(input_dict)
        baseline_path = None
        if exec_properties.get(SERVED_MODELS_KEY):
            baseline_path = served_baseline(exec_properties[SERVED_MODELS_KEY])
            if baseline_path:
                logging.info("Comparing with the served model %s.", baseline_path)
                baseline = standard_artifacts.Model()
                baseline.uri = baseline_path
                input_dict[standard_component_specs.BASELINE_MODEL_KEY] = [baseline]
                exec_properties["custom_eval_shared_model"] = f"{__name__}.{served_eval_shared_model.__name__}"
            else:
                logging.info("Nothing served yet under %s: blessing on the floor alone.", exec_properties[SERVED_MODELS_KEY])
        super().Do(input_dict, output_dict, exec_properties)

        evaluation = artifact_utils.get_single_uri(output_dict[standard_component_specs.EVALUATION_KEY])
        values = overall_metrics(evaluation, model_name=tfma.CANDIDATE_KEY if baseline_path else "")
        baseline_value = overall_metrics(evaluation, model_name=tfma.BASELINE_KEY)[metric] if baseline_path else None
        gate = gate_sentence(metric, values[metric], constant, margin, min_value, baseline_value, baseline_path,
                             tolerance if exec_properties.get(SERVED_MODELS_KEY) else None)
        logging.info("Gate: %s", gate)
        blessing = artifact_utils.get_single_instance(output_dict[standard_component_specs.BLESSING_KEY])
        blessing.set_string_custom_property(GATE_PROPERTY, gate)
        blessing.set_string_custom_property(BASELINE_PROPERTY, baseline_path or "")
        # TFX recorded the baseline's ML Metadata id, 0 for a served directory; TFX's Kubeflow V2 entry point
        # would look it up as an artifact name and fail (KeyError: 0 in refactor_model_blessing).
        properties = blessing.mlmd_artifact.custom_properties
        if evaluator_constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY in properties:
            del properties[evaluator_constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY]


class GatedEvaluator(base_beam_component.BaseBeamComponent):
    """The Evaluator of the blessing split: candidate vs the served model, floor above the constant predictor."""

    SPEC_CLASS = GatedEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, examples: types.BaseChannel, model: types.BaseChannel, eval_config: tfma.EvalConfig,
                 split: str, served_models_dir: Optional[str], constant_margin: float):
        """served_models_dir: `<serving_dir>/<task>`, or None to bless without comparing (--no_baseline)."""
        # self.SPEC_CLASS, not the module's name for it: TFX reloads this module when it imports
        # served_eval_shared_model by name, and a reloaded module holds a new GatedEvaluatorSpec class.
        super().__init__(spec=self.SPEC_CLASS(
            examples=examples, model=model, eval_config=eval_config, example_splits=json_utils.dumps([split]),
            served_models_dir=served_models_dir, constant_margin=float(constant_margin),
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing),
        ))
