"""The Trainer module's pieces: the learning-rate schedule, the length-bucketed input pipeline, and `train`
on a tiny transformed dataset (the Transform stage's output format) with a tiny random BERT."""
import glob
import os
from typing import Dict, List, Tuple

import numpy as np
import pytest
import tensorflow as tf

from modules.serving import model_inputs
from modules.trainer import EpochEta, WarmupLinearDecay, bucket_bounds, make_dataset
from tiny_bert import write_tiny_bert

MAX_SEQ_LENGTH = 32
FEATURE_SPEC = {
    "input_ids": tf.io.FixedLenFeature([MAX_SEQ_LENGTH], tf.int64),
    "attention_mask": tf.io.FixedLenFeature([MAX_SEQ_LENGTH], tf.int64),
    "token_type_ids": tf.io.FixedLenFeature([MAX_SEQ_LENGTH], tf.int64),
    "length": tf.io.FixedLenFeature([], tf.int64),
    "label": tf.io.FixedLenFeature([], tf.int64),
}
CLS, SEP, FIRST_WORD_ID = 2, 3, 5  # tiny_bert's vocabulary: [PAD] [UNK] [CLS] [SEP] [MASK] ...


# --- EpochEta ------------------------------------------------------------------------------------------------


def etas(step_seconds: List[float], traced: List[bool], min_steps: int = 3) -> List[object]:
    """The estimate after each of the given steps of one epoch."""
    eta = EpochEta(total_steps=len(step_seconds), min_steps=min_steps)
    estimates = []
    for seconds, was_traced in zip(step_seconds, traced):
        eta.add_step(seconds, was_traced)
        estimates.append(eta.remaining_seconds())
    return estimates


def test_eta_waits_for_steps_that_trace_nothing_then_ignores_the_tracing() -> None:
    # A first epoch: two 40 s tracing steps (two batch shapes), then 1 s and 3 s steps (short and long buckets).
    seconds = [40.0, 40.0] + [1.0, 3.0] * 4
    traced = [True, True] + [False] * 8
    estimates = etas(seconds, traced)
    assert estimates[:4] == [None] * 4  # 0, 0, 1 and 2 steps without tracing: fewer than min_steps
    assert estimates[4] == pytest.approx(5 * (1 + 3 + 1) / 3)
    assert estimates[5] == pytest.approx(4 * 2.0)  # the true remaining time: 1 + 3 + 1 + 3 s
    assert estimates[-1] == 0
    # (A rate over all the steps so far would have said 4 * 88 / 6 = 59 s there.)


def test_eta_skips_a_late_tracing_step_and_counts_every_step_as_done() -> None:
    estimates = etas([2.0] * 4 + [30.0] + [2.0] * 5, [False] * 4 + [True] + [False] * 5)
    assert estimates[3] == pytest.approx(6 * 2.0)
    assert estimates[4] == pytest.approx(5 * 2.0)


def test_eta_step_seconds_is_the_mean_untraced_step() -> None:
    eta = EpochEta(total_steps=100, min_steps=2)
    eta.add_step(50.0, traced=True)
    eta.add_step(1.0, traced=False)
    assert eta.step_seconds() is None
    eta.add_step(2.0, traced=False)
    assert eta.step_seconds() == pytest.approx(1.5)
    assert eta.remaining_seconds() == pytest.approx(97 * 1.5)


# --- WarmupLinearDecay -------------------------------------------------------------------------------------


def schedule_at(schedule: WarmupLinearDecay, steps: List[int]) -> np.ndarray:
    return np.array([float(schedule(step)) for step in steps])


def test_schedule_warms_up_linearly_then_decays_linearly_to_zero() -> None:
    schedule = WarmupLinearDecay(peak=1e-3, total_steps=100, warmup_steps=10)
    np.testing.assert_allclose(
        schedule_at(schedule, [0, 1, 5, 10, 11, 55, 90, 99, 100]),
        [0.0, 1e-4, 5e-4, 1e-3, 1e-3 * 89 / 90, 5e-4, 1e-3 / 9, 1e-3 / 90, 0.0], rtol=1e-5, atol=1e-12)


