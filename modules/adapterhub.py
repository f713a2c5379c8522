"""AdapterHub interoperability: this project's adapter-only weights <-> AdapterHub (`adapters`, PyTorch) directories.

Both implement Houlsby et al. 2019, so the conversion is exact; this module checks that it is. AdapterHub's
bottleneck adapter on BERT (adapters 1.3: methods/modeling.py `Adapter`, methods/bottleneck.py
`BottleneckLayer.bottleneck_layer_forward`, called by BertSelfOutput/BertOutput after dense and dropout, with
h the sublayer output, x the sublayer's residual input and LN the sublayer's LayerNorm) computes

    original_ln_before=False:  LN(h + s * W_up f(W_down h + b_down) + b_up ... + x)        (double_seq_bn, Houlsby)
    original_ln_before=True:   LN(h + s * W_up f(W_down LN(h + x) + b_down) + b_up + x)    (seq_bn, Pfeiffer)

when original_ln_after=True, residual_before_ln=True, ln_before=ln_after=False, is_parallel=False,
use_gating=False and scaling s=1.0 (the defaults of both configs). This project's `AdaptedSublayerOutput`
computes the first (and, with AdapterConfig.original_ln_before, the second); mh_adapter/output_adapter are
--placement houlsby (both) or pfeiffer (output only); the bottleneck is int(hidden // reduction_factor),
AdapterHub's formula. Dropout and stochastic depth act in training only; init options do not matter to
trained weights. Every other value of a field listed in `_REQUIRED` is refused, naming the field.

The task head: AdapterHub's classification head (layers=2, use_pooler=False, tanh) is Dropout, Linear(d, d),
tanh, Dropout, Linear(d, n) on the [CLS] state: at inference exactly BERT's pooler (dense + tanh on [CLS])
followed by this project's classifier, so head.1 <-> bert/pooler/dense and head.4 <-> classifier. A head
with use_pooler=True and layers=1 (a Linear on the backbone's pooler output) imports with the backbone's
pooler. num_labels=1 is AdapterHub's regression head (STS-B).

The encoder LayerNorms: this project trains them with the adapters (AdapterConfig.train_layer_norms, the
paper's setting); AdapterHub's adapter and head files have no place for them (`load_adapter` loads only
`adapters.<name>.*` and `heads.<name>.*`, and no BnConfig option reproduces a retrained original LayerNorm).
Export therefore writes them to a third file, encoder_layer_norms.safetensors, under the names of
AdapterHub's BERT model, to be loaded with one extra call (see `LOAD_LAYER_NORMS`). Without that call
AdapterHub computes with the pretrained LayerNorms: another model. Adapters trained with --freeze_layer_norms
need no extra file. Imported AdapterHub adapters never retrained LayerNorms (train_adapter freezes them), so
they import with train_layer_norms=False.

Files: AdapterHub reads adapter weights from pytorch_adapter.bin (default) or adapter.safetensors
(`load_adapter(dir, use_safetensors=True)`); head weights from pytorch_model_head.bin / model_head.safetensors.
Export writes the safetensors files (no PyTorch needed here); import reads either, the .bin files with a
small reader of PyTorch's zip format (no PyTorch needed either).
"""
from __future__ import annotations

import collections
import json
import os
import pickle
import re
import shutil
import uuid
import zipfile
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from modules.adapters import AdapterConfig

CONFIG_FILE = "adapter_config.json"
HEAD_CONFIG_FILE = "head_config.json"
WEIGHTS_FILES = ("adapter.safetensors", "pytorch_adapter.bin")
HEAD_WEIGHTS_FILES = ("model_head.safetensors", "pytorch_model_head.bin")
LAYER_NORMS_FILE = "encoder_layer_norms.safetensors"
LOAD_LAYER_NORMS = ("model.load_state_dict(safetensors.torch.load_file('{path}'), strict=False)  "
                    "# after model.load_adapter(...): this adapter was trained with the encoder LayerNorms")
ADAPTERHUB_VERSION = "adapters.1.3.0"  # the `adapters` release whose computation this module was checked against

