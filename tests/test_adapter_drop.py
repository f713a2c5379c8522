"""AdapterDrop and the cached frozen prefix on tiny random BERTs: which layers have adapters and train, that no
gradient reaches the frozen prefix, that K = 0 is today's model, the adapter-only export, the flag's checks,
and that training on the cached prefix gives the weights training without it gives."""
import json
import os
from typing import Dict, List

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import transformers

from modules.adapters import AdaptedSublayerOutput, AdapterConfig
from modules.backbone import build_backbone
from modules.model import (
    PREFIX_OUTPUT,
    AdapterBertClassifier,
    build_from_adapter_config,
    load_adapter_weights,
    read_adapter_config,
    save_adapter_weights,
    variable_key,
)
from test_trainer import FEATURE_SPEC, MAX_SEQ_LENGTH, write_transformed
from tiny_bert import write_tiny_bert

LAYERS, HIDDEN, VOCAB = 3, 32, 100


@pytest.fixture(autouse=True)
def seeded() -> None:
    keras.utils.set_random_seed(0)


def tiny_backbone(**overrides) -> transformers.TFBertModel:
    settings = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                    intermediate_size=37)
    return build_backbone(transformers.BertConfig(**{**settings, **overrides}))


def random_inputs(batch_size: int = 4, seq_length: int = 8) -> Dict[str, tf.Tensor]:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, seq_length + 1, batch_size)
    return {
        "input_ids": tf.constant(rng.integers(0, VOCAB, (batch_size, seq_length))),
        "attention_mask": tf.constant((np.arange(seq_length)[None, :] < lengths[:, None]).astype(np.int64)),
        "token_type_ids": tf.zeros((batch_size, seq_length), tf.int64),
    }


def randomize_adapters(model: AdapterBertClassifier) -> None:
    """Adapters far from the identity, so a layer that skips or doubles one shows in the outputs."""
    rng = np.random.default_rng(3)
    for adapter in model.adapters:
        for variable in adapter.variables:
            variable.assign(rng.normal(0, 0.3, variable.shape).astype(np.float32))


def layer_of(key: str) -> int:
    """The encoder layer a variable key belongs to (-1 for embeddings, pooler and head)."""
    for part in key.split("/"):
        if part.startswith("layer_._"):
            return int(part[len("layer_._"):])
        if part.startswith("adapter_"):
            return int(part.split("_")[1])
    return -1


@pytest.mark.parametrize("k", [1, 2, LAYERS])
def test_the_lowest_k_layers_have_no_adapters_and_nothing_trainable(k: int) -> None:
    model = AdapterBertClassifier(tiny_backbone(), 2, AdapterConfig(adapter_drop=k))
    for i, layer in enumerate(model.bert.encoder.layer):
        assert isinstance(layer.bert_output, AdaptedSublayerOutput) == (i >= k)
        assert isinstance(layer.attention.dense_output, AdaptedSublayerOutput) == (i >= k)
    assert len(model.adapters) == 2 * (LAYERS - k)
    trained_layers = {layer_of(variable_key(v)) for v in model.trainable_variables}
    assert trained_layers == set(range(k, LAYERS)) | {-1}  # layers >= k, and the head
    assert all(not key.startswith("bert/embeddings") for key in map(variable_key, model.trainable_variables))


