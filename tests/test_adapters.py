"""Adapters and the adapter model on tiny random BERTs: parameter counts, near-identity initialisation,
placement inside the sublayer, what training changes, adapter-only save/load and argument checks."""
import math
import re
from typing import Dict, List

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import transformers

from modules.adapters import NON_LINEARITIES, AdaptedSublayerOutput, Adapter, AdapterConfig
from modules.backbone import build_backbone, weights_fingerprint
from modules.model import (
    AdapterBertClassifier,
    build_from_adapter_config,
    load_adapter_weights,
    read_adapter_config,
    save_adapter_weights,
    variable_key,
)

HIDDEN, LAYERS, INTERMEDIATE, VOCAB, LABELS = 32, 2, 37, 100, 3
# What may train besides the adapters: the encoder's LayerNorms and the head (pooler + classifier).
LAYER_NORM_KEY = re.compile(r"^bert/encoder/layer_\._\d+/(attention/)?output/LayerNorm/(gamma|beta)$")
HEAD_KEY = re.compile(r"^(bert/pooler/dense|classifier)/(kernel|bias)$")
ADAPTER_KEY = re.compile(r"^adapter_\d+_(attention|output)/(down|up)/(kernel|bias)$")


@pytest.fixture(autouse=True)
def seeded() -> None:
    keras.utils.set_random_seed(0)


def tiny_config(**overrides) -> transformers.BertConfig:
    settings = dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=INTERMEDIATE
    )
    return transformers.BertConfig(**{**settings, **overrides})


def copy_of(weights: List[np.ndarray], config: transformers.BertConfig) -> transformers.TFBertModel:
    """A new backbone instance holding the given weights."""
    backbone = build_backbone(config)
    backbone.set_weights(weights)
    return backbone


def random_inputs(batch_size: int = 4, seq_length: int = 8, seed: int = 0) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, seq_length + 1, batch_size)
    return {
        "input_ids": rng.integers(0, VOCAB, (batch_size, seq_length)),
        "attention_mask": (np.arange(seq_length)[None, :] < lengths[:, None]).astype(np.int64),
        "token_type_ids": (np.arange(seq_length)[None, :] >= seq_length // 2).astype(np.int64).repeat(batch_size, 0),
    }


def size(variables: List[tf.Variable]) -> int:
    return sum(int(np.prod(v.shape)) for v in variables)


def train_a_few_steps(model: AdapterBertClassifier) -> None:
    """Four Adam steps on random data, with dropout active (fit calls the model with training=True)."""
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,  # tracing BERT into a graph costs 5-20 s per model; eager steps on a tiny BERT are fast
    )
    labels = np.random.default_rng(1).integers(0, LABELS, 16)
    model.fit(random_inputs(batch_size=16, seed=1), labels, batch_size=4, epochs=1, verbose=0)


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    variance = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + eps) * gamma + beta


# --- parameter counts --------------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden_size,bottleneck_size", [(32, 64), (384, 64), (32, 8)])
def test_adapter_has_2dm_plus_d_plus_m_parameters(hidden_size: int, bottleneck_size: int) -> None:
    adapter = Adapter(hidden_size, AdapterConfig(bottleneck_size=bottleneck_size))
    adapter.build([None, None, hidden_size])
    d, m = hidden_size, bottleneck_size
    assert size(adapter.trainable_variables) == 2 * d * m + d + m
    assert adapter.down.kernel.shape == (d, m) and adapter.up.kernel.shape == (m, d)


@pytest.mark.parametrize("placement,adapters_per_layer", [("houlsby", 2), ("pfeiffer", 1)])
@pytest.mark.parametrize("train_layer_norms", [True, False])
def test_trainable_parameters_match_the_formula(placement: str, adapters_per_layer: int, train_layer_norms: bool) -> None:
    m = 16
    adapter_config = AdapterConfig(bottleneck_size=m, placement=placement, train_layer_norms=train_layer_norms)
    model = AdapterBertClassifier(build_backbone(tiny_config()), LABELS, adapter_config)
    d, n = HIDDEN, LABELS
    adapters = LAYERS * adapters_per_layer * (2 * d * m + d + m)
    layer_norms = LAYERS * 2 * 2 * d if train_layer_norms else 0
    head = (d * d + d) + (d * n + n)
    assert len(model.adapters) == LAYERS * adapters_per_layer
    for layer in model.bert.encoder.layer:  # Pfeiffer: only after the feed-forward block
        assert isinstance(layer.attention.dense_output, AdaptedSublayerOutput) == (placement == "houlsby")
        assert isinstance(layer.bert_output, AdaptedSublayerOutput)
    assert size(model.trainable_variables) == adapters + layer_norms + head
    allowed = [ADAPTER_KEY, HEAD_KEY] + ([LAYER_NORM_KEY] if train_layer_norms else [])
    for variable in model.trainable_variables:
        assert any(pattern.match(variable_key(variable)) for pattern in allowed), variable.name
    assert size(model.frozen_variables()) + size(model.trainable_variables) == size(model.variables)


