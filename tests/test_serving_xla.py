"""The serving export options (modules.serving.ServingModel): the model part XLA-compiled on inputs padded to
length bounds and a power-of-two batch, and bfloat16 products. Each must answer like the plain float32 model
(XLA within 1e-5, bfloat16 within 1e-2 of the probabilities) after a save and a load from disk, and the
jit_compile attribute must survive the save (TF Serving and the loader compile the function from it).

A tiny random BERT made here (2 layers, hidden 32), so the module runs in a few seconds.
"""
from __future__ import annotations

import os
from typing import Dict

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import transformers
from tensorflow.core.protobuf import saved_model_pb2

from modules.adapters import AdapterConfig
from modules.backbone import build_backbone
from modules.model import INPUT_NAMES, AdapterBertClassifier, dense_layers
from modules.serving import ServingModel, model_inputs, padded_inputs, xla_length_bounds

MAX_SEQ_LENGTH = 32
LENGTH_BOUNDS = (16, 32)
VARIANTS = {"plain": {}, "xla": {"xla_length_bounds": LENGTH_BOUNDS}, "bf16": {"bfloat16": True},
            "bf16_xla": {"xla_length_bounds": LENGTH_BOUNDS, "bfloat16": True}}
# The largest |probability difference| from the eager float32 model ("plain": the same graph, other op order).
TOLERANCE = {"plain": 1e-6, "xla": 1e-5, "bf16": 1e-2, "bf16_xla": 1e-2}


def features(lengths, seed: int = 0) -> Dict[str, tf.Tensor]:
    """Transform-like features: token ids padded to MAX_SEQ_LENGTH, a second segment, and each row's length."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), MAX_SEQ_LENGTH), np.int64)
    types = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(5, 100, n)
        types[row, n // 2:n] = 1
    return {"input_ids": tf.constant(ids), "attention_mask": tf.constant((ids > 0).astype(np.int64)),
            "token_type_ids": tf.constant(types), "length": tf.constant(lengths, tf.int64)}


@pytest.fixture(scope="module")
def model() -> AdapterBertClassifier:
    """Adapters and head far from their near-identity initialisation, so both show in the outputs."""
    keras.utils.set_random_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64, initializer_range=0.2)
    model = AdapterBertClassifier(build_backbone(config), 3, AdapterConfig(bottleneck_size=8, init_std=0.1))
    kernel = model.classifier.kernel
    kernel.assign(tf.random.stateless_normal(kernel.shape, seed=[1, 2], stddev=0.5))
    return model


@pytest.fixture(scope="module")
def loaded(model, tmp_path_factory) -> Dict[str, tf.types.experimental.ConcreteFunction]:
    """Each variant saved as a SavedModel signature over Transform features and loaded back from disk."""
    spec = {name: tf.TensorSpec([None, MAX_SEQ_LENGTH], tf.int64, name=name) for name in INPUT_NAMES}
    spec["length"] = tf.TensorSpec([None], tf.int64, name="length")
    signatures, directories = {}, {}
    for name, options in VARIANTS.items():
        serving_model = ServingModel(model, **options)
        module = tf.Module()
        module.variables_to_save = serving_model.variables
        module.serve = probabilities_function(serving_model, spec)
        directories[name] = str(tmp_path_factory.mktemp(name))
        tf.saved_model.save(module, directories[name], signatures={"serving_default": module.serve.get_concrete_function()})
        signatures[name] = tf.saved_model.load(directories[name]).signatures["serving_default"]
    return {"signatures": signatures, "directories": directories}


def probabilities_function(serving_model: ServingModel, spec) -> tf.types.experimental.GenericFunction:
    return tf.function(lambda inputs: {"probabilities": tf.nn.softmax(serving_model(inputs))},
                       input_signature=[spec], autograph=False)


def expected(model, inputs: Dict[str, tf.Tensor]) -> np.ndarray:
    return tf.nn.softmax(model(model_inputs(inputs), training=False)).numpy()


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("lengths", [(7,), (3, 30, 9, 17, 12)], ids=["batch1", "batch5"])
def test_loaded_variant_answers_like_the_float32_model(model, loaded, variant, lengths) -> None:
    inputs = features(lengths)
    probabilities = loaded["signatures"][variant](**inputs)["probabilities"].numpy()
    reference = expected(model, inputs)
    assert probabilities.shape == reference.shape
    assert np.abs(probabilities - reference).max() <= TOLERANCE[variant]
    assert len(lengths) == 1 or np.abs(reference - reference[0]).max() > 0.05  # rows differ: a mix-up would show


def must_compile(saved_model_dir: str) -> bool:
    """Whether a function of the SavedModel carries the jit_compile attribute."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    return any(function.attr["_XlaMustCompile"].b for meta_graph in proto.meta_graphs
               for function in meta_graph.graph_def.library.function)