def test_no_gradient_reaches_the_frozen_prefix() -> None:
    """Every backbone variable is watched: only those above the prefix get a gradient (K = 0 as the contrast)."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    inputs, labels = random_inputs(), tf.constant([0, 1, 1, 0])
    for k in (0, 2):
        model = AdapterBertClassifier(tiny_backbone(), 2, AdapterConfig(adapter_drop=k))
        randomize_adapters(model)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(model.variables)
            value = loss(labels, model(inputs, training=True))
        gradients = tape.gradient(value, model.variables)
        for variable, gradient in zip(model.variables, gradients):
            key = variable_key(variable)
            below = k > 0 and (key.startswith("bert/embeddings") or 0 <= layer_of(key) < k)
            assert (gradient is None) == below, (k, key)


def test_the_prefix_runs_without_dropout_and_the_layers_above_with_it() -> None:
    model = AdapterBertClassifier(tiny_backbone(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5), 2,
                                  AdapterConfig(adapter_drop=2))
    inputs = random_inputs()
    prefix = model.frozen_prefix(inputs).numpy()
    np.testing.assert_array_equal(model.frozen_prefix(inputs).numpy(), prefix)
    first, second = model(inputs, training=True).numpy(), model(inputs, training=True).numpy()
    assert not np.array_equal(first, second)  # dropout above the prefix


def test_k_above_zero_computes_what_hf_bert_computes_with_the_same_layers() -> None:
    model = AdapterBertClassifier(tiny_backbone(), 2, AdapterConfig(adapter_drop=2))
    randomize_adapters(model)
    inputs = random_inputs()
    reference = model.classifier(model.bert(**inputs, training=False).pooler_output).numpy()
    np.testing.assert_allclose(model(inputs).numpy(), reference, rtol=1e-5, atol=1e-6)
    from_prefix = model({PREFIX_OUTPUT: model.frozen_prefix(inputs), "attention_mask": inputs["attention_mask"]})
    np.testing.assert_allclose(from_prefix.numpy(), reference, rtol=1e-5, atol=1e-6)


def test_k_zero_is_the_default_model_exactly() -> None:
    backbone = tiny_backbone()
    weights = backbone.get_weights()
    keras.utils.set_random_seed(0)
    default = AdapterBertClassifier(backbone, 2)
    other = tiny_backbone()
    other.set_weights(weights)
    keras.utils.set_random_seed(0)
    k0 = AdapterBertClassifier(other, 2, AdapterConfig(adapter_drop=0))
    assert [variable_key(v) for v in k0.variables] == [variable_key(v) for v in default.variables]
    assert [variable_key(v) for v in k0.trainable_variables] == [variable_key(v) for v in default.trainable_variables]
    for a, b in zip(k0.get_weights(), default.get_weights()):
        np.testing.assert_array_equal(a, b)
    inputs = random_inputs()
    np.testing.assert_array_equal(k0(inputs).numpy(), default(inputs).numpy())


def test_adapter_only_export_carries_k(tmp_path) -> None:
    backbone = tiny_backbone()
    backbone_weights = backbone.get_weights()
    model = AdapterBertClassifier(backbone, 2, AdapterConfig(adapter_drop=2))
    randomize_adapters(model)
    save_adapter_weights(model, str(tmp_path))
    config = read_adapter_config(str(tmp_path))
    assert config["adapter"]["adapter_drop"] == 2
    weights = set(np.load(os.path.join(tmp_path, "adapter_weights.npz")).files)
    assert {layer_of(key) for key in weights} == {-1, 2}
    fresh = tiny_backbone()
    fresh.set_weights(backbone_weights)
    reloaded = build_from_adapter_config(fresh, config)
    load_adapter_weights(reloaded, str(tmp_path))
    assert reloaded.adapter_config.adapter_drop == 2
    inputs = random_inputs()
    np.testing.assert_array_equal(reloaded(inputs).numpy(), model(inputs).numpy())
    other = AdapterBertClassifier(tiny_backbone(), 2, AdapterConfig(adapter_drop=1))
    with pytest.raises(ValueError, match="adapter_drop"):
        load_adapter_weights(other, str(tmp_path))


def test_adapter_configs_written_before_adapter_drop_load_as_k_zero(tmp_path) -> None:
    backbone = tiny_backbone()
    backbone_weights = backbone.get_weights()
    save_adapter_weights(AdapterBertClassifier(backbone, 2), str(tmp_path))
    path = os.path.join(tmp_path, "adapter_config.json")
    with open(path) as f:
        config = json.load(f)
    del config["adapter"]["adapter_drop"]
    with open(path, "w") as f:
        json.dump(config, f)
    fresh = tiny_backbone()
    fresh.set_weights(backbone_weights)
    model = build_from_adapter_config(fresh, read_adapter_config(str(tmp_path)))
    load_adapter_weights(model, str(tmp_path))
    assert model.adapter_config.adapter_drop == 0


@pytest.mark.parametrize("k", [-1, LAYERS + 1])
def test_k_outside_the_backbone_is_refused_naming_the_flag(k: int) -> None:
    with pytest.raises(ValueError, match="--adapter_drop"):
        AdapterBertClassifier(tiny_backbone(), 2, AdapterConfig(adapter_drop=k))


def test_training_config_checks_adapter_drop() -> None:
    from modules.config import TrainingConfig

    assert TrainingConfig(adapter_drop=2).adapter_config().adapter_drop == 2
    with pytest.raises(ValueError, match="--adapter_drop must be an integer >= 0"):
        TrainingConfig(adapter_drop=-1)
    with pytest.raises(ValueError, match="--adapter_drop .* --full_finetune"):
        TrainingConfig(adapter_drop=1, full_finetune=True)


def test_pipeline_flag_is_checked_against_the_backbone(tmp_path) -> None:
    from pipeline.run import parse_args, training_config

    model_dir = write_tiny_bert(tmp_path / "tiny", num_layers=2)
    args, _ = parse_args(["--model", model_dir, "--adapter_drop", "2", "--no_prefix_cache"])
    config = training_config(args)
    assert (config.adapter_drop, config.prefix_cache) == (2, False)
    args, _ = parse_args(["--model", model_dir, "--adapter_drop", "3"])
    with pytest.raises(ValueError, match="--adapter_drop 3 must be between 0 and the backbone's 2 layers"):
        training_config(args)


# --- the cached frozen prefix ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_with_and_without_cache(tmp_path_factory: pytest.TempPathFactory):
    """`train` at K = 2 of 3 layers, 2 epochs on 40 examples, once on the cached prefix and once without."""
    from modules.trainer import train
    from modules.config import TrainingConfig

    root = tmp_path_factory.mktemp("cache")
    model_dir = write_tiny_bert(root / "tiny_bert", num_layers=3, initializer_range=0.2)
    rng = np.random.default_rng(1)
    train_files = write_transformed(str(root / "train"), rng.integers(5, MAX_SEQ_LENGTH + 1, 40).tolist(),
                                    rng.integers(0, 2, 40).tolist())
    eval_files = write_transformed(str(root / "eval"), rng.integers(5, 33, 16).tolist(), [0, 1] * 8)
    models = {}
    for cached in (True, False):
        # float32: the cache holds the prefix computed in float32, so bfloat16 products elsewhere would differ by
        # more than the float16 rounding this test bounds.
        config = TrainingConfig(task="mrpc", model=model_dir, batch_size=8, epochs=2, max_seq_length=MAX_SEQ_LENGTH,
                                bottleneck_size=8, learning_rate=1e-2, adapter_drop=2, prefix_cache=cached,
                                precision="float32")
        models[cached], _ = train(config, [train_files], [eval_files], FEATURE_SPEC, str(root / f"logs-{cached}"))
    return models


def input_keys(model: keras.Model) -> List[str]:
    signatures = model.train_function.pretty_printed_concrete_signatures()
    return sorted(key for key in (PREFIX_OUTPUT, "input_ids", "attention_mask") if f"'{key}'" in signatures)


def test_training_on_the_cached_prefix_gives_the_weights_of_training_without_it(trained_with_and_without_cache) -> None:
    cached, uncached = trained_with_and_without_cache[True], trained_with_and_without_cache[False]
    assert input_keys(cached) == ["attention_mask", PREFIX_OUTPUT]  # the steps ran on the cache, not on token ids
    assert input_keys(uncached) == ["attention_mask", "input_ids"]
    differences = {}
    for a, b in zip(cached.trainable_variables, uncached.trainable_variables):
        assert variable_key(a) == variable_key(b)
        differences[variable_key(a)] = float(np.abs(a.numpy() - b.numpy()).max())
    # What training moved: adapter biases start at exactly zero.
    moved = min(float(np.abs(v.numpy()).max()) for v in cached.trainable_variables if "adapter" in v.name and "bias" in v.name)
    # float16 rounding of the cached states (relative error <= 2**-11) is all that differs: measured 1.0e-4,
    # against 8.2e-3 for the smallest largest-movement of an adapter bias.
    assert max(differences.values()) < 5e-4, differences
    assert moved > 5e-3


@pytest.mark.parametrize("bucketing", [True, False])
def test_cached_batches_hold_the_prefix_output_of_their_own_examples(tmp_path, monkeypatch, bucketing: bool) -> None:
    from modules import prefix_cache
    from modules.trainer import BUCKET_BOUNDARIES, read_transformed, make_dataset

    rng = np.random.default_rng(4)
    lengths = rng.integers(5, MAX_SEQ_LENGTH + 1, 20)
    files = [write_transformed(str(tmp_path / "train"), lengths.tolist(), [0, 1] * 10)]
    model = AdapterBertClassifier(tiny_backbone(vocab_size=400, max_position_embeddings=64), 2,
                                  AdapterConfig(adapter_drop=1))
    boundaries = [b for b in BUCKET_BOUNDARIES if b < MAX_SEQ_LENGTH]
    cache = prefix_cache.build_prefix_cache(model, read_transformed(files, FEATURE_SPEC), 8, boundaries)
    assert cache.nbytes == lengths.sum() * HIDDEN * 2  # float16, each example at its own length
    plain = make_dataset(files, FEATURE_SPEC, 8, MAX_SEQ_LENGTH, shuffle_seed=None, bucketing=bucketing)
    cached = make_dataset(files, FEATURE_SPEC, 8, MAX_SEQ_LENGTH, shuffle_seed=None, bucketing=bucketing,
                          prefix_cache=cache)
    for (tokens, label), (states, cached_label) in zip(plain, cached):
        np.testing.assert_array_equal(label.numpy(), cached_label.numpy())
        np.testing.assert_array_equal(states["attention_mask"].numpy(), tokens["attention_mask"].numpy())
        assert states[PREFIX_OUTPUT].dtype == tf.float16
        mask = tokens["attention_mask"].numpy().astype(bool)
        expected = model.frozen_prefix(tokens).numpy()
        np.testing.assert_allclose(states[PREFIX_OUTPUT].numpy()[mask], expected[mask], rtol=2e-3, atol=1e-3)
        assert not states[PREFIX_OUTPUT].numpy()[~mask].any()  # padding is zeros
    monkeypatch.setattr(prefix_cache, "MAX_CACHE_BYTES", int(lengths.sum()) * HIDDEN * 2 - 1)
    assert prefix_cache.build_prefix_cache(model, read_transformed(files, FEATURE_SPEC), 8, boundaries) is None


def test_a_bundle_builds_the_task_with_its_k_and_shares_the_frozen_layer_norms(tmp_path) -> None:
    from modules.bundle import SharedBackbone, read_task_adapters

    backbone = tiny_backbone()
    backbone_weights = backbone.get_weights()
    model = AdapterBertClassifier(backbone, 2, AdapterConfig(adapter_drop=2))
    randomize_adapters(model)
    save_adapter_weights(model, str(tmp_path), extra={"task": "mrpc", "max_seq_length": 16})
    shared_backbone = tiny_backbone()
    shared_backbone.set_weights(backbone_weights)
    shared = SharedBackbone(shared_backbone)
    task_model = shared.task_model(read_task_adapters(str(tmp_path)))
    assert task_model.adapter_config.adapter_drop == 2
    inputs = random_inputs()
    np.testing.assert_array_equal(task_model(inputs).numpy(), model(inputs).numpy())
    layer_norm = "bert/encoder/layer_._0/output/LayerNorm/gamma"
    assert any(v is shared.variables[layer_norm] for v in task_model.variables)


def test_a_saved_model_serves_the_k_model_exactly(tmp_path) -> None:
    """What export_serving_model's signatures do with the model: call it on token ids inside a tf.function."""
    model = AdapterBertClassifier(tiny_backbone(), 2, AdapterConfig(adapter_drop=2))
    randomize_adapters(model)
    module = tf.Module()
    module.model = model
    spec = tf.TensorSpec([None, None], tf.int64)
    module.logits = tf.function(lambda ids, mask, types: model(
        {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}, training=False), input_signature=[spec] * 3)
    tf.saved_model.save(module, str(tmp_path), signatures={"logits": module.logits.get_concrete_function()})
    serve = tf.saved_model.load(str(tmp_path)).signatures["logits"]
    inputs = random_inputs()
    served = serve(ids=inputs["input_ids"], mask=inputs["attention_mask"], types=inputs["token_type_ids"])
    np.testing.assert_allclose(list(served.values())[0].numpy(), model(inputs).numpy(), rtol=1e-6, atol=1e-6)


