"""Backbone loading: the offline MiniLM default, local directories in every supported weight format, the
errors for everything else, tokenizer settings and the weights fingerprint."""
import json
import logging
import os
import sys
import time
from typing import Dict, Tuple

import numpy as np
import pytest
import tf_keras as keras
import transformers
from safetensors.numpy import load_file, save_file

from modules.backbone import build_backbone, load_backbone, resolve_model_dir, tokenizer_settings, weights_fingerprint
from modules.model import variable_key


@pytest.fixture(scope="module")
def minilm() -> transformers.TFBertModel:
    return load_backbone("minilm")


def tiny_config() -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
    )


def by_key(model: transformers.TFBertModel) -> Dict[str, np.ndarray]:
    return {variable_key(v): v.numpy() for v in model.variables}


def write_tf_model_dir(directory: str) -> transformers.TFBertModel:
    """A tiny random BERT saved the way TF checkpoints come: config.json + tf_model.h5, and a vocabulary."""
    keras.utils.set_random_seed(0)
    model = build_backbone(tiny_config())
    model.save_pretrained(directory)
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]) + "\n")
    return model


def pytorch_name(key: str) -> Tuple[str, bool]:
    """The PyTorch BertModel state-dict name of a TF variable ("bert/encoder/layer_._0/.../kernel"), and whether
    PyTorch stores it transposed (nn.Linear keeps [out, in], a Keras Dense kernel is [in, out])."""
    *path, leaf = key.removeprefix("bert/").replace("layer_._", "layer.").split("/")
    pytorch_leaf = {"kernel": "weight", "gamma": "weight", "beta": "bias", "embeddings": "weight"}.get(leaf, leaf)
    return ".".join(path + [pytorch_leaf]), leaf == "kernel"


# --- the offline default -----------------------------------------------------------------------------------


def test_minilm_loads_every_pretrained_weight(minilm: transformers.TFBertModel) -> None:
    assert (minilm.config.hidden_size, minilm.config.num_hidden_layers) == (384, 6)
    state_dict = load_file(os.path.join(resolve_model_dir("minilm"), "model.safetensors"))
    used = set()
    for key, value in by_key(minilm).items():
        name, transposed = pytorch_name(key)
        assert np.array_equal(value, state_dict[name].T if transposed else state_dict[name]), key
        used.add(name)
    assert set(state_dict) - used == {"embeddings.position_ids"}


def test_minilm_embeddings_tell_paraphrases_from_unrelated_sentences(minilm: transformers.TFBertModel) -> None:
    tokenizer = transformers.BertTokenizerFast.from_pretrained(resolve_model_dir("minilm"))
    sentences = ["A man is playing a guitar.", "A person plays the guitar.", "The stock market fell sharply today."]
    batch = tokenizer(sentences, padding=True, return_tensors="np")
    hidden = minilm(dict(batch), training=False).last_hidden_state.numpy()
    mask = batch["attention_mask"][:, :, None]
    embeddings = (hidden * mask).sum(1) / mask.sum(1)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    paraphrase, unrelated = embeddings[0] @ embeddings[1], embeddings[0] @ embeddings[2]
    # Measured 0.85 and -0.05; a random-weight BERT scores every pair alike (all near 1).
    assert paraphrase > 0.75 and unrelated < 0.2, (paraphrase, unrelated)


def test_minilm_tokenizer_settings() -> None:
    model_dir = resolve_model_dir("minilm")
    settings = tokenizer_settings(model_dir)
    assert settings.do_lower_case is True
    assert settings.vocab_file == os.path.join(model_dir, "vocab.txt")
    with open(settings.vocab_file) as f:
        assert sum(1 for _ in f) == 30522


def test_tokenizer_settings_follow_the_model_directory(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="vocab.txt is missing"):
        tokenizer_settings(str(tmp_path))
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    assert tokenizer_settings(str(tmp_path)).do_lower_case is True  # BertTokenizer's default
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    assert tokenizer_settings(str(tmp_path)).do_lower_case is False


# --- names that do not resolve -----------------------------------------------------------------------------


def test_unreachable_hub_name_fails_fast_saying_how_to_use_a_local_directory() -> None:
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="pass its directory, or use the offline default 'minilm'"):
        resolve_model_dir("adapter-bert-tfx-tests/no-such-model")
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("path", ["/nonexistent/bert-base-uncased", "./no-such-model-dir", "~/no-such-model-dir"])
def test_missing_local_path_is_an_error(path: str) -> None:
    with pytest.raises(FileNotFoundError, match="no such directory"):
        resolve_model_dir(path)