# AdapterHub non_linearity (lower-cased, as AdapterHub does) -> this project's, where the functions are the same.
NON_LINEARITY_FROM_HUB = {
    "gelu": "gelu", "gelu_python": "gelu",  # exact erf GELU
    "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu_python_tanh": "gelu_new",
    "gelu_fast": "gelu_new",  # tanh approximation (gelu_fast writes sqrt(2/pi) as 0.7978845608)
    "relu": "relu", "swish": "swish", "silu": "swish", "tanh": "tanh",
}
NON_LINEARITY_TO_HUB = {"gelu": "gelu", "gelu_new": "gelu_new", "relu": "relu", "swish": "swish", "tanh": "tanh"}
# AdapterHub releases before "version" was written (adapter-transformers) named the tanh approximation "gelu".
_LEGACY_NON_LINEARITY = {"gelu": "gelu_new", "gelu_orig": "gelu"}
_LEGACY_WEIGHT_NAMES = {"attention_text_task_adapters": "adapters", "attention_text_lang_adapters": "adapters",
                        "layer_text_task_adapters": "adapters", "layer_text_lang_adapters": "adapters"}

# Fields whose value decides the computation, with the only value this project reproduces.
_REQUIRED = {
    "original_ln_after": True, "ln_before": False, "ln_after": False, "is_parallel": False, "use_gating": False,
    "scaling": 1.0, "phm_layer": False,
}
# The full BnConfig AdapterHub writes, with its defaults (adapters 1.3.0), completed by `hub_adapter_config`.
_BN_CONFIG_DEFAULTS = {
    "adapter_residual_before_ln": False, "cross_adapter": False, "dropout": 0.0, "factorized_phm_W": True,
    "factorized_phm_rule": False, "hypercomplex_nonlinearity": "glorot-uniform", "init_weights": "bert",
    "init_weights_seed": None, "inv_adapter": None, "inv_adapter_reduction_factor": None, "is_parallel": False,
    "learn_phm": True, "leave_out": [], "ln_after": False, "ln_before": False, "original_ln_after": True,
    "phm_bias": True, "phm_c_init": "normal", "phm_dim": 4, "phm_init_range": 0.0001, "phm_layer": False,
    "phm_rank": 1, "residual_before_ln": True, "scaling": 1.0, "shared_W_phm": False, "shared_phm_rule": True,
    "stochastic_depth": 0.0, "use_gating": False,
}


class AdapterHubError(ValueError):
    """An adapter that cannot be converted exactly; raised before anything is written."""


# ---------------------------------------------------------------------------------------------------------------
# Configurations