def test_all_tasks_signature_runs_the_shared_frozen_layers_once_and_answers_as_each_task(tmp_path, monkeypatch) -> None:
    """Pair tasks at K = 2 and 3 share the embeddings and layers 0-1; a K = 0 pair task and a single-sentence
    task (other tokens) cannot; every task's answer equals its own signature's."""
    from modules.backbone import load_backbone
    from modules.bundle import build_bundle, read_task_adapters
    from modules.glue import get_task

    model_dir = write_tiny_bert(tmp_path / "tiny_bert", num_layers=3, initializer_range=0.2)
    adapter_sets = []
    for task, k in {"mrpc": 2, "rte": 3, "stsb": 0, "sst2": 2}.items():
        model = AdapterBertClassifier(load_backbone(model_dir), get_task(task).num_labels,
                                      AdapterConfig(bottleneck_size=8, adapter_drop=k))
        randomize_adapters(model)
        save_adapter_weights(model, str(tmp_path / task), extra={"task": task, "max_seq_length": 16})
        adapter_sets.append(read_task_adapters(str(tmp_path / task)))
    bundle = build_bundle(model_dir, adapter_sets)
    assert [(p.pair, p.tasks, p.sharing, p.layers) for p in bundle.shared_prefixes()] == [
        (False, ("sst2",), ("sst2",), 2), (True, ("mrpc", "rte", "stsb"), ("mrpc", "rte"), 2)]

    depths: List[int] = []
    frozen_prefix = AdapterBertClassifier.frozen_prefix
    monkeypatch.setattr(AdapterBertClassifier, "frozen_prefix",
                        lambda self, inputs, depth=None: depths.append(depth) or frozen_prefix(self, inputs, depth))
    all_tasks = bundle.all_tasks_signature()
    assert depths == [2, 2]  # once per group of tasks reading the same tokens, not once per task
    monkeypatch.setattr(AdapterBertClassifier, "frozen_prefix", frozen_prefix)

    s1 = tf.constant(["the movie was very good", "bad film", "a good day"])
    s2 = tf.constant(["the film was good", "the movie was not good at all", "day"])
    out = {key: value.numpy() for key, value in all_tasks(sentence1=s1, sentence2=s2).items()}
    for name in bundle.task_names:
        single = bundle.task_signature(name)
        expected = single(sentence1=s1) if name == "sst2" else single(sentence1=s1, sentence2=s2)
        for key, value in expected.items():
            if value.dtype == tf.string:
                np.testing.assert_array_equal(out[f"{name}/{key}"], value.numpy())
            else:
                np.testing.assert_allclose(out[f"{name}/{key}"], value.numpy(), atol=1e-5, rtol=0)
    assert np.ptp(out["stsb/score"]) > 100 * 1e-5 and np.ptp(out["mrpc/probabilities"][:, 1]) > 100 * 1e-5