def test_full_finetune_trains_everything_and_inserts_no_adapters() -> None:
    backbone = build_backbone(tiny_config())
    backbone_size = size(backbone.variables)
    model = AdapterBertClassifier(backbone, LABELS, full_finetune=True)
    assert model.adapters == []
    assert model.frozen_variables() == []
    assert size(model.trainable_variables) == size(model.variables) == backbone_size + HIDDEN * LABELS + LABELS
    for layer in model.bert.encoder.layer:
        assert not isinstance(layer.attention.dense_output, AdaptedSublayerOutput)
        assert not isinstance(layer.bert_output, AdaptedSublayerOutput)


# --- initialisation and placement --------------------------------------------------------------------------


def test_adapter_initialisation_is_small_zero_biased_and_independent() -> None:
    model = AdapterBertClassifier(build_backbone(tiny_config()), LABELS)
    for adapter in model.adapters:
        down, up = adapter.down.kernel.numpy(), adapter.up.kernel.numpy()
        assert not adapter.down.bias.numpy().any() and not adapter.up.bias.numpy().any()
        for kernel in (down, up):
            assert 5e-4 < kernel.std() < 1.5e-3
            assert np.abs(kernel).max() <= 2e-3  # truncated at two standard deviations
        assert not np.array_equal(down.ravel(), up.ravel())  # not one random stream reused for both kernels


@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_outputs_at_initialisation_match_the_plain_backbone(placement: str) -> None:
    config = tiny_config()
    backbone = build_backbone(config)
    plain = copy_of(backbone.get_weights(), config)
    model = AdapterBertClassifier(backbone, LABELS, AdapterConfig(placement=placement))
    inputs = random_inputs()
    adapted, reference = model.bert(**inputs, training=False), plain(inputs, training=False)
    for name in ("last_hidden_state", "pooler_output"):
        a, b = getattr(adapted, name).numpy(), getattr(reference, name).numpy()
        # Init std 1e-3 moves outputs by ~1e-6 (it scales with std^2); std 1e-2 or a missing skip connection would not pass.
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=name)
    assert not np.array_equal(adapted.last_hidden_state.numpy(), reference.last_hidden_state.numpy())  # adapters are in the path


@pytest.mark.parametrize("position", ["attention", "output"])
def test_adapter_sits_after_dropout_and_before_residual_and_layer_norm(position: str) -> None:
    config = tiny_config(hidden_dropout_prob=0.5)
    model = AdapterBertClassifier(build_backbone(config), LABELS)
    layer = model.bert.encoder.layer[0]
    wrapper = layer.attention.dense_output if position == "attention" else layer.bert_output
    assert isinstance(wrapper, AdaptedSublayerOutput)
    sublayer, adapter = wrapper.sublayer, wrapper.adapter

    inputs = random_inputs()
    before = model.bert(**inputs, training=False).last_hidden_state.numpy()
    # With zero kernels the adapter adds exactly its up-projection bias b: h -> h + b.
    rng = np.random.default_rng(2)
    b = rng.normal(size=HIDDEN).astype(np.float32)
    adapter.down.kernel.assign(tf.zeros_like(adapter.down.kernel))
    adapter.up.kernel.assign(tf.zeros_like(adapter.up.kernel))
    adapter.up.bias.assign(b)
    sublayer.LayerNorm.gamma.assign(rng.normal(size=HIDDEN).astype(np.float32))
    sublayer.LayerNorm.beta.assign(rng.normal(size=HIDDEN).astype(np.float32))
    after = model.bert(**inputs, training=False).last_hidden_state.numpy()
    assert np.abs(after - before).max() > 0.1  # the encoder really runs through this wrapper

    x = rng.normal(size=(2, 5, sublayer.dense.kernel.shape[0])).astype(np.float32)
    residual = rng.normal(size=(2, 5, HIDDEN)).astype(np.float32)
    gamma, beta = sublayer.LayerNorm.gamma.numpy(), sublayer.LayerNorm.beta.numpy()
    dense = x @ sublayer.dense.kernel.numpy() + sublayer.dense.bias.numpy()
    expected = layer_norm(dense + b + residual, gamma, beta, config.layer_norm_eps)
    np.testing.assert_allclose(wrapper(x, residual, training=False).numpy(), expected, atol=1e-5)

    # After dropout: with a zero dense projection dropout sees only zeros, so even in training the output is
    # exactly LayerNorm(b + residual); an adapter before dropout would have half of b dropped (rate 0.5).
    sublayer.dense.kernel.assign(tf.zeros_like(sublayer.dense.kernel))
    sublayer.dense.bias.assign(tf.zeros_like(sublayer.dense.bias))
    expected = layer_norm(b + residual, gamma, beta, config.layer_norm_eps)
    np.testing.assert_allclose(wrapper(x, residual, training=True).numpy(), expected, atol=1e-5)


