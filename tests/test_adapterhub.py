"""AdapterHub interoperability (modules/adapterhub.py, pipeline/adapterhub.py): equivalence is the contract.

Import: the fixtures in tests/fixtures/adapterhub were made by the real `adapters` library (make_fixtures.py,
with its outputs on fixed inputs); imported here without PyTorch, they must give AdapterHub's outputs within
1e-4, through every consumer: the model loader, a served bundle (text in, tokenized in-graph), the Trainer's
warm start. Export: what is written must be what AdapterHub writes (names, shapes, config fields) and must
import back exactly. With ADAPTERHUB_PYTHON naming a Python that has `adapters` (docs/adapterhub.md), both
directions also run against AdapterHub itself.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from typing import Dict

import numpy as np
import pytest

from modules import adapterhub, backbone
from modules.adapters import AdapterConfig
from modules.glue import get_task
from modules.model import AdapterBertClassifier, build_from_adapter_config, load_adapter_weights, save_adapter_weights

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "adapterhub")
BERT = os.path.join(FIXTURES, "bert")
MAX_SEQ_LENGTH = 64
ADAPTERS = {"houlsby_mrpc": "mrpc", "pfeiffer_mnli": "mnli", "houlsby_stsb": "stsb"}
# pfeiffer_mnli's head is in Hugging Face's order (entailment, neutral, contradiction); this project's MNLI
# classes are (contradiction, entailment, neutral): its class i is AdapterHub's output CLASS_ORDER[i].
CLASS_ORDER = {"houlsby_mrpc": [0, 1], "pfeiffer_mnli": [2, 0, 1], "houlsby_stsb": [0]}
ATOL = 1e-4
ADAPTERHUB_PYTHON = os.environ.get("ADAPTERHUB_PYTHON", "")
needs_adapterhub = pytest.mark.skipif(
    not ADAPTERHUB_PYTHON, reason="set ADAPTERHUB_PYTHON to a Python with AdapterHub's `adapters` and PyTorch "
                                  "(docs/adapterhub.md) to check against AdapterHub itself")


@pytest.fixture(scope="module")
def outputs() -> Dict[str, np.ndarray]:
    return dict(np.load(os.path.join(FIXTURES, "outputs.npz")))


def model_inputs(outputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {key: outputs[key] for key in ("input_ids", "attention_mask", "token_type_ids")}


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """Each fixture adapter imported once: fixture directory name -> adapter-only weights directory."""
    root = tmp_path_factory.mktemp("imported")
    directories = {}
    for name, task in ADAPTERS.items():
        directories[name] = str(root / name)
        adapterhub.import_adapter(os.path.join(FIXTURES, name), get_task(task), BERT, directories[name], MAX_SEQ_LENGTH)
    return directories


def load_model(directory: str) -> AdapterBertClassifier:
    """What the bundle and the Trainer's warm start do with adapter-only weights."""
    with open(os.path.join(directory, "adapter_config.json")) as f:
        model = build_from_adapter_config(backbone.load_backbone(BERT), json.load(f))
    load_adapter_weights(model, directory)
    return model


# --- import ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_imported_adapter_gives_adapterhubs_outputs(name, imported, outputs) -> None:
    logits = load_model(imported[name])(model_inputs(outputs), training=False).numpy()
    expected = outputs[f"{name}/logits"][:, CLASS_ORDER[name]]
    assert np.abs(expected).max() > 0.5  # the fixture's outputs are far from zero, so the tolerance is tight
    np.testing.assert_allclose(logits, expected, atol=ATOL, rtol=0)


def test_imported_settings_are_adapterhubs(imported) -> None:
    configs = {}
    for name, directory in imported.items():
        with open(os.path.join(directory, "adapter_config.json")) as f:
            configs[name] = json.load(f)
    assert configs["houlsby_mrpc"]["adapter"] == {
        "bottleneck_size": 8, "non_linearity": "gelu", "placement": "houlsby", "original_ln_before": False,
        "train_layer_norms": False, "init_std": 1e-3, "adapter_drop": 0}  # reduction_factor 2 of hidden 16
    mnli = configs["pfeiffer_mnli"]["adapter"]
    assert (mnli["placement"], mnli["original_ln_before"], mnli["non_linearity"], mnli["bottleneck_size"]) == \
        ("pfeiffer", True, "relu", 4)
    assert configs["houlsby_stsb"]["adapter"]["non_linearity"] == "swish"
    assert configs["houlsby_stsb"]["task"] == "stsb" and configs["houlsby_stsb"]["num_labels"] == 1
    assert configs["pfeiffer_mnli"]["adapterhub"]["name"] == "pfeiffer_mnli"


