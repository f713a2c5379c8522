"""The task model: a pretrained BERT with adapters (frozen apart from adapters, layer norms and head) and a head.

`AdapterBertClassifier` takes the three BERT inputs produced by the Transform stage and returns logits
(classification) or a score (regression). `save_adapter_weights` / `load_adapter_weights` store just the
trained variables, with a JSON config naming the adapter settings and the backbone they belong to.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from typing import Dict, List, Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import tensorflow as tf
import tf_keras as keras
import transformers

from modules import backbone as backbone_lib
from modules.adapters import AdapterConfig, add_adapters, freeze_backbone

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# With AdapterDrop, the model also takes the frozen prefix's output instead of the token ids: {PREFIX_OUTPUT:
# [batch, length, hidden] (any float dtype), "attention_mask": [batch, length]} (modules.prefix_cache).
PREFIX_OUTPUT = "prefix_hidden_states"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_weights.npz"


class Untracked:
    """Holds Python objects a tf.Module must not track, such as Keras models whose variables alone are saved:
    saving a Keras model also traces and stores every layer's call functions, which no client of a SavedModel
    reads (they call its signatures) and which took most of a MiniLM export's 92 s on 2 cores (24 s without them
    and AutoGraph: bench/studies/trace_overhead.py)."""

    def __init__(self, **values):
        self.__dict__.update(values)


class AdapterBertClassifier(keras.Model):
    """BERT + adapters + task head (the pretrained pooler, dropout and a linear layer).

    With `full_finetune` no adapters are inserted and every weight trains: the reference that adapters
    are compared against. Otherwise the trainable set is: adapters, encoder LayerNorms (if
    `adapter_config.train_layer_norms`) and the head.

    With `adapter_config.adapter_drop` K > 0 (AdapterDrop) the embeddings and the lowest K layers are frozen
    entirely: `frozen_prefix` runs them in inference mode (no dropout) and stops the gradient at their output,
    so training neither back-propagates through them nor keeps their activations. Dropout stays on in the
    layers above. K = 0 runs HF's TFBertMainLayer unchanged.
    """

    def __init__(
        self,
        bert_model: transformers.TFBertModel,
        num_labels: int,
        adapter_config: AdapterConfig = AdapterConfig(),
        full_finetune: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.bert = bert_model.bert
        self.num_labels = num_labels
        self.adapter_config = adapter_config
        self.full_finetune = full_finetune
        if full_finetune and adapter_config.adapter_drop:
            raise ValueError("--adapter_drop leaves adapters out of layers: it cannot be combined with --full_finetune.")
        self.adapters = [] if full_finetune else add_adapters(self.bert, adapter_config)
        if not full_finetune:
            freeze_backbone(self.bert, adapter_config.train_layer_norms, adapter_config.adapter_drop)
            self.bert.pooler.trainable = True  # part of the task head
        self.dropout = keras.layers.Dropout(self.bert.config.hidden_dropout_prob)
        self.classifier = keras.layers.Dense(
            num_labels,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=self.bert.config.initializer_range),
            name="classifier",
            dtype="float32",  # float32 logits (and loss) also when the rest computes in bfloat16
        )
        self(dummy_inputs(), training=False)
        self.backbone_fingerprint = backbone_lib.weights_fingerprint(self.frozen_variables())

    def call(self, inputs: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        if self.adapter_config.adapter_drop:
            hidden_states = inputs[PREFIX_OUTPUT] if PREFIX_OUTPUT in inputs else self.frozen_prefix(inputs)
            return self.above_prefix(hidden_states, inputs["attention_mask"], training=training)
        outputs = self.bert(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            token_type_ids=inputs["token_type_ids"],
            training=training,
        )
        return self.classifier(self.dropout(outputs.pooler_output, training=training))

    @tf.autograph.experimental.do_not_convert
    def train_step(self, data: tuple) -> Dict[str, tf.Tensor]:
        """Keras' train step, traced without AutoGraph: neither it nor the model has Python control flow on tensor
        values (a graph without AutoGraph fails loudly on any), and AutoGraph's conversion of their ~1,100
        functions, with the optimizer's slots created in the first step, made tracing it take 70 s instead of 10
        (MiniLM, 2 cores; bench/studies/trace_overhead.py). The graph is the same op for op; the weights bit-identical."""
        return super().train_step(data)

    def frozen_prefix(self, inputs: Dict[str, tf.Tensor], depth: Optional[int] = None) -> tf.Tensor:
        """The output of the embeddings and the lowest `depth` layers (default: all `adapter_drop` of them):
        inference mode, no gradient. A bundle computes it once for the tasks that share those layers."""
        depth = self._prefix_depth(depth)
        hidden_states = self.bert.embeddings(
            input_ids=inputs["input_ids"], token_type_ids=inputs["token_type_ids"], training=False
        )
        return tf.stop_gradient(_run_layers(self.bert.encoder.layer[:depth], hidden_states, inputs["attention_mask"],
                                            training=False))

    def above_prefix(self, hidden_states: tf.Tensor, attention_mask: tf.Tensor, training: bool = False,
                     depth: Optional[int] = None) -> tf.Tensor:
        """The logits from `frozen_prefix(inputs, depth)`: the rest of the frozen prefix (inference mode), the
        layers above it, the pooler and the classifier."""
        depth, drop = self._prefix_depth(depth), self.adapter_config.adapter_drop
        hidden_states = tf.cast(hidden_states, self.bert.embeddings.compute_dtype)
        hidden_states = _run_layers(self.bert.encoder.layer[depth:drop], hidden_states, attention_mask, training=False)
        hidden_states = _run_layers(self.bert.encoder.layer[drop:], hidden_states, attention_mask, training=training)
        pooled = self.bert.pooler(hidden_states=hidden_states)
        return self.classifier(self.dropout(pooled, training=training))

    def _prefix_depth(self, depth: Optional[int]) -> int:
        drop = self.adapter_config.adapter_drop
        if depth is None:
            return drop
        if not 0 <= depth <= drop:
            raise ValueError(f"A frozen prefix of {depth} layers: this model freezes only its lowest {drop}.")
        return depth

    def frozen_variables(self) -> List[tf.Variable]:
        """The pretrained weights that training never changes (empty for full fine-tuning)."""
        trainable = {id(v) for v in self.trainable_variables}
        return [v for v in self.bert.variables if id(v) not in trainable]


def _run_layers(layers: List[keras.layers.Layer], hidden_states: tf.Tensor, attention_mask: tf.Tensor,
                training: bool) -> tf.Tensor:
    """BERT encoder layers as TFBertMainLayer runs them: padding masked out with an additive -10000 bias."""
    mask = tf.cast(attention_mask[:, tf.newaxis, tf.newaxis, :], hidden_states.dtype)
    bias = (tf.constant(1.0, hidden_states.dtype) - mask) * tf.constant(-10000.0, hidden_states.dtype)
    for layer in layers:
        hidden_states = layer(hidden_states=hidden_states, attention_mask=bias, head_mask=None, encoder_hidden_states=None,
                              encoder_attention_mask=None, past_key_value=None, output_attentions=False,
                              training=training)[0]
    return hidden_states


def dense_layers(model: keras.Model) -> List[keras.layers.Dense]:
    """`model`'s keras Dense layers (not subclasses, which may compute otherwise): every linear layer of the
    backbone, the adapters and the head."""
    return [layer for layer in model.submodules if type(layer) is keras.layers.Dense]


def bfloat16_dense_call(self: keras.layers.Dense, inputs: tf.Tensor) -> tf.Tensor:
    """keras.layers.Dense.call with the product in bfloat16 (oneDNN accumulates in float32), cast back to float32
    before the bias and the activation, as grappler's oneDNN rewrite does it: the arithmetic of
    --precision bfloat16_matmul under XLA (modules.trainer.bfloat16_matmuls) and of the bfloat16 serving export,
    whose kernels are stored in bfloat16 (modules.serving.bfloat16_products_copy; the cast is then a no-op)."""
    rank = inputs.shape.rank
    x, kernel = tf.cast(inputs, tf.bfloat16), tf.cast(self.kernel, tf.bfloat16)
    product = tf.matmul(x, kernel) if rank == 2 else tf.tensordot(x, kernel, [[rank - 1], [0]])
    outputs = tf.cast(product, tf.float32)
    outputs.set_shape(inputs.shape[:-1].concatenate([self.units]))
    if self.use_bias:
        outputs = tf.nn.bias_add(outputs, self.bias)
    return outputs if self.activation is None else self.activation(outputs)


def dummy_inputs(batch_size: int = 2, seq_length: int = 8) -> Dict[str, tf.Tensor]:
    ids = tf.ones([batch_size, seq_length], tf.int64)
    return {"input_ids": ids, "attention_mask": ids, "token_type_ids": tf.zeros_like(ids)}


def variable_key(variable: tf.Variable) -> str:
    """A name independent of how many models the process built ("tf_bert_model_3/bert/x:0" -> "bert/x")."""
    return re.sub(r"^(tf_bert_model|adapter_bert_classifier)(_\d+)?/", "", variable.name.rsplit(":", 1)[0])


def _backbone_summary(model: AdapterBertClassifier) -> Dict[str, object]:
    config = model.bert.config
    return {
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "intermediate_size": config.intermediate_size,
        "vocab_size": config.vocab_size,
        "fingerprint": model.backbone_fingerprint,
    }


def save_adapter_weights(model: AdapterBertClassifier, directory: str, extra: Optional[Dict] = None) -> None:
    """Writes only the trained variables (adapters, layer norms, head) plus a JSON config.

    Files are written under temporary names and renamed, so a reader never sees half a file.
    """
    if model.full_finetune:
        raise ValueError("A fully fine-tuned model has no adapter-only weights: save the whole model instead.")
    tf.io.gfile.makedirs(directory)
    config = {
        "adapter": dataclasses.asdict(model.adapter_config),
        "num_labels": model.num_labels,
        "backbone": _backbone_summary(model),
        **(extra or {}),
    }
    weights = io.BytesIO()  # np.savez seeks in its output, which a GFile opened for writing cannot do
    np.savez(weights, **{variable_key(v): v.numpy() for v in model.trainable_variables})
    for name, data in (
        (ADAPTER_WEIGHTS_FILE, weights.getvalue()),
        (ADAPTER_CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True).encode()),
    ):
        path = os.path.join(directory, name)
        with tf.io.gfile.GFile(path + ".tmp", "wb") as f:
            f.write(data)
        tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def read_adapter_config(directory: str) -> Dict:
    path = os.path.join(directory, ADAPTER_CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: {directory} is not an adapter-weights directory.")
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def build_from_adapter_config(bert_model: transformers.TFBertModel, config: Dict) -> AdapterBertClassifier:
    return AdapterBertClassifier(bert_model, config["num_labels"], AdapterConfig(**config["adapter"]))


def load_adapter_weights(model: AdapterBertClassifier, directory: str) -> None:
    """Loads adapter-only weights into `model`, refusing weights trained on another backbone."""
    config = read_adapter_config(directory)
    expected, actual = config["backbone"], _backbone_summary(model)
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"):
        if expected[key] != actual[key]:
            raise ValueError(
                f"Adapters in {directory} were trained on a backbone with {key}={expected[key]}, "
                f"this backbone has {key}={actual[key]}."
            )
    # Settings before the fingerprint: it covers the frozen weights, which train_layer_norms changes.
    # Compared as AdapterConfig: configs written before a setting existed hold its default.
    if AdapterConfig(**config["adapter"]) != model.adapter_config or model.num_labels != config["num_labels"]:
        raise ValueError(f"Adapters in {directory} have settings {config['adapter']} with {config['num_labels']} labels; "
                         f"the model was built with {dataclasses.asdict(model.adapter_config)} and {model.num_labels} labels.")
    if expected["fingerprint"] != actual["fingerprint"]:
        raise ValueError(
            f"Adapters in {directory} were trained on other backbone weights (fingerprint "
            f"{expected['fingerprint'][:12]}..., this backbone {actual['fingerprint'][:12]}...): load the backbone they were trained with."
        )
    with tf.io.gfile.GFile(os.path.join(directory, ADAPTER_WEIGHTS_FILE), "rb") as f:
        weights = dict(np.load(f))
    variables = {variable_key(v): v for v in model.trainable_variables}
    if set(weights) != set(variables):
        raise ValueError(
            f"Adapter weights in {directory} do not match the model: missing {sorted(set(variables) - set(weights))}, "
            f"unexpected {sorted(set(weights) - set(variables))}."
        )
    for key, variable in variables.items():
        variable.assign(weights[key])