def test_schedule_stays_at_zero_after_the_last_step() -> None:
    schedule = WarmupLinearDecay(peak=1e-3, total_steps=100, warmup_steps=10)
    np.testing.assert_array_equal(schedule_at(schedule, [100, 101, 150, 10_000]), 0.0)


def test_schedule_peaks_exactly_at_the_end_of_warmup_and_accepts_int64_steps() -> None:
    schedule = WarmupLinearDecay(peak=3e-4, total_steps=50, warmup_steps=5)
    values = schedule_at(schedule, list(range(0, 51)))
    assert values.argmax() == 5 and values.max() == pytest.approx(3e-4)
    assert np.all(np.diff(values[:6]) > 0) and np.all(np.diff(values[5:]) < 0)
    assert float(schedule(tf.constant(5, tf.int64))) == pytest.approx(3e-4)  # the optimizer's iterations


def test_schedule_without_warmup_starts_at_the_peak() -> None:
    schedule = WarmupLinearDecay(peak=1e-3, total_steps=10, warmup_steps=0)
    np.testing.assert_allclose(schedule_at(schedule, [0, 5, 10]), [1e-3, 5e-4, 0.0], rtol=1e-6, atol=1e-12)


def test_schedule_config_round_trips() -> None:
    schedule = WarmupLinearDecay(peak=2e-4, total_steps=30, warmup_steps=3)
    again = WarmupLinearDecay.from_config(schedule.get_config())
    np.testing.assert_array_equal(schedule_at(again, [0, 3, 17, 30]), schedule_at(schedule, [0, 3, 17, 30]))


# --- transformed examples ----------------------------------------------------------------------------------


def transformed_example(example_id: int, length: int, label: int) -> tf.train.Example:
    """One example as Transform writes it; the first word id encodes `example_id`, so it can be traced."""
    first = (length - 1) // 2  # [CLS] a [SEP] b [SEP]
    ids = [CLS] + [FIRST_WORD_ID + example_id] + [FIRST_WORD_ID] * (first - 2) + [SEP]
    ids += [FIRST_WORD_ID + 1] * (length - len(ids) - 1) + [SEP]
    type_ids = [0] * (first + 1) + [1] * (length - first - 1)
    pad = [0] * (MAX_SEQ_LENGTH - length)
    int64 = lambda values: tf.train.Feature(int64_list=tf.train.Int64List(value=values))  # noqa: E731
    return tf.train.Example(features=tf.train.Features(feature={
        "input_ids": int64(ids + pad), "attention_mask": int64([1] * length + pad),
        "token_type_ids": int64(type_ids + pad), "length": int64([length]), "label": int64([label]),
    }))