def test_home_relative_path_resolves(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text("{}")
    assert resolve_model_dir("~/bert") == str(tmp_path / "bert")


def test_directory_without_config_is_refused(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="without config.json"):
        resolve_model_dir(str(tmp_path))


# --- local directories -------------------------------------------------------------------------------------


def test_local_tf_weights_load_unchanged(tmp_path) -> None:
    saved = write_tf_model_dir(str(tmp_path))
    assert {"config.json", "tf_model.h5"} <= set(os.listdir(tmp_path))
    loaded, expected = by_key(load_backbone(str(tmp_path))), by_key(saved)
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert np.array_equal(loaded[key], value), key


@pytest.mark.parametrize("checkpoint", ["BertModel", "BertForPreTraining"])
def test_local_pytorch_safetensors_load_with_pytorch_names(tmp_path, checkpoint: str) -> None:
    """BertModel checkpoints name weights "encoder.layer.0..."; BertForPreTraining ones (like the original
    bert-base-uncased) prefix "bert.", use LayerNorm.gamma/beta and carry pretraining heads that are not loaded."""
    keras.utils.set_random_seed(0)
    config = tiny_config()
    reference = build_backbone(config)
    state_dict = {}
    for key, value in by_key(reference).items():
        name, transposed = pytorch_name(key)
        if checkpoint == "BertForPreTraining":
            name = "bert." + name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state_dict[name] = np.ascontiguousarray(value.T if transposed else value)
    if checkpoint == "BertForPreTraining":
        state_dict["cls.predictions.bias"] = np.zeros(config.vocab_size, np.float32)
    config.save_pretrained(str(tmp_path))
    save_file(state_dict, str(tmp_path / "model.safetensors"))

    loaded = load_backbone(str(tmp_path))
    expected, actual = by_key(reference), by_key(loaded)
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert np.array_equal(actual[key], value), key
    assert weights_fingerprint(loaded.variables) == weights_fingerprint(reference.variables)


@pytest.mark.parametrize("extra, reported", [("embeddings.position_ids", False), ("encoder.extra.weight", True)])
def test_only_real_unused_weights_are_reported(tmp_path, caplog: pytest.LogCaptureFixture, extra: str,
                                              reported: bool) -> None:
    """PyTorch checkpoints (MiniLM's too) carry the position_ids buffer, which TF BERT does not need: no warning
    for it; any other unused weight keeps transformers' warning."""
    config = tiny_config()
    state_dict = {}
    for key, value in by_key(build_backbone(config)).items():
        name, transposed = pytorch_name(key)
        state_dict[name] = np.ascontiguousarray(value.T if transposed else value)
    state_dict[extra] = np.arange(config.max_position_embeddings, dtype=np.int64)[None]
    config.save_pretrained(str(tmp_path))
    save_file(state_dict, str(tmp_path / "model.safetensors"))
    transformers_logger = logging.getLogger("transformers.modeling_tf_pytorch_utils")  # does not propagate
    transformers_logger.addHandler(caplog.handler)
    try:
        load_backbone(str(tmp_path))
    finally:
        transformers_logger.removeHandler(caplog.handler)
    unused = [r.getMessage() for r in caplog.records
              if r.getMessage().startswith("Some weights of the PyTorch model were not used")]
    assert bool(unused) == reported and all(extra in message for message in unused)


@pytest.mark.parametrize("config", [transformers.RobertaConfig(), transformers.GPT2Config()], ids=["roberta", "gpt2"])
def test_non_bert_backbone_is_refused(tmp_path, config: transformers.PretrainedConfig) -> None:
    config.save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match=f"model_type '{config.model_type}' is not supported: .*Use a BERT checkpoint"):
        load_backbone(str(tmp_path))


def test_pytorch_bin_without_torch_says_what_to_install(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError even where torch exists
    tiny_config().save_pretrained(str(tmp_path))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    message = r"pytorch_model.bin can only be read with PyTorch installed \(`pip install torch`\)"
    with pytest.raises(FileNotFoundError, match=message):
        load_backbone(str(tmp_path))


def test_directory_without_weights_is_refused(tmp_path) -> None:
    tiny_config().save_pretrained(str(tmp_path))
    message = "holds no weights: expected tf_model.h5, model.safetensors or pytorch_model.bin"
    with pytest.raises(FileNotFoundError, match=message):
        load_backbone(str(tmp_path))


# --- fingerprint -------------------------------------------------------------------------------------------


def test_weights_fingerprint_is_stable_across_loads_and_sees_one_changed_weight(tmp_path) -> None:
    write_tf_model_dir(str(tmp_path))
    first, second = load_backbone(str(tmp_path)), load_backbone(str(tmp_path))
    assert first.variables[0].name != second.variables[0].name  # "tf_bert_model_1/..." vs "tf_bert_model_2/..."
    fingerprint = weights_fingerprint(first.variables)
    assert weights_fingerprint(second.variables) == fingerprint
    variable = second.variables[5]
    original = variable.numpy()
    changed = original.copy()
    changed.flat[0] += 1e-3
    variable.assign(changed)
    assert weights_fingerprint(second.variables) != fingerprint
    variable.assign(original)
    assert weights_fingerprint(second.variables) == fingerprint