def test_imported_adapters_serve_adapterhubs_outputs_from_text_in_a_pushed_bundle(imported, outputs, tmp_path) -> None:
    """The served path: raw sentences -> in-graph WordPiece -> each task's model, pushed atomically."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the bundle's tokenizer ops)

    from components.adapter_bundle import AdapterSource, create_bundle

    result = create_bundle([AdapterSource(path) for path in imported.values()], str(tmp_path / "serving"), model=BERT)
    assert result.path == str(tmp_path / "serving" / "glue_bundle" / result.version)
    loaded = tf.saved_model.load(result.path)
    sentences = {key: tf.constant(outputs[key]) for key in ("sentence1", "sentence2")}
    for name, task in ADAPTERS.items():
        served = loaded.signatures[task](**sentences)
        logits = outputs[f"{name}/text_logits"][:, CLASS_ORDER[name]]
        if task == "stsb":
            np.testing.assert_allclose(served["score"].numpy(), logits[:, 0], atol=ATOL, rtol=0)
        else:
            probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            np.testing.assert_allclose(served["probabilities"].numpy(), probabilities, atol=ATOL, rtol=0)


def test_the_trainer_starts_from_imported_adapters_and_with_no_epochs_exports_them_unchanged(imported, outputs,
                                                                                               tmp_path) -> None:
    from modules.trainer import train
    from modules.config import TrainingConfig
    from test_trainer import FEATURE_SPEC, MAX_SEQ_LENGTH as TRAIN_LENGTH, write_transformed

    files = write_transformed(str(tmp_path / "train"), [5, 9, 17, 30], [0, 1, 0, 1])
    config = TrainingConfig(task="mrpc", model=BERT, bottleneck_size=8, non_linearity="gelu", train_layer_norms=False,
                            max_seq_length=TRAIN_LENGTH, batch_size=2, epochs=0, warm_start=imported["houlsby_mrpc"])
    model, history = train(config, [files], [files], FEATURE_SPEC, str(tmp_path / "logs"))
    assert history == []
    np.testing.assert_allclose(model(model_inputs(outputs), training=False).numpy(), outputs["houlsby_mrpc/logits"],
                               atol=ATOL, rtol=0)


def test_a_warm_start_with_other_adapter_settings_is_refused_naming_the_flags(imported) -> None:
    from modules.trainer import warm_start_directory
    from modules.config import TrainingConfig

    config = TrainingConfig(task="mnli", model=BERT, warm_start=imported["pfeiffer_mnli"])
    with pytest.raises(ValueError, match="--bottleneck_size 4 --non_linearity relu --placement pfeiffer "
                                         "--original_ln_before --freeze_layer_norms; this run has --bottleneck_size 64"):
        warm_start_directory(config)
    with pytest.raises(ValueError, match=r"--epochs must be a positive integer, got 0 \(0 only with --warm_start\)"):
        TrainingConfig(epochs=0)


def edited_copy(tmp_path, name: str, file_name: str, edit) -> str:
    copy = str(tmp_path / name)
    shutil.copytree(os.path.join(FIXTURES, name), copy)
    path = os.path.join(copy, file_name)
    with open(path) as f:
        contents = json.load(f)
    edit(contents)
    with open(path, "w") as f:
        json.dump(contents, f)
    return copy


def set_config(**fields):
    return lambda contents: contents["config"].update(fields)


@pytest.mark.parametrize("file_name, edit, field", [
    ("adapter_config.json", set_config(ln_after=True), "config.ln_after=True"),
    ("adapter_config.json", set_config(architecture="lora"), "config.architecture='lora'"),
    ("adapter_config.json", set_config(is_parallel=True), "config.is_parallel=True"),
    ("adapter_config.json", set_config(scaling="learned"), "config.scaling='learned'"),
    ("adapter_config.json", set_config(use_gating=True), "config.use_gating=True"),
    ("adapter_config.json", set_config(original_ln_after=False), "config.original_ln_after=False"),
    ("adapter_config.json", set_config(leave_out=[1]), r"config.leave_out=\[1\]"),
    ("adapter_config.json", set_config(non_linearity="leakyrelu"), "config.non_linearity='leakyrelu'"),
    ("adapter_config.json", set_config(mh_adapter=True, output_adapter=False), "config.mh_adapter/output_adapter"),
    ("adapter_config.json", set_config(reduction_factor={"0": 2, "default": 4}), "config.reduction_factor"),
    ("adapter_config.json", set_config(original_ln_before=True, residual_before_ln=False), "config.residual_before_ln"),
    ("adapter_config.json", lambda c: c.update(model_type="roberta"), "model_type='roberta'"),
    ("head_config.json", set_config(layers=3), "layers/use_pooler"),
    ("head_config.json", set_config(head_type="tagging"), "head_type='tagging'"),
    ("head_config.json", set_config(num_labels=3), "num_labels=3"),
])
def test_configurations_without_an_exact_counterpart_are_refused_naming_the_field(file_name, edit, field,
                                                                                   tmp_path) -> None:
    source = edited_copy(tmp_path, "houlsby_mrpc", file_name, edit)
    output = tmp_path / "out"
    with pytest.raises(adapterhub.AdapterHubError, match=field):
        adapterhub.import_adapter(source, get_task("mrpc"), BERT, str(output), MAX_SEQ_LENGTH)
    assert not output.exists()


def test_a_head_whose_labels_are_not_named_needs_head_labels(tmp_path, outputs) -> None:
    source = edited_copy(tmp_path, "pfeiffer_mnli", "head_config.json",
                         set_config(label2id={"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}))
    with pytest.raises(adapterhub.AdapterHubError, match="--head_labels contradiction,entailment,neutral"):
        adapterhub.import_adapter(source, get_task("mnli"), BERT, str(tmp_path / "refused"), MAX_SEQ_LENGTH)
    adapterhub.import_adapter(source, get_task("mnli"), BERT, str(tmp_path / "out"), MAX_SEQ_LENGTH,
                              head_labels=["entailment", "neutral", "contradiction"])
    logits = load_model(str(tmp_path / "out"))(model_inputs(outputs), training=False).numpy()
    np.testing.assert_allclose(logits, outputs["pfeiffer_mnli/logits"][:, [2, 0, 1]], atol=ATOL, rtol=0)


def test_adapters_of_another_backbone_shape_are_refused(tmp_path) -> None:
    source = edited_copy(tmp_path, "houlsby_mrpc", "adapter_config.json", lambda c: c.update(hidden_size=32))
    with pytest.raises(adapterhub.AdapterHubError, match="trained on a backbone with hidden_size=32"):
        adapterhub.import_adapter(source, get_task("mrpc"), BERT, str(tmp_path / "out"), MAX_SEQ_LENGTH)


def test_the_pytorch_reader_refuses_anything_but_tensors(tmp_path) -> None:
    import collections
    import pickle

    path = str(tmp_path / "pytorch_adapter.bin")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"x": collections.Counter()}))
    with pytest.raises(adapterhub.AdapterHubError, match="unsupported object collections.Counter"):
        adapterhub.read_torch_state_dict(path)


def test_reduction_factor_gives_adapterhub_the_bottleneck_even_where_the_plain_quotient_floors_below() -> None:
    assert 16 // (16 / 5) == 4  # why the plain quotient is not enough
    for hidden in (16, 384, 768):
        for size in range(1, hidden + 1):
            assert adapterhub.bottleneck_size(hidden, adapterhub.reduction_factor(hidden, size)) == size


# --- export ------------------------------------------------------------------------------------------------


def our_adapters(directory: str, task: str, seed: int, **settings) -> AdapterBertClassifier:
    """A model on the fixture backbone with random trained variables (adapters, head, LayerNorms if trained), saved."""
    model = AdapterBertClassifier(backbone.load_backbone(BERT), get_task(task).num_labels, AdapterConfig(**settings))
    rng = np.random.default_rng(seed)
    for variable in model.trainable_variables:
        variable.assign(variable.numpy() + 0.3 * rng.normal(size=variable.shape).astype(np.float32))
    save_adapter_weights(model, directory, extra={"task": task, "model": BERT, "max_seq_length": MAX_SEQ_LENGTH})
    return model


def test_export_writes_what_adapterhub_writes(tmp_path) -> None:
    from safetensors.numpy import load_file

    our_adapters(str(tmp_path / "ours"), "mrpc", 0, bottleneck_size=8, non_linearity="gelu", train_layer_norms=False)
    written = adapterhub.export_adapter(str(tmp_path / "ours"), str(tmp_path / "hub"), name="houlsby_mrpc",
                                        model_name="tests/fixtures/adapterhub/bert")
    assert written["layer_norms"] is None
    for config_file in ("adapter_config.json", "head_config.json"):
        with open(tmp_path / "hub" / config_file) as f, open(os.path.join(FIXTURES, "houlsby_mrpc", config_file)) as g:
            ours, theirs = json.load(f), json.load(g)
        assert ours["config"] == theirs["config"]
        assert {k: v for k, v in ours.items() if k != "config"} == {k: v for k, v in theirs.items() if k != "config"}
    for weights_file in ("adapter.safetensors", "model_head.safetensors"):
        ours = load_file(str(tmp_path / "hub" / weights_file))
        theirs = load_file(os.path.join(FIXTURES, "houlsby_mrpc", weights_file))
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize("settings", [
    dict(placement="pfeiffer", original_ln_before=True, non_linearity="gelu_new", bottleneck_size=5),
    dict(placement="houlsby", non_linearity="tanh", bottleneck_size=3),
    dict(placement="houlsby", non_linearity="gelu", bottleneck_size=4, adapter_drop=1),
])
def test_export_then_import_gives_back_the_same_weights(settings, outputs, tmp_path) -> None:
    model = our_adapters(str(tmp_path / "ours"), "mrpc", 1, train_layer_norms=False, **settings)
    adapterhub.export_adapter(str(tmp_path / "ours"), str(tmp_path / "hub"))
    adapterhub.import_adapter(str(tmp_path / "hub"), get_task("mrpc"), BERT, str(tmp_path / "back"), MAX_SEQ_LENGTH)
    original, back = (np.load(str(tmp_path / d / "adapter_weights.npz")) for d in ("ours", "back"))
    assert sorted(original.files) == sorted(back.files)
    for key in original.files:
        np.testing.assert_array_equal(original[key], back[key])
    np.testing.assert_allclose(load_model(str(tmp_path / "back"))(model_inputs(outputs), training=False).numpy(),
                               model(model_inputs(outputs), training=False).numpy(), atol=1e-6, rtol=0)


def test_trained_layer_norms_are_exported_under_adapterhubs_names(tmp_path) -> None:
    from safetensors.numpy import load_file

    our_adapters(str(tmp_path / "ours"), "mrpc", 2, bottleneck_size=8)
    written = adapterhub.export_adapter(str(tmp_path / "ours"), str(tmp_path / "hub"))
    norms = load_file(written["layer_norms"])
    weights = np.load(str(tmp_path / "ours" / "adapter_weights.npz"))
    assert len(norms) == 2 * 2 * 2  # 2 layers x 2 LayerNorms x (weight, bias)
    np.testing.assert_array_equal(norms["bert.encoder.layer.1.attention.output.LayerNorm.weight"],
                                  weights["bert/encoder/layer_._1/attention/output/LayerNorm/gamma"])
    np.testing.assert_array_equal(norms["bert.encoder.layer.0.output.LayerNorm.bias"],
                                  weights["bert/encoder/layer_._0/output/LayerNorm/beta"])


def test_adapter_drop_is_exported_as_leave_out_with_no_weights_below_k(tmp_path) -> None:
    from safetensors.numpy import load_file

    our_adapters(str(tmp_path / "ours"), "mrpc", 2, bottleneck_size=8, adapter_drop=1)
    written = adapterhub.export_adapter(str(tmp_path / "ours"), str(tmp_path / "hub"))
    with open(tmp_path / "hub" / "adapter_config.json") as f:
        assert json.load(f)["config"]["leave_out"] == [0]
    adapters = load_file(str(tmp_path / "hub" / "adapter.safetensors"))
    assert adapters and all(name.startswith("bert.encoder.layer.1.") for name in adapters)
    assert sorted(load_file(written["layer_norms"])) == sorted(
        f"bert.encoder.layer.1.{position}.LayerNorm.{part}" for position in ("attention.output", "output")
        for part in ("weight", "bias"))


def test_export_refuses_a_non_empty_destination_and_leaves_nothing_behind(tmp_path) -> None:
    our_adapters(str(tmp_path / "ours"), "mrpc", 3, bottleneck_size=8)
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "keep.txt").write_text("x")
    with pytest.raises(adapterhub.AdapterHubError, match="exists and is not empty"):
        adapterhub.export_adapter(str(tmp_path / "ours"), str(tmp_path / "hub"))
    assert sorted(os.listdir(tmp_path)) == ["hub", "ours"]


# --- against AdapterHub itself -------------------------------------------------------------------------------


def adapterhub_logits(adapter_dir: str, inputs_path: str, tmp_path) -> np.ndarray:
    out = str(tmp_path / "adapterhub_logits.npz")
    subprocess.run([ADAPTERHUB_PYTHON, os.path.join(FIXTURES, "score_with_adapterhub.py"), BERT, adapter_dir,
                    inputs_path, out], check=True, capture_output=True, text=True)
    return np.load(out)["logits"]


@needs_adapterhub
@pytest.mark.parametrize("task, settings", [
    ("mrpc", dict(bottleneck_size=8, non_linearity="gelu")),  # trained LayerNorms: the extra file
    ("mnli", dict(placement="pfeiffer", original_ln_before=True, non_linearity="gelu_new", bottleneck_size=5,
                  train_layer_norms=False)),
    ("stsb", dict(placement="pfeiffer", non_linearity="swish", bottleneck_size=3)),
    ("rte", dict(bottleneck_size=8, non_linearity="gelu", adapter_drop=1)),  # leave_out=[0]
])
def test_exported_adapters_give_our_outputs_in_adapterhub(task, settings, outputs, tmp_path) -> None:
    model = our_adapters(str(tmp_path / "ours"), task, 4, **settings)
    adapterhub.export_adapter(str(tmp_path / "ours"), str(tmp_path / "hub"))
    theirs = adapterhub_logits(str(tmp_path / "hub"), os.path.join(FIXTURES, "outputs.npz"), tmp_path)
    ours = model(model_inputs(outputs), training=False).numpy()
    if task == "mnli":  # AdapterHub's outputs are in the label2id order export wrote: this project's
        assert json.load(open(tmp_path / "hub" / "head_config.json"))["config"]["label2id"] == \
            {"contradiction": 0, "entailment": 1, "neutral": 2}
    np.testing.assert_allclose(theirs, ours, atol=ATOL, rtol=0)


@needs_adapterhub
def test_adapters_made_now_by_adapterhub_import_to_its_outputs(tmp_path) -> None:
    fresh = str(tmp_path / "fresh")
    subprocess.run([ADAPTERHUB_PYTHON, os.path.join(FIXTURES, "make_fixtures.py"), fresh], check=True,
                   capture_output=True, text=True)
    outputs = dict(np.load(os.path.join(fresh, "outputs.npz")))
    for name, task in ADAPTERS.items():
        target = str(tmp_path / f"imported_{name}")
        adapterhub.import_adapter(os.path.join(fresh, name), get_task(task), os.path.join(fresh, "bert"), target,
                                  MAX_SEQ_LENGTH)
        with open(os.path.join(target, "adapter_config.json")) as f:
            model = build_from_adapter_config(backbone.load_backbone(os.path.join(fresh, "bert")), json.load(f))
        load_adapter_weights(model, target)
        np.testing.assert_allclose(model(model_inputs(outputs), training=False).numpy(),
                                   outputs[f"{name}/logits"][:, CLASS_ORDER[name]], atol=ATOL, rtol=0)


def test_adapter_configs_written_before_original_ln_before_existed_still_load(imported, tmp_path) -> None:
    old = str(tmp_path / "old")
    shutil.copytree(imported["houlsby_mrpc"], old)
    path = os.path.join(old, "adapter_config.json")
    with open(path) as f:
        config = json.load(f)
    del config["adapter"]["original_ln_before"]
    with open(path, "w") as f:
        json.dump(config, f)
    assert load_model(old).adapter_config.original_ln_before is False


def test_the_cli_imports_exports_and_refuses_with_the_reason(tmp_path, capsys) -> None:
    from pipeline.adapterhub import main

    main(["import", os.path.join(FIXTURES, "pfeiffer_mnli"), str(tmp_path / "ours"), "--task", "mnli", "--model", BERT,
          "--max_seq_length", "64"])
    assert "--placement pfeiffer --original_ln_before --freeze_layer_norms --warm_start" in capsys.readouterr().out
    main(["export", "--adapters", str(tmp_path / "ours"), str(tmp_path / "hub")])
    assert sorted(os.listdir(tmp_path / "hub")) == ["adapter.safetensors", "adapter_config.json", "head_config.json",
                                                    "model_head.safetensors"]
    with pytest.raises(SystemExit, match="error: .*head num_labels=3, expected 2"):
        main(["import", os.path.join(FIXTURES, "pfeiffer_mnli"), str(tmp_path / "refused"), "--task", "mrpc",
              "--model", BERT])
    assert not (tmp_path / "refused").exists()