def write_transformed(directory: str, lengths: List[int], labels: List[int], files: int = 2) -> str:
    """Gzipped TFRecord shards like Transform's transformed_examples/Split-*; returns their glob pattern."""
    os.makedirs(directory, exist_ok=True)
    writers = [tf.io.TFRecordWriter(os.path.join(directory, f"transformed_examples-{i:05d}-of-{files:05d}.gz"),
                                    options="GZIP") for i in range(files)]
    for example_id, (length, label) in enumerate(zip(lengths, labels)):
        writers[example_id % files].write(transformed_example(example_id, length, label).SerializeToString())
    for writer in writers:
        writer.close()
    return os.path.join(directory, "*.gz")


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Tuple[str, np.ndarray, np.ndarray]:
    """50 examples of lengths 5..32 (both sides of the 16-token bucket boundary), with random labels."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, MAX_SEQ_LENGTH + 1, size=50)
    lengths[:3] = [5, 17, MAX_SEQ_LENGTH]  # a bucket boundary case: 17 tokens is the first of the long bucket
    labels = rng.integers(0, 2, size=50)
    pattern = write_transformed(str(tmp_path_factory.mktemp("transformed")), lengths.tolist(), labels.tolist())
    return pattern, lengths, labels


def batches_of(dataset: tf.data.Dataset) -> List[Tuple[Dict[str, np.ndarray], np.ndarray]]:
    return [({k: v.numpy() for k, v in features.items()}, label.numpy()) for features, label in dataset]


def check_batch(features: Dict[str, np.ndarray], label: np.ndarray, lengths: np.ndarray, labels: np.ndarray) -> List[int]:
    """Asserts a batch's features and labels belong together; returns its example ids."""
    assert set(features) == {"input_ids", "attention_mask", "token_type_ids"}
    ids = features["input_ids"][:, 1] - FIRST_WORD_ID
    np.testing.assert_array_equal(features["attention_mask"].sum(axis=1), lengths[ids])
    np.testing.assert_array_equal(label, labels[ids])
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert features[name].dtype == np.int64 and features[name].shape[0] == len(ids)
    return ids.tolist()


