"""The serving contract of a trained task: the Model artifact `modules.trainer.run_fn` exports.

  <serving_model_dir>/                a SavedModel with three signatures:
      serving_default  serialized tf.Examples -> outputs   (TFMA Evaluator, TF Serving tf.Example clients)
      predict_text     raw sentences          -> outputs   (the Transform graph runs inside)
      bulk_inference   serialized tf.Examples -> the numeric outputs only (TFX's BulkInferrer: tfx_bsl cannot
                                                  copy a string output such as "label_name" into its logs)
  <serving_model_dir>/../adapters/    the adapter-only weights and their JSON config
Outputs are "probabilities" [batch, num_labels], "label" [batch] (class id) and "label_name" [batch] (the
task's label value, e.g. "entailment") for classification, "score" [batch] for regression.

Two export options make serving faster where the serving side allows them (`ServingModel`; neither changes a
signature's name, inputs or outputs; bench/serving_latency.py measures them against AdapterHub):
  xla_length_bounds  the model part (not the Transform graph: its string ops cannot be XLA-compiled) in a
                     function with jit_compile, its inputs padded to these length bounds and the batch to a power
                     of two, so XLA compiles few shapes. Same answers as float32 without it (within 1e-5). TF
                     Serving runs it only with `--xla_cpu_compilation_enabled=true` (its XLA:CPU JIT is off by
                     default and such a model then fails its first request), so it is not the default.
  bfloat16           the linear layers' kernels stored in bfloat16 and their products computed in bfloat16, the
                     rest in float32 (`bfloat16_products_copy`): fast on CPUs with native bfloat16 (AVX512_BF16,
                     AMX), slow where it is emulated; probabilities within 1e-2 of float32
                     (bench/serving_latency.py reports the largest difference).
An XLA export also carries TF Serving's warm-up requests (`warmup_requests`): the server replays them when it
loads the model, so it compiles the shapes before the first client request instead of during it.

A module of its own so that both users of the contract import it rather than each other: the Trainer, which
exports it (modules/trainer.py), and a bundle, which reads the adapters directory and whose task signatures
give the same outputs (modules/bundle.py).
"""
from __future__ import annotations

import os
import time
import types
from typing import Dict, List, Sequence, Tuple

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from modules import backbone
from modules.glue import FEATURE_TEXT_A, FEATURE_TEXT_B, GlueTask
from modules.metrics import OUTPUT_LABEL, OUTPUT_LABEL_NAME, OUTPUT_PROBABILITIES, OUTPUT_SCORE
from modules.model import INPUT_NAMES, AdapterBertClassifier, Untracked, bfloat16_dense_call, dense_layers
from modules.preprocessing import INPUT_IDS, LENGTH as LENGTH_FEATURE

TEXT_SIGNATURE = "predict_text"
BULK_SIGNATURE = "bulk_inference"
ADAPTERS_SUBDIR = "adapters"  # where run_fn writes adapter-only weights inside a Model artifact
# The batch sizes an XLA-compiled model is padded to (a larger batch keeps its own size).
XLA_BATCH_BOUNDS = tuple(2 ** i for i in range(11))
# TF Serving replays this file's PredictionLogs when it loads a SavedModel (its "SavedModel warmup").
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# Warm-up requests go up to this batch size (the Trainer's default batch; larger batches compile on first use):
# each shape costs about a second of the server's load time for MiniLM.
WARMUP_MAX_BATCH = 32


def xla_length_bounds(max_seq_length: int, step: int = 16) -> Tuple[int, ...]:
    """The length bounds of an XLA export: every multiple of `step` up to max_seq_length. Finer than the Trainer's
    length buckets (16, 32, 48, 64, 96, 128), whose wide upper buckets padded MRPC's batches of 32 (77-84 tokens) to
    96: with bounds every 16 the bfloat16 + XLA export answered 10 MRPC batches of 32 1.10x as fast, batch 1 as
    fast (docs/results.md, Serving), for 8 bounds to compile instead of 6. It never pads more than the buckets."""
    return tuple(range(step, max_seq_length, step)) + (max_seq_length,)


