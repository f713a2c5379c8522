"""The serving contract of a trained task: the Model artifact `modules.trainer.run_fn` exports.

  <serving_model_dir>/                a SavedModel with three signatures:
      serving_default  serialized tf.Examples -> outputs   (TFMA Evaluator, TF Serving tf.Example clients)
      predict_text     raw sentences          -> outputs   (the Transform graph runs inside)
      bulk_inference   serialized tf.Examples -> the numeric outputs only (TFX's BulkInferrer: tfx_bsl cannot
                                                  copy a string output such as "label_name" into its logs)
  <serving_model_dir>/../adapters/    the adapter-only weights and their JSON config
Outputs are "probabilities" [batch, num_labels], "label" [batch] (class id) and "label_name" [batch] (the
task's label value, e.g. "entailment") for classification, "score" [batch] for regression.

A module of its own so that both users of the contract import it rather than each other: the Trainer, which
exports it (modules/trainer.py), and a bundle, which reads the adapters directory and whose task signatures
give the same outputs (modules/bundle.py).
"""
from __future__ import annotations

import os
import time
from typing import Dict, Tuple

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging

from modules.glue import FEATURE_TEXT_A, FEATURE_TEXT_B, GlueTask
from modules.metrics import OUTPUT_LABEL, OUTPUT_LABEL_NAME, OUTPUT_PROBABILITIES, OUTPUT_SCORE
from modules.model import INPUT_NAMES, AdapterBertClassifier, Untracked
from modules.preprocessing import LENGTH as LENGTH_FEATURE

TEXT_SIGNATURE = "predict_text"
BULK_SIGNATURE = "bulk_inference"
ADAPTERS_SUBDIR = "adapters"  # where run_fn writes adapter-only weights inside a Model artifact


def model_inputs(features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """The model's inputs cut to the batch's longest example: the padding beyond it is masked out of attention,
    so the outputs are the same, computed on fewer tokens (most GLUE sentences are far shorter than 128)."""
    length = tf.maximum(tf.reduce_max(features[LENGTH_FEATURE]), 1)
    return {name: features[name][:, :length] for name in INPUT_NAMES}


def numeric_outputs(task: GlueTask) -> Tuple[str, ...]:
    """The outputs of the bulk_inference signature, which BulkInferrer adds to each test example."""
    return (OUTPUT_SCORE,) if task.is_regression else (OUTPUT_LABEL, OUTPUT_PROBABILITIES)


def predict_outputs(task: GlueTask, logits: tf.Tensor) -> Dict[str, tf.Tensor]:
    """The model's logits as the serving outputs: probabilities, class id and the task's label value for that
    id (so clients need no lookup table), or a score."""
    if task.is_regression:
        return {OUTPUT_SCORE: logits[:, 0]}
    label = tf.argmax(logits, axis=-1)
    return {OUTPUT_PROBABILITIES: tf.nn.softmax(logits, axis=-1), OUTPUT_LABEL: label,
            OUTPUT_LABEL_NAME: tf.gather(tf.constant(task.label_names), label)}


class ServingModule(tf.Module):
    """What is exported: the model, the Transform graph, and the three serving signatures."""

    def __init__(self, model: AdapterBertClassifier, tf_transform_output: tft.TFTransformOutput, task: GlueTask):
        super().__init__()
        self.model_variables = model.variables  # saved; the Keras model itself is not (modules.model.Untracked)
        self._py = Untracked(model=model)
        self.tft_layer = tf_transform_output.transform_features_layer()
        self.task = task
        self.raw_feature_spec = {  # the text only: clients send no label and no GLUE row index ("idx")
            name: spec for name, spec in tf_transform_output.raw_feature_spec().items()
            if name in (FEATURE_TEXT_A, FEATURE_TEXT_B)
        }
        if task.text_b is None:  # single-sentence tasks: clients need not send the empty second sentence
            self.raw_feature_spec[FEATURE_TEXT_B] = tf.io.FixedLenFeature([], tf.string, default_value="")

    def _predict(self, raw_features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        transformed = self.tft_layer(raw_features)
        return predict_outputs(self.task, self._py.model(model_inputs(transformed), training=False))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def serve_examples(self, examples: tf.Tensor) -> Dict[str, tf.Tensor]:
        return self._predict(tf.io.parse_example(examples, self.raw_feature_spec))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def serve_examples_numeric(self, examples: tf.Tensor) -> Dict[str, tf.Tensor]:
        outputs = self._predict(tf.io.parse_example(examples, self.raw_feature_spec))
        return {name: outputs[name] for name in numeric_outputs(self.task)}

    def text_signature(self) -> tf.types.experimental.ConcreteFunction:
        """Raw sentences in; single-sentence tasks take only `sentence1`."""
        if self.task.text_b is None:
            @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=FEATURE_TEXT_A)], autograph=False)
            def serve_text(sentence1: tf.Tensor) -> Dict[str, tf.Tensor]:
                return self._predict({FEATURE_TEXT_A: sentence1, FEATURE_TEXT_B: tf.fill(tf.shape(sentence1), "")})
        else:
            @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=FEATURE_TEXT_A),
                                          tf.TensorSpec([None], tf.string, name=FEATURE_TEXT_B)], autograph=False)
            def serve_text(sentence1: tf.Tensor, sentence2: tf.Tensor) -> Dict[str, tf.Tensor]:
                return self._predict({FEATURE_TEXT_A: sentence1, FEATURE_TEXT_B: sentence2})
        return serve_text.get_concrete_function()

    def signatures(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
        """The serving signatures under their exported names, traced: the one place that says what the
        SavedModel serves, for `export_serving_model` and for callers that time the tracing apart from the save."""
        return {"serving_default": self.serve_examples.get_concrete_function(), TEXT_SIGNATURE: self.text_signature(),
                BULK_SIGNATURE: self.serve_examples_numeric.get_concrete_function()}


def export_serving_model(model: AdapterBertClassifier, tf_transform_output: tft.TFTransformOutput,
                         task: GlueTask, directory: str) -> None:
    """Writes the serving SavedModel of `model` (see the module docstring) to `directory`."""
    start = time.time()
    module = ServingModule(model, tf_transform_output, task)
    tf.saved_model.save(module, directory, signatures=module.signatures())
    logging.info("SavedModel written to %s in %.0f s", directory, time.time() - start)


def adapters_dir(serving_model_dir: str) -> str:
    """Where the adapter-only weights go: next to the SavedModel, inside the same Model artifact."""
    return os.path.join(os.path.dirname(serving_model_dir.rstrip("/")), ADAPTERS_SUBDIR)