def bottleneck_size(hidden_size: int, reduction_factor: float) -> int:
    """AdapterHub's bottleneck width: int(hidden_size // reduction_factor), at least 1."""
    return max(1, int(hidden_size // reduction_factor))


def reduction_factor(hidden_size: int, size: int) -> float:
    """A reduction_factor for which AdapterHub's int(hidden_size // factor) is `size`.

    hidden_size / size itself can floor to size - 1 (16 // (16 / 5) == 4.0): then the next smaller floats are tried.
    """
    factor = hidden_size / size
    for _ in range(8):
        if bottleneck_size(hidden_size, factor) == size:
            return int(factor) if factor.is_integer() else factor
        factor = float(np.nextafter(factor, 0.0))
    raise AdapterHubError(f"bottleneck_size {size} cannot be written as AdapterHub's reduction_factor for hidden size "
                          f"{hidden_size}.")


def adapter_config_from_hub(wrapper: Dict, source: str) -> Tuple[AdapterConfig, int]:
    """This project's AdapterConfig for an AdapterHub adapter_config.json, and the hidden size it names.

    Raises AdapterHubError naming the first field this project cannot reproduce.
    """
    def refuse(field: str, value, expected: str) -> AdapterHubError:
        return AdapterHubError(f"{source}: {field}={value!r} has no exact counterpart here (expected {expected}); "
                               "nothing was written.")

    if wrapper.get("model_type") != "bert":
        raise refuse("model_type", wrapper.get("model_type"), "'bert': adapters are placed by BERT's layer layout")
    config = wrapper.get("config")
    if not isinstance(config, dict):
        raise refuse("config", config, "a bottleneck adapter configuration")
    if config.get("architecture") is not None:
        raise refuse("config.architecture", config["architecture"], "a bottleneck adapter (double_seq_bn or seq_bn)")
    for field, expected in _REQUIRED.items():
        if field in config and config[field] != expected:
            raise refuse(f"config.{field}", config[field], repr(expected))
    placements = {(True, True): "houlsby", (False, True): "pfeiffer"}
    where = (config.get("mh_adapter"), config.get("output_adapter"))
    if where not in placements:
        raise refuse("config.mh_adapter/output_adapter", list(where), "[true, true] (Houlsby) or [false, true] (Pfeiffer)")
    leave_out = config.get("leave_out", [])
    if not isinstance(leave_out, list) or not all(isinstance(i, int) for i in leave_out) \
            or sorted(leave_out) != list(range(len(leave_out))):
        raise refuse("config.leave_out", leave_out, "the lowest K layers, [0, ..., K-1]: AdapterDrop")
    original_ln_before = bool(config.get("original_ln_before", False))
    if original_ln_before and config.get("residual_before_ln", True) is not True:
        raise refuse("config.residual_before_ln", config["residual_before_ln"], "true with original_ln_before")
    name = str(config.get("non_linearity")).lower()
    if "version" not in wrapper:
        name = _LEGACY_NON_LINEARITY.get(name, name)
    if name not in NON_LINEARITY_FROM_HUB:
        raise refuse("config.non_linearity", config.get("non_linearity"), f"one of {sorted(NON_LINEARITY_FROM_HUB)}")
    hidden_size = wrapper.get("hidden_size")
    if not isinstance(hidden_size, int):
        raise refuse("hidden_size", hidden_size, "the backbone's hidden size")
    factor = config.get("reduction_factor")
    if isinstance(factor, Mapping):
        values = set(factor.values())
        if len(values) != 1:
            raise refuse("config.reduction_factor", factor, "one bottleneck size for every layer")
        factor = values.pop()
    if not isinstance(factor, (int, float)) or factor <= 0:
        raise refuse("config.reduction_factor", factor, "a positive number")
    adapter = AdapterConfig(bottleneck_size=bottleneck_size(hidden_size, factor),
                            non_linearity=NON_LINEARITY_FROM_HUB[name], placement=placements[where],
                            train_layer_norms=False, original_ln_before=original_ln_before,
                            adapter_drop=len(leave_out))
    return adapter, hidden_size


def hub_adapter_config(adapter: AdapterConfig, hidden_size: int, name: str, model_name: str) -> Dict:
    """The adapter_config.json AdapterHub reads back as exactly `adapter` (refuses what it cannot express)."""
    if adapter.non_linearity not in NON_LINEARITY_TO_HUB:
        raise AdapterHubError(f"non_linearity {adapter.non_linearity!r} has no AdapterHub name.")
    factor = reduction_factor(hidden_size, adapter.bottleneck_size)
    config = dict(_BN_CONFIG_DEFAULTS)
    config.update(mh_adapter=adapter.placement == "houlsby", output_adapter=True,
                  original_ln_before=adapter.original_ln_before, non_linearity=NON_LINEARITY_TO_HUB[adapter.non_linearity],
                  reduction_factor=factor, leave_out=list(range(adapter.adapter_drop)))
    return {"config": dict(sorted(config.items())), "hidden_size": hidden_size, "model_class": "BertAdapterModel",
            "model_name": model_name, "model_type": "bert", "name": name, "version": ADAPTERHUB_VERSION}


def hub_head_config(num_labels: int, label_names: List[str], hidden_size: int, name: str, model_name: str) -> Dict:
    labels = label_names or [f"LABEL_{i}" for i in range(num_labels)]
    config = {"activation_function": "tanh", "bias": True, "dropout_prob": None, "head_type": "classification",
              "label2id": {label: i for i, label in enumerate(labels)}, "layers": 2, "num_labels": num_labels,
              "use_pooler": False}
    return {"config": config, "hidden_size": hidden_size, "model_class": "BertAdapterModel", "model_name": model_name,
            "model_type": "bert", "name": name, "version": ADAPTERHUB_VERSION}


def check_head_config(wrapper: Dict, num_labels: int, source: str) -> bool:
    """Whether the head uses the backbone's pooler (layers=1, use_pooler=True) rather than its own (layers=2)."""
    config = wrapper.get("config") or {}

    def refuse(field: str, expected: str) -> AdapterHubError:
        return AdapterHubError(f"{source}: head {field}={config.get(field)!r}, expected {expected}; nothing was written.")

    if config.get("head_type") != "classification":
        raise refuse("head_type", "'classification' (GLUE classification, or regression with num_labels=1)")
    if config.get("num_labels") != num_labels:
        raise refuse("num_labels", f"{num_labels}, the task's number of outputs")
    if config.get("bias", True) is not True:
        raise refuse("bias", "true")
    shape = (config.get("layers"), bool(config.get("use_pooler")))
    if shape not in ((2, False), (1, True)):
        raise refuse("layers/use_pooler", "2 layers on the [CLS] state or 1 layer on the pooler output")
    if shape == (2, False) and config.get("activation_function") != "tanh":
        raise refuse("activation_function", "'tanh' (the pooler's)")
    return shape == (1, True)


# ---------------------------------------------------------------------------------------------------------------
# Weight files


class _Storage:
    """A PyTorch storage type in a pickle: the numpy dtype of its raw bytes."""

    DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
              "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
              "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}

    def __init__(self, name: str):
        self.dtype = np.dtype(self.DTYPES[name])


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *_ignored) -> np.ndarray:
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size), strides=[s * item for s in stride])
    return np.array(view)


