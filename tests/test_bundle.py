"""The multi-task bundle on a tiny BERT: one backbone stored once, every task's answers unchanged.

Two task models are made by the Trainer's own `run_fn` (with a few eager training steps in place of
`train`), so their SavedModels and adapter directories are exactly what the pipeline produces:
  sst2 (single sentence, classification, max_seq_length 32) and stsb (sentence pair, regression, 24).
The bundle of sst2 alone is built first; stsb is then added through the CLI, found in an ML Metadata
store that records both pushes the way TFX does.
"""
import functools
import os
import tempfile
from typing import Dict, List

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from components import adapter_bundle
from modules import serving, trainer
from modules.bundle import BundleError, read_task_adapters
from modules.glue import get_task
from modules.adapters import AdapterConfig
from modules.model import AdapterBertClassifier, save_adapter_weights
from modules.backbone import load_backbone, tokenizer_settings
from modules.preprocessing import tokenize_pairs
from tiny_bert import write_tiny_bert

SETTINGS = {"sst2": 32, "stsb": 24}  # task -> max_seq_length
SENTENCES_A = ["the movie was very good", "", "bad film !", "a " * 60 + "long one", "what a great day, friend"]
SENTENCES_B = ["the film was good", "nothing", "the movie was not good at all", "short", "a " * 40]


def write_transform_output(directory: str, model_dir: str, task: str) -> None:
    """The Transform component's transform_graph output for `task` (no analyzers: one row is enough)."""
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io

    from components.glue_schema_gen import glue_schema
    from modules import preprocessing

    metadata = dataset_metadata.DatasetMetadata(glue_schema(task))
    config = {"model": model_dir, "max_seq_length": SETTINGS[task], "task": task}
    row = {"sentence1": b"a", "sentence2": b"b", "idx": 0, "label": 1.0 if get_task(task).is_regression else 1}
    with tft_beam.Context(temp_dir=tempfile.mkdtemp(dir=directory)):
        transform_fn = ([row], metadata) | tft_beam.AnalyzeDataset(
            functools.partial(preprocessing.preprocessing_fn, custom_config=config))
        _ = transform_fn | tft_beam.WriteTransformFn(directory)
    metadata_io.write_metadata(metadata, os.path.join(directory, tft.TFTransformOutput.RAW_METADATA_DIR))


def quick_train(config, *args, **kwargs):
    """Stands in for modules.trainer.train: the same model and optimizer, a few eager steps on a few sentences."""
    task = get_task(config.task)
    keras.utils.set_random_seed(config.seed)
    model = trainer.build_model(config, task)
    trainer.compile_model(model, config, task, total_steps=4)
    model.run_eagerly = True  # tracing costs more than four steps on a tiny BERT
    features = tokenize_pairs(tf.constant(SENTENCES_A * 2), None if task.text_b is None else tf.constant(SENTENCES_B * 2),
                              tokenizer_settings(config.model), config.max_seq_length)
    rng = np.random.default_rng(config.seed)
    labels = rng.uniform(0, 5, 10).astype(np.float32) if task.is_regression else rng.integers(0, 2, 10)
    inputs = {name: features[name] for name in ("input_ids", "attention_mask", "token_type_ids")}
    model.fit(inputs, labels, batch_size=5, epochs=2, verbose=0)
    # Stand-in for a long run: a tiny random BERT's answers barely differ between sentences (pooler and head
    # start at std 0.02), which would make the 1e-5 comparisons below weak. Larger head and adapter weights fix that.
    for variable in model.trainable_variables:
        if variable.name.endswith("kernel:0") and ("classifier" in variable.name or "/up/" in variable.name):
            variable.assign(variable * 50.0)
    return model, []


def train_task(root: str, model_dir: str, task: str, seed: int, **settings) -> str:
    """Runs modules.trainer.run_fn for `task` (TrainingConfig `settings` added); returns the Model artifact
    directory (Format-Serving/, adapters/)."""
    from tfx.components.trainer.fn_args_utils import FnArgs

    transform_dir = os.path.join(root, f"transform_{task}")
    os.makedirs(transform_dir)
    write_transform_output(transform_dir, model_dir, task)
    artifact = os.path.join(root, f"Trainer/model/{task}")
    config = {"task": task, "model": model_dir, "max_seq_length": SETTINGS[task], "bottleneck_size": 8,
              "learning_rate": 1e-2, "warmup_ratio": 0.0, "seed": seed, **settings}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "train", quick_train)
        trainer.run_fn(FnArgs(custom_config=config, transform_graph_path=transform_dir, train_files=[], eval_files=[],
                              serving_model_dir=os.path.join(artifact, "Format-Serving"),
                              model_run_dir=os.path.join(root, f"logs_{task}")))
    return artifact