def test_jit_compile_survives_the_save(loaded) -> None:
    assert {name: must_compile(loaded["directories"][name]) for name in VARIANTS} == {
        "plain": False, "xla": True, "bf16": False, "bf16_xla": True}


def test_bfloat16_copy_stores_the_linear_kernels_in_bfloat16_and_the_rest_in_float32(model) -> None:
    copy = ServingModel(model, bfloat16=True).model
    kernels = {id(layer.kernel) for layer in dense_layers(copy)}
    dtypes = {"linear kernel" if id(v) in kernels else "rest": v.dtype for v in copy.variables}
    assert dtypes == {"linear kernel": tf.bfloat16, "rest": tf.float32}
    assert len(kernels) == len(dense_layers(model)) > 0
    assert len(copy.variables) == len(model.variables)  # the float32 kernels are replaced, not kept beside


def test_xla_export_bounds_are_every_16_tokens_up_to_the_maximum() -> None:
    assert xla_length_bounds(128) == (16, 32, 48, 64, 80, 96, 112, 128)
    assert xla_length_bounds(100) == (16, 32, 48, 64, 80, 96, 100)
    assert xla_length_bounds(16) == (16,)


@pytest.mark.parametrize("lengths,shape", [((7,), (1, 16)), ((5, 11, 20), (4, 32)), ((16, 16), (2, 16)),
                                            ((17,) * 9, (16, 32))])
def test_padded_inputs_take_the_smallest_bounds(lengths, shape) -> None:
    inputs = padded_inputs(features(lengths), LENGTH_BOUNDS)
    assert {name: tuple(value.shape) for name, value in inputs.items()} == {name: shape for name in INPUT_NAMES}
    assert int(tf.reduce_sum(inputs["attention_mask"][len(lengths):])) == 0  # the added rows are masked out


def test_the_trainers_export_follows_serving_export(tmp_path) -> None:
    """--serving_export reaches modules.trainer.run_fn's SavedModel: bfloat16_xla stores bfloat16 weights in an
    XLA-compiled model part, and its predict_text answers like the float32 export of the same weights (how close
    the options answer on a model whose answers differ more by input: the tests above)."""
    from test_bundle import SENTENCES_A, train_task
    from tiny_bert import write_tiny_bert

    model_dir = write_tiny_bert(tmp_path / "tiny_bert")
    exports = {name: os.path.join(train_task(str(tmp_path / name), model_dir, "sst2", seed=1, serving_export=name),
                                  "Format-Serving") for name in ("float32", "bfloat16_xla")}
    loaded = {name: tf.saved_model.load(directory) for name, directory in exports.items()}
    assert {name: sorted({v.dtype.name for v in model.model_variables}) for name, model in loaded.items()} == {
        "float32": ["float32"], "bfloat16_xla": ["bfloat16", "float32"]}
    assert {name: must_compile(directory) for name, directory in exports.items()} == {
        "float32": False, "bfloat16_xla": True}
    sentences = tf.constant(SENTENCES_A)
    probabilities = {name: model.signatures["predict_text"](sentence1=sentences)["probabilities"].numpy()
                     for name, model in loaded.items()}
    assert probabilities["float32"].shape == (len(SENTENCES_A), 2)
    assert np.abs(probabilities["float32"] - probabilities["bfloat16_xla"]).max() <= TOLERANCE["bf16_xla"]


def test_an_unknown_serving_export_is_refused_naming_the_flag() -> None:
    from modules.config import TrainingConfig

    with pytest.raises(ValueError, match="--serving_export must be one of float32, xla, bfloat16, bfloat16_xla"):
        TrainingConfig(serving_export="float16")