def model_inputs(features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """The model's inputs cut to the batch's longest example: the padding beyond it is masked out of attention,
    so the outputs are the same, computed on fewer tokens (most GLUE sentences are far shorter than 128)."""
    length = tf.maximum(tf.reduce_max(features[LENGTH_FEATURE]), 1)
    return {name: features[name][:, :length] for name in INPUT_NAMES}


def _smallest_bound(value: tf.Tensor, bounds: Sequence[int]) -> tf.Tensor:
    """The smallest of `bounds` (ascending) that is >= value; value itself if it exceeds them all."""
    bounds_tensor = tf.constant(bounds, dtype=value.dtype)
    index = tf.minimum(tf.reduce_sum(tf.cast(bounds_tensor < value, tf.int32)), len(bounds) - 1)
    return tf.maximum(value, tf.gather(bounds_tensor, index))


def bucket_inputs(features: Dict[str, tf.Tensor], bounds: Sequence[int]) -> Dict[str, tf.Tensor]:
    """The model's inputs cut to the smallest of `bounds` that holds the batch's longest example: the few shapes
    an XLA-compiled model sees (the Trainer's train step under XLA, and the XLA export). The features must be
    padded to at least the last bound (the Transform output is padded to max_seq_length)."""
    length = _smallest_bound(tf.reduce_max(features[LENGTH_FEATURE]), bounds)
    return {name: features[name][:, :length] for name in INPUT_NAMES}


def padded_inputs(features: Dict[str, tf.Tensor], length_bounds: Sequence[int]) -> Dict[str, tf.Tensor]:
    """bucket_inputs, and the batch padded with fully masked rows to a power of two: an XLA-compiled model then
    sees len(length_bounds) x log2(batch) shapes, not one per request (each new shape is compiled, about a second
    for MiniLM)."""
    rows = tf.shape(features[INPUT_IDS], out_type=tf.int64)[0]
    padding = _smallest_bound(rows, XLA_BATCH_BOUNDS) - rows
    return {name: tf.pad(value, [[0, padding], [0, 0]])
            for name, value in bucket_inputs(features, length_bounds).items()}


def bfloat16_products_copy(model: AdapterBertClassifier) -> AdapterBertClassifier:
    """A copy of `model` whose linear layers (model.dense_layers) store their kernels in bfloat16 and multiply in
    bfloat16 (model.bfloat16_dense_call); everything else (embeddings, biases, LayerNorm, GELU, softmax, the
    attention's batch products) stays float32. Why not every weight in bfloat16: TensorFlow's bfloat16
    elementwise kernels are slower than its float32 ones on CPU and round every activation; with only the products
    in bfloat16 a batch of 32 x 96 tokens ran 1.2-1.3x faster, with and without XLA, and nearer float32's answers
    (docs/results.md, Serving). Kernels stored, not cast per call: the cast of float32 kernels at each call cost
    more than bfloat16 saved at batch 1."""
    copy = AdapterBertClassifier(backbone.build_backbone(model.bert.config), model.num_labels,
                                 model.adapter_config, full_finetune=model.full_finetune)
    copy.set_weights(model.get_weights())
    for layer in dense_layers(copy):
        layer.kernel = tf.Variable(tf.cast(layer.kernel, tf.bfloat16), trainable=False, name="kernel")  # replaces it
        layer.call = types.MethodType(bfloat16_dense_call, layer)
    return copy


class ServingModel:
    """The model part of the serving signatures: Transform features -> logits, in float32 as trained, or with the
    export options of the module docstring. Untracked by tf.Module: a module saves `variables` instead."""

    def __init__(self, model: AdapterBertClassifier, xla_length_bounds: Sequence[int] = (), bfloat16: bool = False):
        self.model = bfloat16_products_copy(model) if bfloat16 else model
        self.xla_length_bounds = tuple(xla_length_bounds)
        self.variables = self.model.variables
        self._compiled = tf.function(self._logits, jit_compile=True, autograph=False)

    def _logits(self, inputs: Dict[str, tf.Tensor]) -> tf.Tensor:
        return tf.cast(self.model(inputs, training=False), tf.float32)

    def __call__(self, features: Dict[str, tf.Tensor]) -> tf.Tensor:
        if not self.xla_length_bounds:
            return self._logits(model_inputs(features))
        rows = tf.shape(features[INPUT_IDS])[0]
        return self._compiled(padded_inputs(features, self.xla_length_bounds))[:rows]


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
    """What is exported: the model, the Transform graph, and the three serving signatures. xla_length_bounds and
    bfloat16: the export options of the module docstring (for the Trainer, xla_length_bounds(max_seq_length))."""

    def __init__(self, model: AdapterBertClassifier, tf_transform_output: tft.TFTransformOutput, task: GlueTask,
                 xla_length_bounds: Sequence[int] = (), bfloat16: bool = False):
        super().__init__()
        serving_model = ServingModel(model, xla_length_bounds, bfloat16)
        self.model_variables = serving_model.variables  # saved; the Keras model is not (modules.model.Untracked)
        self._py = Untracked(model=serving_model)
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
        return predict_outputs(self.task, self._py.model(transformed))

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


def warmup_requests(task: GlueTask, length_bounds: Sequence[int],
                    max_batch: int = WARMUP_MAX_BATCH) -> List[prediction_log_pb2.PredictionLog]:
    """One predict_text request per length bound and power-of-two batch size up to max_batch: the shapes an XLA
    export compiles for those requests. Its text is the word "a" (one WordPiece in BERT vocabularies), as many
    times as makes the tokenized example exactly the bound long ([CLS] text [SEP], and "a" [SEP] for pair tasks;
    the signatures share the compiled model part, so serving_default is warm too)."""
    specials = 2 if task.text_b is None else 4
    logs = []
    for bound in length_bounds:
        for batch in (b for b in XLA_BATCH_BOUNDS if b <= max_batch):
            request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name=TEXT_SIGNATURE))
            request.inputs[FEATURE_TEXT_A].CopyFrom(tf.make_tensor_proto([" ".join(["a"] * (bound - specials))] * batch))
            if task.text_b is not None:
                request.inputs[FEATURE_TEXT_B].CopyFrom(tf.make_tensor_proto(["a"] * batch))
            logs.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def export_serving_model(model: AdapterBertClassifier, tf_transform_output: tft.TFTransformOutput,
                         task: GlueTask, directory: str, xla_length_bounds: Sequence[int] = (),
                         bfloat16: bool = False) -> None:
    """Writes the serving SavedModel of `model` (see the module docstring) to `directory`."""
    start = time.time()
    module = ServingModule(model, tf_transform_output, task, xla_length_bounds, bfloat16)
    tf.saved_model.save(module, directory, signatures=module.signatures())
    if xla_length_bounds:
        tf.io.gfile.makedirs(os.path.dirname(os.path.join(directory, WARMUP_FILE)))
        with tf.io.TFRecordWriter(os.path.join(directory, WARMUP_FILE)) as writer:
            for log in warmup_requests(task, xla_length_bounds):
                writer.write(log.SerializeToString())
    logging.info("SavedModel written to %s in %.0f s", directory, time.time() - start)


def adapters_dir(serving_model_dir: str) -> str:
    """Where the adapter-only weights go: next to the SavedModel, inside the same Model artifact."""
    return os.path.join(os.path.dirname(serving_model_dir.rstrip("/")), ADAPTERS_SUBDIR)