def write_metadata(path: str, pushes: Dict[str, List[Dict]]) -> None:
    """An ML Metadata store holding, per task pipeline, Pusher executions (input Model -> output PushedModel) as TFX
    records them: {task: [{"model": uri, "pushed": 0/1, "version": "123"}, ...]}."""
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2 as pb

    config = pb.ConnectionConfig()
    config.sqlite.filename_uri = path
    config.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    store = metadata_store.MetadataStore(config)
    pipeline_type = store.put_context_type(pb.ContextType(name="pipeline"))
    model_type = store.put_artifact_type(pb.ArtifactType(name="Model"))
    pushed_type = store.put_artifact_type(pb.ArtifactType(name="PushedModel"))
    pusher_type = store.put_execution_type(pb.ExecutionType(name="tfx.components.pusher.component.Pusher"))
    for task, records in pushes.items():
        [context_id] = store.put_contexts([pb.Context(type_id=pipeline_type, name=f"adapter-bert-glue-{task}")])
        for record in records:
            model = pb.Artifact(type_id=model_type, uri=record["model"], state=pb.Artifact.LIVE)
            push = pb.Artifact(type_id=pushed_type, uri=record["model"] + "_push", state=pb.Artifact.LIVE)
            push.custom_properties["pushed"].int_value = record["pushed"]
            if record["pushed"]:
                push.custom_properties["pushed_destination"].string_value = f"/serving/{task}/{record['version']}"
                push.custom_properties["pushed_version"].string_value = record["version"]
            model_id, push_id = store.put_artifacts([model, push])
            [execution_id] = store.put_executions([pb.Execution(type_id=pusher_type, last_known_state=pb.Execution.COMPLETE)])
            store.put_events([pb.Event(artifact_id=model_id, execution_id=execution_id, type=pb.Event.INPUT),
                              pb.Event(artifact_id=push_id, execution_id=execution_id, type=pb.Event.OUTPUT)])
            store.put_attributions_and_associations(
                [pb.Attribution(context_id=context_id, artifact_id=i) for i in (model_id, push_id)],
                [pb.Association(context_id=context_id, execution_id=execution_id)])


def adapter_set(root: str, model_dir: str, task: str) -> str:
    """Adapter-only weights of `task` on the backbone in model_dir, saved like run_fn (untrained: only the checks matter)."""
    model = AdapterBertClassifier(load_backbone(model_dir), get_task(task).num_labels, AdapterConfig(bottleneck_size=8))
    directory = os.path.join(root, "adapters")
    save_adapter_weights(model, directory, extra={"task": task, "model": model_dir, "max_seq_length": 32})
    return directory


def as_numpy(outputs: Dict[str, tf.Tensor]) -> Dict[str, np.ndarray]:
    return {key: value.numpy() for key, value in outputs.items()}