def test_bucketed_batches_are_cut_to_their_longest_example_and_keep_labels_with_features(examples) -> None:
    pattern, lengths, labels = examples
    dataset = make_dataset([pattern], FEATURE_SPEC, batch_size=8, max_seq_length=MAX_SEQ_LENGTH,
                           shuffle_seed=1, bucketing=True)
    epochs = [batches_of(dataset) for _ in range(2)]
    for batches in epochs:
        seen = []
        for features, label in batches:
            ids = check_batch(features, label, lengths, labels)
            seen += ids
            assert 1 <= len(ids) <= 8
            batch_lengths = lengths[ids]
            assert features["input_ids"].shape[1] == batch_lengths.max()  # cut to the longest, no wider
            assert (batch_lengths <= 16).all() or (batch_lengths > 16).all()  # one bucket per batch
            # What was cut off is padding only: the real tokens all survive, ending with [SEP].
            np.testing.assert_array_equal(features["input_ids"][np.arange(len(ids)), batch_lengths - 1], SEP)
        assert sorted(seen) == list(range(len(lengths)))  # every example exactly once per epoch
    short, long = int((lengths <= 16).sum()), int((lengths > 16).sum())
    assert len(epochs[0]) == -(-short // 8) + -(-long // 8)  # full batches within each bucket
    first_order = [features["input_ids"][:, 1].tolist() for features, _ in epochs[0]]
    second_order = [features["input_ids"][:, 1].tolist() for features, _ in epochs[1]]
    assert first_order != second_order  # reshuffled every epoch


def test_without_bucketing_every_batch_has_the_fixed_length_and_file_order_is_kept(examples) -> None:
    pattern, lengths, labels = examples
    dataset = make_dataset([pattern], FEATURE_SPEC, batch_size=8, max_seq_length=MAX_SEQ_LENGTH,
                           shuffle_seed=None, bucketing=False)
    batches = batches_of(dataset)
    assert [len(label) for _, label in batches] == [8] * 6 + [2]
    seen = []
    for features, label in batches:
        seen += check_batch(features, label, lengths, labels)
        assert {v.shape[1] for v in features.values()} == {MAX_SEQ_LENGTH}
    assert sorted(seen) == list(range(len(lengths)))
    assert seen == sorted(seen, key=lambda i: (i % 2, i))  # unshuffled: shard 0, then shard 1, in write order


def test_bucket_shaped_batches_are_cut_to_their_bucket_bound_for_xla(examples) -> None:
    # Under XLA a batch's width is the smallest bucket bound that holds its longest example and every batch has
    # batch_size rows: one shape per bucket, not one per length and partial batch, since XLA compiles each shape.
    pattern, lengths, labels = examples
    bounds = bucket_bounds(MAX_SEQ_LENGTH)
    assert bounds == [16, MAX_SEQ_LENGTH]
    dataset = make_dataset([pattern], FEATURE_SPEC, batch_size=8, max_seq_length=MAX_SEQ_LENGTH,
                           shuffle_seed=1, bucketing=True, bucket_shapes=True)
    seen, shapes = [], set()
    for features, label, weight in ([{k: v.numpy() for k, v in f.items()}, y.numpy(), w.numpy()] for f, y, w in dataset):
        shapes.add(features["input_ids"].shape)
        n = int((weight > 0).sum())  # the real rows come first, the padding rows after them weigh 0
        np.testing.assert_allclose(weight, [8 / n] * n + [0] * (8 - n))
        assert (features["attention_mask"][n:] == 0).all() and (label[n:] == 0).all()
        ids = check_batch({k: v[:n] for k, v in features.items()}, label[:n], lengths, labels)
        seen += ids
        width = features["input_ids"].shape[1]
        assert width == min(b for b in bounds if b >= lengths[ids].max())
        assert (features["attention_mask"][:, lengths[ids].max():] == 0).all()  # what was kept beyond is padding
    assert sorted(seen) == list(range(len(lengths)))
    assert shapes == {(8, bound) for bound in bounds}  # one shape per bucket, the partial batches padded


def test_unshuffled_bucketed_dataset_is_the_same_every_time(examples) -> None:
    pattern, lengths, labels = examples
    dataset = make_dataset([pattern], FEATURE_SPEC, batch_size=8, max_seq_length=MAX_SEQ_LENGTH,
                           shuffle_seed=None, bucketing=True)
    first, second = batches_of(dataset), batches_of(dataset)
    assert [f["input_ids"].tolist() for f, _ in first] == [f["input_ids"].tolist() for f, _ in second]


@pytest.mark.parametrize("bucketing", [True, False])
def test_training_and_eval_datasets_run_without_tf_data_autotuning(examples, bucketing) -> None:
    # An autotuned iterator's destructor waits for the tuner's next wake-up (up to the epoch's own length).
    pattern, _, _ = examples
    dataset = make_dataset([pattern], FEATURE_SPEC, 8, MAX_SEQ_LENGTH, shuffle_seed=1, bucketing=bucketing)
    assert dataset.options().autotune.enabled is False


def test_model_inputs_are_cut_to_the_longest_example_of_the_batch() -> None:
    padded = tf.constant([[101, 7, 102, 0, 0, 0], [101, 7, 8, 9, 102, 0]], tf.int64)
    features = {"input_ids": padded, "attention_mask": tf.cast(padded > 0, tf.int64),
                "token_type_ids": tf.zeros_like(padded), "length": tf.constant([3, 5], tf.int64), "label": [0, 1]}
    inputs = model_inputs(features)
    assert sorted(inputs) == ["attention_mask", "input_ids", "token_type_ids"]
    assert inputs["input_ids"].numpy().tolist() == [[101, 7, 102, 0, 0], [101, 7, 8, 9, 102]]
    assert inputs["attention_mask"].shape == (2, 5)


def test_missing_files_are_an_error_naming_the_pattern(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        make_dataset([str(tmp_path / "nothing-here*.gz")], FEATURE_SPEC, 8, MAX_SEQ_LENGTH, None, True)


# --- train ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """`train` for 2 epochs on 40 train / 16 eval examples, with a tiny BERT: (model, history, log_dir, steps/epoch)."""
    from modules.trainer import train
    from modules.config import TrainingConfig

    root = tmp_path_factory.mktemp("train")
    model_dir = write_tiny_bert(root / "tiny_bert")
    rng = np.random.default_rng(1)
    train_lengths = rng.integers(5, MAX_SEQ_LENGTH + 1, 40)
    train_files = write_transformed(str(root / "train"), train_lengths.tolist(), rng.integers(0, 2, 40).tolist())
    eval_files = write_transformed(str(root / "eval"), rng.integers(5, 33, 16).tolist(), [0, 1] * 8)
    config = TrainingConfig(task="mrpc", model=model_dir, batch_size=8, epochs=2, max_seq_length=MAX_SEQ_LENGTH,
                            bottleneck_size=8, learning_rate=1e-3)
    log_dir = str(root / "logs")
    model, history = train(config, [train_files], [eval_files], FEATURE_SPEC, log_dir)
    steps_per_epoch = -(-int((train_lengths <= 16).sum()) // 8) + -(-int((train_lengths > 16).sum()) // 8)
    return model, history, log_dir, steps_per_epoch


def test_train_returns_one_record_per_epoch_with_loss_eval_metrics_and_speed(trained) -> None:
    _, history, _, _ = trained
    assert [record["epoch"] for record in history] == [1, 2]
    for record in history:
        assert set(record) == {"epoch", "loss", "examples_per_second", "eval_f1", "eval_accuracy"}
        assert np.isfinite(record["loss"]) and record["loss"] > 0
        assert record["examples_per_second"] > 0
        assert 0.0 <= record["eval_f1"] <= 1.0 and 0.0 <= record["eval_accuracy"] <= 1.0


def test_train_runs_in_graph_mode_with_one_step_function_for_every_batch_length(trained) -> None:
    model, _, _, steps_per_epoch = trained
    assert not model.run_eagerly
    assert isinstance(model.train_function, tf.types.experimental.GenericFunction)
    # One step function for every batch length: traced once, plus once more because the first trace creates the
    # optimizer's slot variables; never per bucket length (the input signature leaves the length open).
    assert model.train_function.experimental_get_tracing_count() <= 2
    inputs = [line for line in model.train_function.pretty_printed_concrete_signatures().splitlines() if "IteratorSpec" in line]
    assert inputs and all("'input_ids': TensorSpec(shape=(None, None), dtype=tf.int64" in line for line in inputs)
    # 2 epochs of steps_per_epoch batches. Observed: `iterations` gains one more count at the end of the first
    # epoch (the dataset's cardinality is unknown, so Keras runs a step that finds the iterator exhausted).
    assert 2 * steps_per_epoch <= model.optimizer.iterations.numpy() <= 2 * steps_per_epoch + 1


def test_train_leaves_the_frozen_backbone_unchanged(trained) -> None:
    from modules.backbone import weights_fingerprint

    model, _, _, _ = trained
    assert weights_fingerprint(model.frozen_variables()) == model.backbone_fingerprint


def test_train_writes_tensorboard_events_with_the_per_epoch_records(trained) -> None:
    _, history, log_dir, _ = trained
    assert glob.glob(os.path.join(log_dir, "train", "events.out.tfevents.*"))  # Keras' TensorBoard callback
    glue_events = glob.glob(os.path.join(log_dir, "glue", "events.out.tfevents.*"))
    assert glue_events
    scalars: Dict[Tuple[str, int], float] = {}
    for path in glue_events:
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                scalars[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
    for record in history:
        for key in ("loss", "examples_per_second", "eval_f1", "eval_accuracy"):
            assert scalars[(key, record["epoch"])] == pytest.approx(record[key], rel=1e-6)


def test_mixed_bfloat16_trains_in_bfloat16_and_exports_the_same_weights_in_float32(tmp_path) -> None:
    import tf_keras as keras

    from modules.glue import get_task
    from modules.trainer import float32_copy, train
    from modules.config import TrainingConfig

    rng = np.random.default_rng(2)
    train_files = write_transformed(str(tmp_path / "train"), rng.integers(5, 33, 16).tolist(), [0, 1] * 8)
    config = TrainingConfig(task="mrpc", model=write_tiny_bert(tmp_path / "tiny_bert"), batch_size=8, epochs=1,
                            max_seq_length=MAX_SEQ_LENGTH, bottleneck_size=8, learning_rate=1e-3,
                            precision="mixed_bfloat16", xla="off")  # XLA: its own test below
    model, history = train(config, [train_files], [train_files], FEATURE_SPEC, str(tmp_path / "logs"))
    assert keras.mixed_precision.global_policy().name == "float32"  # restored: later models are float32
    assert np.isfinite(history[0]["loss"])
    assert model.bert.encoder.layer[0].attention.self_attention.query.compute_dtype == "bfloat16"
    assert all(v.dtype == tf.float32 for v in model.variables)
    exported = float32_copy(model, config, get_task("mrpc"))
    assert exported.bert.encoder.layer[0].attention.self_attention.query.compute_dtype == "float32"
    for a, b in zip(model.get_weights(), exported.get_weights()):
        np.testing.assert_array_equal(a, b)
    features, _ = next(iter(make_dataset([train_files], FEATURE_SPEC, 8, MAX_SEQ_LENGTH, None, True)))
    bf16_logits, f32_logits = model(features), exported(features)
    assert bf16_logits.dtype == f32_logits.dtype == tf.float32
    np.testing.assert_allclose(bf16_logits.numpy(), f32_logits.numpy(), atol=0.05)


def train_tiny(tmp_path, name: str, **overrides):
    """One epoch of the tiny BERT on 16 random examples (the same data for every `name`)."""
    from modules.config import TrainingConfig
    from modules.trainer import train

    rng = np.random.default_rng(4)
    train_files = write_transformed(str(tmp_path / f"train_{name}"), rng.integers(5, 33, 16).tolist(), [0, 1] * 8)
    config = TrainingConfig(task="mrpc", model=write_tiny_bert(tmp_path / "tiny_bert"), batch_size=8, epochs=1,
                            max_seq_length=MAX_SEQ_LENGTH, bottleneck_size=8, learning_rate=1e-3, **overrides)
    return train(config, [train_files], [train_files], FEATURE_SPEC, str(tmp_path / f"logs_{name}"))


def test_bfloat16_matmul_trains_a_float32_model_reproducibly_and_then_restores_tensorflow(tmp_path) -> None:
    from modules.trainer import INFER_LIST_REMOVE

    (model, history), (again, history_again) = [train_tiny(tmp_path, f"run{i}", precision="bfloat16_matmul")
                                                for i in range(2)]
    assert model.compute_dtype == "float32" and all(v.dtype == tf.float32 for v in model.variables)
    assert [r["loss"] for r in history] == [r["loss"] for r in history_again]
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not tf.config.optimizer.get_experimental_options().get("auto_mixed_precision_onednn_bfloat16", False)
    assert INFER_LIST_REMOVE not in os.environ


@pytest.mark.skipif(not __import__("modules.trainer").trainer.cpu_has_native_bfloat16(),
                    reason="the CPU has no native bfloat16 (avx512_bf16 / amx_bf16): TensorFlow may leave the step "
                           "float32")
def test_bfloat16_matmul_multiplies_in_bfloat16_where_the_cpu_has_it(tmp_path) -> None:
    (f32, f32_history), (bf16, bf16_history) = (train_tiny(tmp_path, "f32", precision="float32"),
                                                train_tiny(tmp_path, "bf16", precision="bfloat16_matmul"))
    differences = [np.abs(a - b).max() for a, b in zip(f32.get_weights(), bf16.get_weights())]
    assert max(differences) > 0  # rewritten: bfloat16 products round differently
    assert bf16_history[0]["loss"] == pytest.approx(f32_history[0]["loss"], abs=1e-2)


def test_bfloat16_matmul_under_xla_casts_in_the_dense_layers_only_while_the_context_lasts() -> None:
    # XLA does not run grappler's rewrite: the Dense layers cast to bfloat16 themselves, and only inside the context.
    import tf_keras as keras
    from modules.trainer import bfloat16_matmuls

    inputs = keras.Input([None, 8])
    model = keras.Model(inputs, keras.layers.Dense(4, activation="relu")(inputs))
    dense = model.layers[-1]
    x = tf.random.stateless_normal([2, 5, 8], seed=[1, 2])
    bf16 = tf.bfloat16
    expected = tf.nn.relu(tf.cast(tf.tensordot(tf.cast(x, bf16), tf.cast(dense.kernel, bf16), 1), tf.float32)
                          + dense.bias)
    float32 = model(x)
    model.jit_compile = True
    with bfloat16_matmuls(True, model):
        with bfloat16_matmuls(True, model):  # a nested use (a caller's and fit's) ends with the outer one
            pass
        products = model(x)
        assert "call" in vars(dense)
    assert "call" not in vars(dense)
    np.testing.assert_array_equal(products.numpy(), expected.numpy())
    assert not np.array_equal(products.numpy(), float32.numpy())
    np.testing.assert_array_equal(model(x).numpy(), float32.numpy())
    assert not tf.config.optimizer.get_experimental_options().get("auto_mixed_precision_onednn_bfloat16", False)


def test_bfloat16_matmul_under_xla_trains_reproducibly_and_restores_the_layers(tmp_path) -> None:
    (model, history), (again, history_again) = [
        train_tiny(tmp_path, f"xla{i}", precision="bfloat16_matmul", xla="on") for i in range(2)]
    assert model.jit_compile and model.compute_dtype == "float32"
    assert [r["loss"] for r in history] == [r["loss"] for r in history_again]
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not any("call" in vars(layer) for layer in model.submodules)


@pytest.mark.parametrize("min_steps,compiled", [(2, True), (3, False)])
def test_auto_xla_counts_the_runs_train_steps(tmp_path, monkeypatch, min_steps: int, compiled: bool) -> None:
    # 16 examples, batch 8, 1 epoch: 2 steps, so XLA_MIN_STEPS 2 compiles the bfloat16_matmul step and 3 does not.
    from modules import trainer

    monkeypatch.setattr(trainer, "XLA_MIN_STEPS", min_steps)
    model, _ = train_tiny(tmp_path, f"auto{min_steps}", precision="bfloat16_matmul", xla="auto")
    assert model.jit_compile is compiled


def test_xla_training_is_compiled_reproducible_and_leaves_the_backbone_unchanged(tmp_path) -> None:
    # XLA ignores the seeds of stateful random ops: without the seeded generator, dropout differs run to run.
    from modules.backbone import weights_fingerprint
    from modules.trainer import train
    from modules.config import TrainingConfig

    rng = np.random.default_rng(3)  # one batch shape (XLA compiles each): 8 examples of one bucket, batch 8
    train_files = write_transformed(str(tmp_path / "train"), rng.integers(5, 17, 8).tolist(), [0, 1] * 4)
    config = TrainingConfig(task="mrpc", model=write_tiny_bert(tmp_path / "tiny_bert"), batch_size=8, epochs=2,
                            max_seq_length=MAX_SEQ_LENGTH, bottleneck_size=8, learning_rate=1e-3, xla="on")
    runs = [train(config, [train_files], [train_files], FEATURE_SPEC, str(tmp_path / f"logs{i}")) for i in range(2)]
    (model, history), (again, history_again) = runs
    assert model.jit_compile
    assert all(np.isfinite(record["loss"]) for record in history) and len(history) == 2
    assert [r["loss"] for r in history] == [r["loss"] for r in history_again]
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert len(model.get_weights()) == len(build_float32(config).get_weights())  # no generator state in the weights
    assert weights_fingerprint(model.frozen_variables()) == model.backbone_fingerprint


def build_float32(config):
    from modules.trainer import build_model

    return build_model(config, config.task_description(), precision="float32")


def test_unknown_precision_is_refused_naming_the_flag() -> None:
    from modules.config import TrainingConfig

    with pytest.raises(ValueError, match="--precision must be one of float32, mixed_bfloat16, bfloat16_matmul"):
        TrainingConfig(precision="float16")