# --- training ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_training_changes_adapters_layer_norms_and_head_only(placement: str) -> None:
    model = AdapterBertClassifier(build_backbone(tiny_config()), LABELS, AdapterConfig(placement=placement))
    before = {variable_key(v): v.numpy() for v in model.variables}
    assert len(before) == len(model.variables)
    frozen = model.frozen_variables()
    train_a_few_steps(model)

    assert len(frozen) == len(model.variables) - len(model.trainable_variables) > 0
    for variable in frozen:
        assert np.array_equal(variable.numpy(), before[variable_key(variable)]), variable.name
    assert weights_fingerprint(model.frozen_variables()) == model.backbone_fingerprint
    adapter_variables = [v for adapter in model.adapters for v in adapter.trainable_variables]
    assert len(adapter_variables) == 4 * len(model.adapters)
    for variable in model.trainable_variables:
        assert not np.array_equal(variable.numpy(), before[variable_key(variable)]), variable.name
    trained = {variable_key(v) for v in model.trainable_variables}
    assert {variable_key(v) for v in adapter_variables} <= trained
    assert sum(bool(LAYER_NORM_KEY.match(key)) for key in trained) == LAYERS * 2 * 2
    assert sum(bool(HEAD_KEY.match(key)) for key in trained) == 4


def test_the_two_adapters_of_a_layer_are_distinct() -> None:
    model = AdapterBertClassifier(build_backbone(tiny_config()), LABELS, AdapterConfig(placement="houlsby"))
    names = [v.name for adapter in model.adapters for v in adapter.variables]
    assert len(set(names)) == len(names) == 4 * 2 * LAYERS
    train_a_few_steps(model)
    for layer in model.bert.encoder.layer:
        first, second = layer.attention.dense_output.adapter, layer.bert_output.adapter
        assert first is not second and first.name != second.name
        for a, b in zip(first.variables, second.variables):
            assert a is not b and a.name != b.name
            assert not np.array_equal(a.numpy(), b.numpy()), (a.name, b.name)


# --- adapter-only save and load ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Dict:
    """A trained tiny adapter model saved adapter-only, with the pretrained weights of its backbone."""
    keras.utils.set_random_seed(0)
    config = tiny_config()
    backbone = build_backbone(config)
    pretrained = backbone.get_weights()
    model = AdapterBertClassifier(backbone, LABELS)
    train_a_few_steps(model)
    directory = str(tmp_path_factory.mktemp("adapters"))
    save_adapter_weights(model, directory)
    return {"directory": directory, "config": config, "pretrained": pretrained, "model": model}


def test_adapter_only_weights_reload_into_a_fresh_backbone_exactly(saved: Dict) -> None:
    directory, model = saved["directory"], saved["model"]
    stored = np.load(f"{directory}/adapter_weights.npz")
    assert set(stored.files) == {variable_key(v) for v in model.trainable_variables}

    fresh = build_from_adapter_config(copy_of(saved["pretrained"], saved["config"]), read_adapter_config(directory))
    inputs = random_inputs(seed=3)
    expected = model(inputs, training=False).numpy()
    assert not np.array_equal(fresh(inputs, training=False).numpy(), expected)
    load_adapter_weights(fresh, directory)
    assert np.array_equal(fresh(inputs, training=False).numpy(), expected)