def read_torch_state_dict(path: str) -> Dict[str, np.ndarray]:
    """The tensors of a PyTorch state-dict file (torch.save's zip format) as numpy arrays, without PyTorch.

    Only plain tensors of the numeric types above are accepted: any other object in the pickle is refused,
    so the file cannot run code.
    """
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise AdapterHubError(f"{path} is not in PyTorch's zip format (saved before PyTorch 1.6?): load and save it "
                              "again with AdapterHub, or with use_safetensors=True.") from e
    with archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise AdapterHubError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}.")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).decode().strip() != "little":
            raise AdapterHubError(f"{path}: big-endian tensors are not supported.")

        class Unpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str):
                if (module, name) == ("collections", "OrderedDict"):
                    return collections.OrderedDict
                if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                    return _rebuild_tensor
                if module == "torch" and name in _Storage.DTYPES:
                    return _Storage(name)
                raise AdapterHubError(f"{path}: unsupported object {module}.{name} in the state dict.")

            def persistent_load(self, pid):
                kind, storage, key = pid[0], pid[1], pid[2]
                if kind != "storage" or not isinstance(storage, _Storage):
                    raise AdapterHubError(f"{path}: unsupported storage {pid!r}.")
                return np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype=storage.dtype)

        with archive.open(pickles[0]) as f:
            state = Unpickler(f).load()
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise AdapterHubError(f"{path}: not a state dict of tensors.")
    return dict(state)


def read_tensors(directory: str, names: Tuple[str, str]) -> Tuple[Dict[str, np.ndarray], str]:
    """The tensors of the first of `names` (safetensors, then PyTorch .bin) present in directory."""
    from safetensors.numpy import load_file

    for name in names:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return (load_file(path) if name.endswith(".safetensors") else read_torch_state_dict(path)), path
    raise AdapterHubError(f"{directory} holds neither {' nor '.join(names)}.")


# ---------------------------------------------------------------------------------------------------------------
# Weight names

_POSITIONS = {"attention": "attention.output", "output": "output"}  # our adapter suffix -> AdapterHub module path


def _positions(adapter: AdapterConfig) -> List[str]:
    return ["attention", "output"] if adapter.placement == "houlsby" else ["output"]


def adapter_name_map(adapter: AdapterConfig, num_layers: int, name: str) -> Dict[str, Tuple[str, bool]]:
    """AdapterHub adapter weight name -> (this project's variable key, whether the matrix is transposed); the
    lowest adapter.adapter_drop layers have none (AdapterHub's leave_out)."""
    names = {}
    for layer in range(adapter.adapter_drop, num_layers):
        for position in _positions(adapter):
            hub = f"bert.encoder.layer.{layer}.{_POSITIONS[position]}.adapters.{name}"
            ours = f"adapter_{layer}_{position}"
            for part, module in (("down", "adapter_down.0"), ("up", "adapter_up")):
                names[f"{hub}.{module}.weight"] = (f"{ours}/{part}/kernel", True)
                names[f"{hub}.{module}.bias"] = (f"{ours}/{part}/bias", False)
    return names


