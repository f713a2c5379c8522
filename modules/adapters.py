"""Houlsby adapters inside a frozen BERT (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP").

The paper, Section 2.1 and Figure 2, checked line by line below:
  - An adapter maps the d-dimensional output h of a sublayer to  h + W_up f(W_down h + b_down) + b_up:
    a down-projection to a bottleneck of size m, a non-linearity f, an up-projection back to d, and an
    internal skip connection. It has 2dm + d + m parameters.  -> `Adapter`
  - Initialised near the identity: projection weights from a zero-mean truncated normal with a small
    standard deviation (1e-3 in the authors' code), zero biases, so training starts from the backbone.
  - Houlsby placement: two adapters per transformer layer, one after the projection that follows
    multi-head attention and one after the feed-forward block; each is applied to the sublayer's output
    after dropout and before the residual addition and layer normalisation.  -> `AdaptedSublayerOutput`
  - Pfeiffer placement (Pfeiffer et al. 2020): a single adapter per layer, after the feed-forward block.
    With `original_ln_before` the adapter reads LayerNorm(sublayer output + residual) instead of the sublayer
    output (its skip connection still adds the sublayer output, and the same LayerNorm is applied again
    after): AdapterHub's Pfeiffer configuration (`seq_bn`), needed to serve adapters trained there.
  - Only the adapters, the layer normalisation parameters and the task head train; the pretrained
    weights stay frozen.  -> `freeze_backbone`

AdapterDrop (Rücklé et al. 2021, "AdapterDrop: On the Efficiency of Adapters in Transformers"): with
`adapter_drop` K > 0 the lowest K layers get no adapters and their layer norms stay frozen too, so the
embeddings and those layers have nothing to train: the model runs them forward only, in inference mode
(no dropout), and stops the gradient at their output (`modules.model`).

In HF's TFBertLayer both positions are the same kind of sublayer (TFBertSelfOutput / TFBertOutput:
dense -> dropout -> LayerNorm(h + residual)), so one wrapper serves both.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Dict, List

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf
import tf_keras as keras

NON_LINEARITIES: Dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "gelu": lambda x: tf.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: tf.nn.gelu(x, approximate=True),
    "relu": tf.nn.relu,
    "swish": tf.nn.silu,
    "tanh": tf.math.tanh,
}
PLACEMENTS = ("houlsby", "pfeiffer")


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """Everything that decides the shape and the trainable set of an adapter model."""

    bottleneck_size: int = 64
    non_linearity: str = "gelu"
    placement: str = "houlsby"
    init_std: float = 1e-3
    train_layer_norms: bool = True
    original_ln_before: bool = False
    adapter_drop: int = 0  # AdapterDrop: the lowest K layers have no adapters and are frozen entirely

    def __post_init__(self) -> None:
        if not isinstance(self.bottleneck_size, int) or self.bottleneck_size <= 0:
            raise ValueError(f"--bottleneck_size must be a positive integer, got {self.bottleneck_size!r}.")
        if self.non_linearity not in NON_LINEARITIES:
            raise ValueError(
                f"--non_linearity {self.non_linearity!r} is unknown: expected one of {', '.join(NON_LINEARITIES)}."
            )
        if self.placement not in PLACEMENTS:
            raise ValueError(f"--placement {self.placement!r} is unknown: expected one of {', '.join(PLACEMENTS)}.")
        if not self.init_std > 0:
            raise ValueError(f"Adapter init_std must be positive, got {self.init_std!r}.")
        if not isinstance(self.adapter_drop, int) or self.adapter_drop < 0:
            raise ValueError(f"--adapter_drop must be an integer >= 0, got {self.adapter_drop!r}.")


def check_adapter_drop(adapter_drop: int, num_layers: int) -> None:
    """AdapterDrop can leave out at most every layer of the backbone."""
    if not 0 <= adapter_drop <= num_layers:
        raise ValueError(f"--adapter_drop {adapter_drop} must be between 0 and the backbone's {num_layers} layers.")


class Adapter(keras.layers.Layer):
    """h + W_up f(W_down h + b_down) + b_up, initialised near the identity."""

    def __init__(self, hidden_size: int, config: AdapterConfig, **kwargs):
        super().__init__(**kwargs)
        # One initializer instance per kernel: an unseeded Keras initializer called twice repeats its values,
        # which would make W_up a reshaped copy of W_down.
        self.down = keras.layers.Dense(
            config.bottleneck_size, kernel_initializer=keras.initializers.TruncatedNormal(stddev=config.init_std), name="down"
        )
        self.up = keras.layers.Dense(
            hidden_size, kernel_initializer=keras.initializers.TruncatedNormal(stddev=config.init_std), name="up"
        )
        self.non_linearity = NON_LINEARITIES[config.non_linearity]
        self.hidden_size = hidden_size

    def build(self, input_shape=None) -> None:
        with tf.name_scope(self.down.name):
            self.down.build([None, None, self.hidden_size])
        with tf.name_scope(self.up.name):
            self.up.build([None, None, self.down.units])
        super().build(input_shape)

    def call(self, hidden_states: tf.Tensor) -> tf.Tensor:
        return hidden_states + self.bottleneck(hidden_states)

    def bottleneck(self, hidden_states: tf.Tensor) -> tf.Tensor:
        """W_up f(W_down h + b_down) + b_up: the adapter without its skip connection."""
        return self.up(self.non_linearity(self.down(hidden_states)))


class AdaptedSublayerOutput(keras.layers.Layer):
    """BERT's sublayer output with an adapter after dropout, before the residual add and LayerNorm.

    With `original_ln_before` the adapter's bottleneck reads LayerNorm(h + residual) (AdapterHub's seq_bn).
    """

    def __init__(self, sublayer: keras.layers.Layer, adapter: Adapter, original_ln_before: bool = False, **kwargs):
        super().__init__(name=sublayer.name, **kwargs)
        self.sublayer = sublayer
        self.adapter = adapter
        self.original_ln_before = original_ln_before

    def call(self, hidden_states: tf.Tensor, input_tensor: tf.Tensor, training: bool = False) -> tf.Tensor:
        hidden_states = self.sublayer.dense(hidden_states)
        hidden_states = self.sublayer.dropout(hidden_states, training=training)
        if self.original_ln_before:
            hidden_states = hidden_states + self.adapter.bottleneck(self.sublayer.LayerNorm(hidden_states + input_tensor))
        else:
            hidden_states = self.adapter(hidden_states)
        return self.sublayer.LayerNorm(hidden_states + input_tensor)


def add_adapters(bert: keras.layers.Layer, config: AdapterConfig) -> List[Adapter]:
    """Inserts fresh adapters, each with its own variables, into every layer of a built TFBertMainLayer
    above the lowest `config.adapter_drop` layers."""
    check_adapter_drop(config.adapter_drop, len(bert.encoder.layer))
    hidden_size = bert.config.hidden_size
    adapters = []
    for i, layer in enumerate(bert.encoder.layer):
        if i < config.adapter_drop:
            continue
        if config.placement == "houlsby":
            adapter = Adapter(hidden_size, config, name=f"adapter_{i}_attention")
            layer.attention.dense_output = AdaptedSublayerOutput(layer.attention.dense_output, adapter,
                                                                 config.original_ln_before)
            adapters.append(adapter)
        adapter = Adapter(hidden_size, config, name=f"adapter_{i}_output")
        layer.bert_output = AdaptedSublayerOutput(layer.bert_output, adapter, config.original_ln_before)
        adapters.append(adapter)
    for adapter in adapters:
        with tf.name_scope(adapter.name):
            adapter.build([None, None, hidden_size])
    return adapters


def freeze_backbone(bert: keras.layers.Layer, train_layer_norms: bool, adapter_drop: int = 0) -> None:
    """Freezes every pretrained weight of a TFBertMainLayer except (optionally) the encoder's LayerNorms above
    the lowest `adapter_drop` layers.

    Keras hides the weights of a non-trainable layer's children, so freezing happens leaf by leaf:
    embeddings, and in each layer the attention, the dense projections and the intermediate block.
    Adapters are separate layers and stay trainable.
    """
    bert.embeddings.trainable = False
    for i, layer in enumerate(bert.encoder.layer):
        layer.attention.self_attention.trainable = False
        layer.intermediate.trainable = False
        for output in (layer.attention.dense_output, layer.bert_output):
            sublayer = output.sublayer if isinstance(output, AdaptedSublayerOutput) else output  # Pfeiffer: attention unwrapped
            sublayer.dense.trainable = False
            sublayer.LayerNorm.trainable = train_layer_norms and i >= adapter_drop
    bert.pooler.trainable = False