def test_load_refuses_a_backbone_of_other_shapes(saved: Dict) -> None:
    other = AdapterBertClassifier(build_backbone(tiny_config(hidden_size=48)), LABELS)
    with pytest.raises(ValueError, match="trained on a backbone with hidden_size=32, this backbone has hidden_size=48"):
        load_adapter_weights(other, saved["directory"])


def test_load_refuses_a_backbone_with_other_weights(saved: Dict) -> None:
    weights = [w.copy() for w in saved["pretrained"]]
    weights[0][0, 0] += 1.0  # one word-embedding value
    other = AdapterBertClassifier(copy_of(weights, saved["config"]), LABELS)
    with pytest.raises(ValueError, match="trained on other backbone weights .*load the backbone they were trained with"):
        load_adapter_weights(other, saved["directory"])


@pytest.mark.parametrize(
    "adapter_config,num_labels",
    [
        (AdapterConfig(bottleneck_size=16), LABELS),
        (AdapterConfig(placement="pfeiffer"), LABELS),
        (AdapterConfig(non_linearity="relu"), LABELS),
        (AdapterConfig(train_layer_norms=False), LABELS),
        (AdapterConfig(), 2),
    ],
    ids=["bottleneck_size", "placement", "non_linearity", "train_layer_norms", "num_labels"],
)
def test_load_refuses_other_adapter_settings(saved: Dict, adapter_config: AdapterConfig, num_labels: int) -> None:
    other = AdapterBertClassifier(copy_of(saved["pretrained"], saved["config"]), num_labels, adapter_config)
    with pytest.raises(ValueError, match="have settings .* the model was built with"):
        load_adapter_weights(other, saved["directory"])


def test_full_finetune_model_cannot_be_saved_adapter_only(tmp_path) -> None:
    model = AdapterBertClassifier(build_backbone(tiny_config()), LABELS, full_finetune=True)
    with pytest.raises(ValueError, match="fully fine-tuned"):
        save_adapter_weights(model, str(tmp_path))


# --- settings ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings,flag",
    [
        ({"non_linearity": "sigmoid"}, "--non_linearity"),
        ({"bottleneck_size": 0}, "--bottleneck_size"),
        ({"bottleneck_size": -8}, "--bottleneck_size"),
        ({"placement": "parallel"}, "--placement"),
    ],
)
def test_invalid_settings_name_the_flag(settings: Dict, flag: str) -> None:
    with pytest.raises(ValueError, match=re.escape(flag)):
        AdapterConfig(**settings)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x)


REFERENCE_NON_LINEARITIES = {
    "gelu": lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2))),
    "gelu_new": lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
    "relu": lambda x: np.maximum(x, 0),
    "swish": lambda x: x / (1 + np.exp(-x)),
    "tanh": np.tanh,
}


def test_every_non_linearity_has_a_reference() -> None:
    assert set(NON_LINEARITIES) == set(REFERENCE_NON_LINEARITIES)


@pytest.mark.parametrize("name", sorted(NON_LINEARITIES))
def test_each_non_linearity_computes_its_function_and_runs_in_the_model(name: str) -> None:
    adapter = Adapter(HIDDEN, AdapterConfig(non_linearity=name, bottleneck_size=8, init_std=0.5))
    adapter.build([None, None, HIDDEN])
    h = np.random.default_rng(4).normal(size=(2, 3, HIDDEN)).astype(np.float32)
    down = h.astype(np.float64) @ adapter.down.kernel.numpy() + adapter.down.bias.numpy()
    expected = REFERENCE_NON_LINEARITIES[name](down) @ adapter.up.kernel.numpy() + adapter.up.bias.numpy()
    np.testing.assert_allclose(adapter(h).numpy() - h, expected, rtol=0, atol=2e-5)

    model = AdapterBertClassifier(build_backbone(tiny_config()), LABELS, AdapterConfig(non_linearity=name))
    logits = model(random_inputs(), training=True).numpy()
    assert logits.shape == (4, LABELS) and np.isfinite(logits).all()