def head_name_map(name: str, uses_backbone_pooler: bool = False) -> Dict[str, Tuple[str, bool]]:
    classifier = 1 if uses_backbone_pooler else 4
    names = {f"heads.{name}.{classifier}.weight": ("classifier/kernel", True),
             f"heads.{name}.{classifier}.bias": ("classifier/bias", False)}
    if not uses_backbone_pooler:
        names.update({f"heads.{name}.1.weight": ("bert/pooler/dense/kernel", True),
                      f"heads.{name}.1.bias": ("bert/pooler/dense/bias", False)})
    return names


def layer_norm_name_map(num_layers: int, first_layer: int = 0) -> Dict[str, Tuple[str, bool]]:
    """AdapterHub BertAdapterModel LayerNorm parameter name -> this project's variable key, from `first_layer` up
    (below AdapterDrop's K the layer norms do not train)."""
    names = {}
    for layer in range(first_layer, num_layers):
        for position in ("attention/output", "output"):
            hub = f"bert.encoder.layer.{layer}.{position.replace('/', '.')}.LayerNorm"
            ours = f"bert/encoder/layer_._{layer}/{position}/LayerNorm"
            names[f"{hub}.weight"] = (f"{ours}/gamma", False)
            names[f"{hub}.bias"] = (f"{ours}/beta", False)
    return names


def _convert(tensors: Dict[str, np.ndarray], names: Dict[str, Tuple[str, bool]], source: str) -> Dict[str, np.ndarray]:
    """Renames (and transposes) hub tensors to this project's keys; refuses missing or unexpected tensors."""
    if set(tensors) != set(names):
        raise AdapterHubError(f"{source}: weights do not match the configuration: missing "
                              f"{sorted(set(names) - set(tensors))[:4]}, unexpected {sorted(set(tensors) - set(names))[:4]}.")
    return {key: (tensors[hub].T if transposed else tensors[hub]).astype(np.float32)
            for hub, (key, transposed) in names.items()}


def _to_hub(weights: Dict[str, np.ndarray], names: Dict[str, Tuple[str, bool]]) -> Dict[str, np.ndarray]:
    return {hub: np.ascontiguousarray(weights[key].T if transposed else weights[key]) for hub, (key, transposed) in names.items()}


# ---------------------------------------------------------------------------------------------------------------
# Import and export


def _read_json(path: str) -> Dict:
    if not os.path.isfile(path):
        raise AdapterHubError(f"{path} not found: not an AdapterHub adapter directory (saved by model.save_adapter) "
                              "with its prediction head.")
    with open(path) as f:
        return json.load(f)


def class_order(label2id: Optional[Dict[str, int]], task, head_labels: Optional[List[str]], source: str) -> List[int]:
    """For each of the task's classes (this project's label ids), the AdapterHub head's output index.

    The head's label2id names decide when they are the task's label names (AdapterHub adapters trained on
    Hugging Face's GLUE datasets order MNLI as entailment, neutral, contradiction; this project as the GLUE files
    sort them); otherwise `head_labels` (the task's label names in the head's order) must say it.
    """
    if task.is_regression:
        return [0]
    names = list(task.label_names)
    if head_labels is None and label2id and {k.lower() for k in label2id} == set(names):
        by_name = {k.lower(): v for k, v in label2id.items()}
        return [by_name[name] for name in names]
    if head_labels is None:
        raise AdapterHubError(f"{source}: head label2id={label2id!r} does not name task {task.name}'s labels "
                              f"{names}: say which label each head output is with --head_labels (e.g. "
                              f"--head_labels {','.join(names)}); nothing was written.")
    if sorted(head_labels) != sorted(names):
        raise AdapterHubError(f"--head_labels {','.join(head_labels)}: expected an order of {names}.")
    return [head_labels.index(name) for name in names]