def parameters(saved_model: str) -> int:
    """Numbers stored in a SavedModel's variables (each stored variable counted once)."""
    return sum(int(np.prod(shape)) for name, shape in tf.train.list_variables(os.path.join(saved_model, "variables", "variables"))
               if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH"))


def size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    model_dir = write_tiny_bert(root / "tiny_bert")
    return {"root": str(root), "model_dir": model_dir, "serving_dir": str(root / "serving")}


@pytest.fixture(scope="module")
def task_a(setup):
    return train_task(setup["root"], setup["model_dir"], "sst2", seed=1)


@pytest.fixture(scope="module")
def single_a(task_a):
    return tf.saved_model.load(os.path.join(task_a, "Format-Serving")).signatures[serving.TEXT_SIGNATURE]


@pytest.fixture(scope="module")
def bundle_a(setup, task_a):
    """The bundle of sst2 alone, built from its Model artifact directory."""
    result = adapter_bundle.create_bundle([adapter_bundle.AdapterSource(task_a)], setup["serving_dir"])
    loaded = tf.saved_model.load(result.path)
    return result, loaded, as_numpy(loaded.signatures["sst2"](sentence1=tf.constant(SENTENCES_A)))


@pytest.fixture(scope="module")
def task_b(setup, bundle_a):  # trained after the first bundle was pushed, as a new task would be
    return train_task(setup["root"], setup["model_dir"], "stsb", seed=2)


@pytest.fixture(scope="module")
def metadata_path(setup, task_a, task_b):
    path = os.path.join(setup["root"], "metadata.sqlite")
    write_metadata(path, {
        "sst2": [{"model": os.path.join(setup["root"], "an_older_model"), "pushed": 1, "version": "100"},
                 {"model": task_a, "pushed": 1, "version": "200"},
                 {"model": os.path.join(setup["root"], "not_blessed"), "pushed": 0, "version": "300"}],
        "stsb": [{"model": task_b, "pushed": 1, "version": "150"}],
    })
    return path


@pytest.fixture(scope="module")
def bundle_ab(setup, metadata_path, bundle_a):
    """sst2 + stsb through the CLI, both found in ML Metadata."""
    from pipeline import bundle as cli

    path = cli.main(["--tasks", "sst2,stsb", "--metadata_path", metadata_path, "--serving_dir", setup["serving_dir"]])
    return path, tf.saved_model.load(path)


def test_bundle_answers_like_the_single_task_model(bundle_a, single_a):
    result, loaded, outputs = bundle_a
    assert result.tasks == ["sst2"] and os.path.basename(result.path) == result.version
    expected = as_numpy(single_a(sentence1=tf.constant(SENTENCES_A)))
    assert set(outputs) == set(expected) == {"probabilities", "label", "label_name"}
    np.testing.assert_allclose(outputs["probabilities"], expected["probabilities"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(outputs["label"], expected["label"])
    np.testing.assert_array_equal(outputs["label_name"], expected["label_name"])
    assert np.ptp(expected["probabilities"][:, 1]) > 100 * 1e-5  # answers differ by far more than the tolerance


def test_finds_the_latest_pushed_model_of_each_task(metadata_path, task_a, task_b):
    sources = adapter_bundle.find_pushed_adapters(metadata_path, ["SST-2", "stsb"])
    assert [s.path for s in sources] == [task_a, task_b]
    assert sources[0].provenance["pushed_version"] == "200"  # not the older push, nor the unblessed newer model
    with pytest.raises(BundleError, match="adapter-bert-glue-rte has never run"):
        adapter_bundle.find_pushed_adapters(metadata_path, ["rte"])


def test_adding_a_task_leaves_the_first_bit_identical(setup, bundle_a, bundle_ab, task_b):
    result_a, _, outputs_a = bundle_a
    path, loaded = bundle_ab
    assert int(os.path.basename(path)) > int(result_a.version)  # a new version; the old one is untouched
    assert sorted(os.listdir(os.path.join(setup["serving_dir"], "glue_bundle"))) == sorted([result_a.version, os.path.basename(path)])
    assert {"sst2", "stsb", "predict", "serving_default"} <= set(loaded.signatures)
    assert result_a.dropped == [] and adapter_bundle.served_tasks(os.path.dirname(path)) == ["sst2", "stsb"]
    again = as_numpy(loaded.signatures["sst2"](sentence1=tf.constant(SENTENCES_A)))
    for key in outputs_a:
        assert np.array_equal(again[key], outputs_a[key]), key

    single_b = tf.saved_model.load(os.path.join(task_b, "Format-Serving")).signatures[serving.TEXT_SIGNATURE]
    inputs = {"sentence1": tf.constant(SENTENCES_A), "sentence2": tf.constant(SENTENCES_B)}
    expected, outputs = as_numpy(single_b(**inputs)), as_numpy(loaded.signatures["stsb"](**inputs))
    assert set(outputs) == set(expected) == {"score"}
    np.testing.assert_allclose(outputs["score"], expected["score"], atol=1e-5, rtol=0)


def test_generic_signature_routes_each_example_to_its_task(bundle_ab):
    _, loaded = bundle_ab
    predict = loaded.signatures["predict"]
    s1, s2 = tf.constant(SENTENCES_A), tf.constant(SENTENCES_B)
    sst2 = as_numpy(loaded.signatures["sst2"](sentence1=s1))
    stsb = as_numpy(loaded.signatures["stsb"](sentence1=s1, sentence2=s2))
    tasks = np.array(["sst2", "stsb", "STS-B", "sst2", "stsb"])
    out = as_numpy(predict(task=tf.constant(tasks), sentence1=s1, sentence2=s2))
    assert out["probabilities"].shape == (5, 2)
    is_sst2 = tasks == "sst2"
    np.testing.assert_allclose(out["probabilities"][is_sst2], sst2["probabilities"][is_sst2], atol=1e-5)
    np.testing.assert_array_equal(out["label"][is_sst2], sst2["label"][is_sst2])
    np.testing.assert_allclose(out["score"][is_sst2], sst2["probabilities"][is_sst2].max(axis=1), atol=1e-5)
    np.testing.assert_allclose(out["score"][~is_sst2], stsb["score"][~is_sst2], atol=1e-5)
    np.testing.assert_array_equal(out["label"][~is_sst2], -1)
    np.testing.assert_array_equal(out["label_name"][is_sst2], sst2["label_name"][is_sst2])
    np.testing.assert_array_equal(out["label_name"][~is_sst2], b"")
    np.testing.assert_array_equal(out["probabilities"][~is_sst2], 0.0)
    np.testing.assert_array_equal(out["num_labels"], np.where(is_sst2, 2, 0))

    whole_batch = as_numpy(predict(task=tf.constant("stsb"), sentence1=s1, sentence2=s2))  # a scalar task
    np.testing.assert_allclose(whole_batch["score"], stsb["score"], atol=1e-5)
    assert as_numpy(predict(task=tf.constant("sst2"), sentence1=s1[:0], sentence2=s2[:0]))["label"].shape == (0,)
    with pytest.raises(tf.errors.InvalidArgumentError, match="this bundle serves sst2, stsb"):
        predict(task=tf.constant(["sst2", "rte", "stsb", "sst2", "sst2"]), sentence1=s1, sentence2=s2)


def test_all_tasks_signature_answers_every_task_as_its_own_signature(bundle_ab):
    _, loaded = bundle_ab
    s1, s2 = tf.constant(SENTENCES_A), tf.constant(SENTENCES_B)
    out = as_numpy(loaded.signatures["all_tasks"](sentence1=s1, sentence2=s2))
    sst2 = as_numpy(loaded.signatures["sst2"](sentence1=s1))
    stsb = as_numpy(loaded.signatures["stsb"](sentence1=s1, sentence2=s2))
    assert set(out) == {"sst2/probabilities", "sst2/label", "sst2/label_name", "stsb/score"}
    np.testing.assert_allclose(out["sst2/probabilities"], sst2["probabilities"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(out["sst2/label"], sst2["label"])
    np.testing.assert_array_equal(out["sst2/label_name"], sst2["label_name"])
    np.testing.assert_allclose(out["stsb/score"], stsb["score"], atol=1e-5, rtol=0)


def test_backbone_is_stored_once(setup, task_a, task_b, bundle_ab):
    path, _ = bundle_ab
    backbone = {v.name: int(np.prod(v.shape)) for v in load_backbone(setup["model_dir"]).variables}
    trained = {}
    for task in (task_a, task_b):
        with np.load(os.path.join(task, "adapters", "adapter_weights.npz")) as weights:
            trained[task] = {key: weights[key].size for key in weights.files}
    trained_everywhere = set(trained[task_a]) & set(trained[task_b])
    shared = sum(n for name, n in backbone.items() if name.split("/", 1)[1].rsplit(":", 1)[0] not in trained_everywhere)
    assert parameters(path) == shared + sum(sum(t.values()) for t in trained.values())

    singles = [os.path.join(task, "Format-Serving") for task in (task_a, task_b)]
    assert all(parameters(single) >= sum(backbone.values()) for single in singles)
    bundle_bytes, single_bytes = size(os.path.join(path, "variables")), sum(size(os.path.join(s, "variables")) for s in singles)
    print(f"\nvariables: bundle of 2 tasks {bundle_bytes} B, the 2 single-task models {single_bytes} B; "
          f"whole SavedModels: {size(path)} B vs {sum(size(s) for s in singles)} B")
    assert bundle_bytes < 0.7 * single_bytes


def test_refuses_wrong_combinations_before_writing_anything(setup, task_a):
    serving_dir = os.path.join(setup["root"], "refused")
    other_shape = write_tiny_bert(os.path.join(setup["root"], "wider_bert"), hidden_size=48)
    other_weights = write_tiny_bert(os.path.join(setup["root"], "other_bert"), seed=7)
    cases = [
        ([task_a, task_a], None, "Task sst2 is given twice"),
        ([task_a, adapter_set(os.path.join(setup["root"], "wider"), other_shape, "rte")], setup["model_dir"],
         "Task rte's adapters .* were trained on a backbone with hidden_size=48; the bundle's backbone has hidden_size=32"),
        ([task_a, adapter_set(os.path.join(setup["root"], "other"), other_weights, "rte")], setup["model_dir"],
         "Task rte: .* trained on other backbone weights"),
        ([task_a, adapter_set(os.path.join(setup["root"], "other2"), other_weights, "rte")], None,
         "name different backbones"),
    ]
    for paths, model, message in cases:
        with pytest.raises(BundleError, match=message):
            adapter_bundle.create_bundle([adapter_bundle.AdapterSource(p) for p in paths], serving_dir, model=model)
        assert not os.path.exists(serving_dir)
    with pytest.raises(BundleError, match="holds no adapter-only weights"):
        read_task_adapters(os.path.join(task_a, "Format-Serving"))


def test_cli_refuses_unknown_tasks_and_writes_nothing(setup, metadata_path, capsys):
    from pipeline import bundle as cli

    serving_dir = os.path.join(setup["root"], "cli_refused")
    for tasks, message in (("sst2,rte", "has never run"), ("sst2,nope", "Pipeline adapter-bert-glue-nope has never run")):
        with pytest.raises(SystemExit, match=message):
            cli.main(["--tasks", tasks, "--metadata_path", metadata_path, "--serving_dir", serving_dir])
    assert not os.path.exists(serving_dir)