def read_hub_adapter(directory: str, task, head_labels: Optional[List[str]] = None
                     ) -> Tuple[AdapterConfig, int, Dict[str, np.ndarray], bool, Dict]:
    """Reads and checks an AdapterHub adapter directory: (config, hidden size, weights by our keys with the classes
    in the task's order, whether the head uses the backbone's pooler, the hub config). The backbone's pooler, if
    the head uses it, is not among the weights."""
    wrapper = _read_json(os.path.join(directory, CONFIG_FILE))
    adapter, hidden_size = adapter_config_from_hub(wrapper, os.path.join(directory, CONFIG_FILE))
    head_wrapper = _read_json(os.path.join(directory, HEAD_CONFIG_FILE))
    head_source = os.path.join(directory, HEAD_CONFIG_FILE)
    uses_pooler = check_head_config(head_wrapper, task.num_labels, head_source)
    order = class_order((head_wrapper.get("config") or {}).get("label2id"), task, head_labels, head_source)
    name = wrapper.get("name")
    tensors, path = read_tensors(directory, WEIGHTS_FILES)
    legacy = re.compile("|".join(_LEGACY_WEIGHT_NAMES))
    tensors = {legacy.sub(lambda m: _LEGACY_WEIGHT_NAMES[m.group(0)], k): v for k, v in tensors.items()}
    if any("invertible_adapters" in k for k in tensors):  # without its weights AdapterHub drops it, as here
        raise AdapterHubError(f"{path}: invertible adapter weights (config.inv_adapter="
                              f"{wrapper['config'].get('inv_adapter')!r}) have no counterpart here; nothing was written.")
    layers = {int(m.group(1)) for k in tensors if (m := re.match(r"bert\.encoder\.layer\.(\d+)\.", k))}
    if not layers:
        raise AdapterHubError(f"{path}: no BERT encoder adapter weights (bert.encoder.layer.<i>.*.adapters.{name}.*).")
    weights = _convert(tensors, adapter_name_map(adapter, max(layers) + 1, name), path)
    head_tensors, head_path = read_tensors(directory, HEAD_WEIGHTS_FILES)
    head_name = head_wrapper.get("name", name)
    weights.update(_convert(head_tensors, head_name_map(head_name, uses_pooler), head_path))
    weights["classifier/kernel"] = weights["classifier/kernel"][:, order]
    weights["classifier/bias"] = weights["classifier/bias"][order]
    return adapter, hidden_size, weights, uses_pooler, wrapper


def import_adapter(directory: str, task, model: str, output_dir: str, max_seq_length: int,
                   head_labels: Optional[List[str]] = None) -> Dict:
    """Writes an AdapterHub adapter directory as this project's adapter-only weights (adapter_config.json and
    adapter_weights.npz, as the Trainer writes them) for `task` on the backbone `model`; returns the written config.

    Everything is checked (configuration, weight names and shapes, backbone shapes) before anything is written.
    """
    from modules import backbone as backbone_lib
    from modules.model import AdapterBertClassifier, read_adapter_config, save_adapter_weights, variable_key

    adapter, hidden_size, weights, uses_pooler, wrapper = read_hub_adapter(directory, task, head_labels)
    num_layers = 1 + max(int(k.split("_")[1]) for k in weights if k.startswith("adapter_"))
    bert_config = backbone_lib.load_config(backbone_lib.resolve_model_dir(model))
    for key, theirs in (("hidden_size", hidden_size), ("num_hidden_layers", num_layers)):
        if getattr(bert_config, key) != theirs:
            raise AdapterHubError(f"{directory}: the adapter was trained on a backbone with {key}={theirs}; "
                                  f"--model {model} has {key}={getattr(bert_config, key)}.")
    backbone_lib.check_max_seq_length(max_seq_length, bert_config)
    if os.path.exists(output_dir) and os.listdir(output_dir):
        raise AdapterHubError(f"{output_dir} exists and is not empty: give a new directory.")
    classifier = AdapterBertClassifier(backbone_lib.load_backbone(model), task.num_labels, adapter)
    variables = {variable_key(v): v for v in classifier.trainable_variables}
    if uses_pooler:  # the head reads the backbone's pretrained pooler, which is part of the trained set here
        weights.update({key: variables[key].numpy() for key in ("bert/pooler/dense/kernel", "bert/pooler/dense/bias")})
    if set(weights) != set(variables):
        raise AdapterHubError(f"{directory}: converted weights {sorted(set(weights) ^ set(variables))[:4]} do not "
                              "match the model built from its configuration.")
    for key, variable in variables.items():
        if tuple(variable.shape) != weights[key].shape:
            raise AdapterHubError(f"{directory}: {key} has shape {weights[key].shape}, the model {tuple(variable.shape)}.")
        variable.assign(weights[key])
    save_adapter_weights(classifier, output_dir, extra={
        "task": task.name, "model": model, "max_seq_length": max_seq_length,
        "adapterhub": {"source": os.path.abspath(directory), "name": wrapper.get("name"),
                       "model_name": wrapper.get("model_name"), "version": wrapper.get("version")},
    })
    return read_adapter_config(output_dir)


def export_adapter(adapters_dir: str, output_dir: str, name: Optional[str] = None, model_name: str = "") -> Dict:
    """Writes this project's adapter-only weights (a Trainer's adapters directory) as an AdapterHub adapter
    directory; returns {"name", "files", "layer_norms"} (layer_norms: the extra file, or None).

    Written to a temporary sibling and renamed, so `output_dir` appears complete or not at all.
    """
    from modules.bundle import read_task_adapters

    try:
        source = read_task_adapters(adapters_dir)
    except ValueError as e:
        raise AdapterHubError(str(e)) from e
    config = source.config
    adapter = AdapterConfig(**config["adapter"])
    hidden_size, num_layers = config["backbone"]["hidden_size"], config["backbone"]["num_hidden_layers"]
    name = name or source.task.name
    hub_config = hub_adapter_config(adapter, hidden_size, name, model_name)
    with open(os.path.join(source.directory, "adapter_weights.npz"), "rb") as f:
        weights = dict(np.load(f))
    files = {
        WEIGHTS_FILES[0]: _to_hub(weights, adapter_name_map(adapter, num_layers, name)),
        HEAD_WEIGHTS_FILES[0]: _to_hub(weights, head_name_map(name)),
    }
    if adapter.train_layer_norms:
        files[LAYER_NORMS_FILE] = _to_hub(weights, layer_norm_name_map(num_layers, adapter.adapter_drop))
    expected = set(weights)
    converted = {key for names in (adapter_name_map(adapter, num_layers, name), head_name_map(name),
                                   layer_norm_name_map(num_layers, adapter.adapter_drop) if adapter.train_layer_norms
                                   else {})
                 for key, _ in names.values()}
    if converted != expected:
        raise AdapterHubError(f"{source.directory}: trained variables {sorted(expected ^ converted)[:4]} have no "
                              "AdapterHub counterpart.")
    if os.path.exists(output_dir) and os.listdir(output_dir):
        raise AdapterHubError(f"{output_dir} exists and is not empty: give a new directory.")
    from safetensors.numpy import save_file

    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    scratch = os.path.join(parent, f".tmp-adapterhub-{uuid.uuid4().hex[:8]}")
    os.makedirs(scratch)  # not mkdtemp: the published directory gets the usual (umask) permissions
    try:
        for file_name, tensors in files.items():
            save_file(tensors, os.path.join(scratch, file_name), metadata={"format": "pt"})
        head = hub_head_config(source.task.num_labels, list(source.task.label_names), hidden_size, name, model_name)
        for file_name, contents in ((CONFIG_FILE, hub_config), (HEAD_CONFIG_FILE, head)):
            with open(os.path.join(scratch, file_name), "w") as f:
                json.dump(contents, f, indent=2)
        if os.path.isdir(output_dir):
            os.rmdir(output_dir)  # empty (checked above)
        os.rename(scratch, output_dir)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return {"name": name, "files": sorted(files) + [CONFIG_FILE, HEAD_CONFIG_FILE],
            "layer_norms": os.path.join(output_dir, LAYER_NORMS_FILE) if adapter.train_layer_norms else None}
