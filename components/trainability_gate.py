"""TrainabilityGate: stops the run before training when the data cannot train, or fairly evaluate, a useful model.

DataGate checks every split against the schema alone, value by value: a training split in which every row has
the same label passes it, and so would a dev set copied into train. This gate checks the splits as a whole and
against each other, and stops the run with one line per problem naming the split, the feature, the numbers and
the flag that sets the threshold (defaults: pipeline.configs.DataChecks):
  - every class of the task has training examples, at least --min_class_share of an even share;
  - the label distribution of each eval split is close to train's: TFDV's skew comparator on the label, set in
    the schema by GlueSchemaGen (L-infinity distance for classes: --max_label_linf; Jensen-Shannon divergence
    for a score: --max_label_js);
  - every labeled split holds at least one batch (--batch_size);
  - at most --max_pair_overlap of an eval split's examples have a (sentence1, sentence2) pair that is also in
    train (leakage: the model would be scored on examples it was trained on).
"""

import collections
import os
from typing import Callable, Dict, Iterable, Iterator, List, Tuple

import tensorflow as tf
import tensorflow_data_validation as tfdv
from absl import logging
from tensorflow_data_validation.utils import stats_util
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2
from tfx import v1 as tfx
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.types import artifact_utils
from tfx.utils import io_utils

from modules.glue import FEATURE_LABEL, FEATURE_TEXT_A, FEATURE_TEXT_B, GlueTask

Pair = Tuple[bytes, bytes]
Statistics = statistics_pb2.DatasetFeatureStatisticsList

# The flag that sets each TFDV comparator's threshold (through GlueSchemaGen's schema).
SKEW_FLAGS = {
    anomalies_pb2.DriftSkewInfo.Measurement.L_INFTY: ("L-infinity distance", "--max_label_linf"),
    anomalies_pb2.DriftSkewInfo.Measurement.JENSEN_SHANNON_DIVERGENCE: ("Jensen-Shannon divergence", "--max_label_js"),
}
SKEW_ANOMALIES = (anomalies_pb2.AnomalyInfo.COMPARATOR_L_INFTY_HIGH,
                  anomalies_pb2.AnomalyInfo.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH)
_PARSE_BATCH = 1024  # examples parsed at once when reading the text pairs
_SHOWN_CHARS = 80  # of a leaked sentence, in the message


def _label_statistics(statistics: Statistics) -> statistics_pb2.FeatureNameStatistics:
    return stats_util.get_feature_stats(statistics.datasets[0], tfdv.FeaturePath([FEATURE_LABEL]))


def class_counts(statistics: Statistics, split: str) -> Dict[int, int]:
    """Examples per class id, from the label's rank histogram.

    StatisticsGen computes it only for a categorical label, i.e. when given GlueSchemaGen's schema; without it,
    TFDV would also measure an L-infinity distance of 0 between any two label distributions.
    """
    buckets = _label_statistics(statistics).string_stats.rank_histogram.buckets
    if not buckets:
        raise ValueError(f"The statistics of split '{split}' have no class counts for '{FEATURE_LABEL}': "
                         "StatisticsGen needs GlueSchemaGen's schema, which makes the label categorical.")
    return {int(bucket.label): int(bucket.sample_count) for bucket in buckets}


def _shares(task: GlueTask, counts: Dict[int, int]) -> str:
    total = sum(counts.values())
    return ", ".join(f"{name} {counts.get(i, 0) / total:.1%}" for i, name in enumerate(task.label_names))


def class_share_problems(task: GlueTask, counts: Dict[int, int], min_class_share: float) -> List[str]:
    """A line for every class with no training example, or fewer than min_class_share of an even share."""
    total = sum(counts.values())
    floor = min_class_share / task.num_labels
    problems = []
    for class_id, name in enumerate(task.label_names):
        count = counts.get(class_id, 0)
        if count == 0 or count < floor * total:
            problems.append(
                f"split 'train', feature '{FEATURE_LABEL}': class '{name}' (id {class_id}) has {count} of {total} "
                f"examples ({count / total:.2%}); every class needs at least one and {floor:.2%} "
                f"(--min_class_share {min_class_share:g} of an even share of 1/{task.num_labels}).")
    return problems


def label_skew(train: Statistics, evaluation: Statistics,
               schema: schema_pb2.Schema) -> Tuple[anomalies_pb2.DriftSkewInfo.Measurement, bool]:
    """TFDV's comparison of the label distributions of train and an eval split, by the schema's skew comparator:
    the measurement, and whether TFDV found it above the threshold."""
    anomalies = tfdv.validate_statistics(train, schema, serving_statistics=evaluation)
    measurements = [m for info in anomalies.drift_skew_info if list(info.path.step) == [FEATURE_LABEL]
                    for m in info.skew_measurements]
    if len(measurements) != 1:
        raise ValueError(f"The schema has no skew comparator for '{FEATURE_LABEL}' "
                         "(GlueSchemaGen writes one: components/glue_schema_gen.py).")
    reasons = anomalies.anomaly_info[FEATURE_LABEL].reason if FEATURE_LABEL in anomalies.anomaly_info else []
    return measurements[0], any(reason.type in SKEW_ANOMALIES for reason in reasons)


def pair_overlaps(train_pairs: Iterable[Pair], eval_pairs: Dict[str, Iterable[Pair]]) -> Dict[str, Tuple[int, int, List[Pair]]]:
    """Per eval split: how many of its examples have a (sentence1, sentence2) pair that is also in train, of how
    many, and those pairs sorted. Holds the eval pairs in memory and reads train once."""
    eval_counts = {split: collections.Counter(pairs) for split, pairs in eval_pairs.items()}
    wanted = set().union(*eval_counts.values())
    in_train = {pair for pair in train_pairs if pair in wanted}
    return {split: (sum(n for pair, n in counts.items() if pair in in_train), sum(counts.values()),
                    sorted(in_train & counts.keys()))
            for split, counts in eval_counts.items()}


def check_data(task: GlueTask, statistics: Dict[str, Statistics], schema: schema_pb2.Schema,
               text_pairs: Callable[[str], Iterable[Pair]], batch_size: int, min_class_share: float,
               max_pair_overlap: float) -> Tuple[List[str], List[str]]:
    """Every check on the labeled splits ("train" and task.eval_splits).

    Returns (problems, measured): one line per failed check, and what each check measured.
    """
    eval_splits = list(task.eval_splits)
    problems, measured = [], []
    for split in ["train", *eval_splits]:
        size = statistics[split].datasets[0].num_examples
        measured.append(f"split '{split}': {size} examples")
        if size < batch_size:
            problems.append(f"split '{split}': {size} examples, fewer than one batch (--batch_size {batch_size}).")

    if not task.is_regression:
        counts = {split: class_counts(statistics[split], split) for split in ["train", *eval_splits]}
        problems += class_share_problems(task, counts["train"], min_class_share)
        measured.append(f"split 'train', feature '{FEATURE_LABEL}': classes {_shares(task, counts['train'])}")
    for split in eval_splits:
        measurement, too_far = label_skew(statistics["train"], statistics[split], schema)
        name, flag = SKEW_FLAGS[measurement.type]
        if task.is_regression:
            train_mean, eval_mean = (_label_statistics(statistics[s]).num_stats.mean for s in ("train", split))
            detail = f"mean score train {train_mean:.2f}, {split} {eval_mean:.2f}"
        else:
            detail = f"train {_shares(task, counts['train'])}; {split} {_shares(task, counts[split])}"
        line = (f"split '{split}' against 'train', feature '{FEATURE_LABEL}': {name} {measurement.value:.4f}, "
                f"{'above' if too_far else 'within'} {measurement.threshold:g} ({flag}); {detail}")
        measured.append(line)
        if too_far:
            problems.append(line + ".")

    overlaps = pair_overlaps(text_pairs("train"), {split: text_pairs(split) for split in eval_splits})
    for split, (shared, total, pairs) in overlaps.items():
        share = shared / total
        line = (f"split '{split}', features '{FEATURE_TEXT_A}', '{FEATURE_TEXT_B}': {shared} of {total} examples "
                f"({share:.2%}) have a pair that is also in split 'train'")
        measured.append(line)
        if share > max_pair_overlap:
            first = pairs[0][0].decode("utf-8", "replace")[:_SHOWN_CHARS]
            problems.append(f"{line}, above {max_pair_overlap:.2%} (--max_pair_overlap {max_pair_overlap:g}); "
                            f"the first has {FEATURE_TEXT_A} {first!r}.")
    return problems, measured


def read_text_pairs(examples: tfx.types.standard_artifacts.Examples, split: str) -> Iterator[Pair]:
    """(sentence1, sentence2) of every example of one split of an Examples artifact (gzipped TFRecords)."""
    files = tf.io.gfile.glob(os.path.join(artifact_utils.get_split_uri([examples], split), "*"))
    spec = {name: tf.io.FixedLenFeature([], tf.string) for name in (FEATURE_TEXT_A, FEATURE_TEXT_B)}
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(_PARSE_BATCH)
    for batch in records.map(lambda serialized: tf.io.parse_example(serialized, spec)).as_numpy_iterator():
        yield from zip(batch[FEATURE_TEXT_A].tolist(), batch[FEATURE_TEXT_B].tolist())


@tfx.dsl.components.component
def TrainabilityGate(statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
                     schema: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Schema],
                     examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
                     task_spec: tfx.dsl.components.Parameter[str], batch_size: tfx.dsl.components.Parameter[int],
                     min_class_share: tfx.dsl.components.Parameter[float],
                     max_pair_overlap: tfx.dsl.components.Parameter[float]) -> None:
    """task_spec: the task description as JSON (GlueTask.to_json)."""
    glue_task = GlueTask.from_json(task_spec)
    split_statistics = {split: stats_artifact_utils.load_statistics(statistics, split).proto()
                        for split in ["train", *glue_task.eval_splits]}
    problems, measured = check_data(
        glue_task, split_statistics, io_utils.SchemaReader().read(io_utils.get_only_uri_in_dir(schema.uri)),
        lambda split: read_text_pairs(examples, split), batch_size, min_class_share, max_pair_overlap)
    if problems:
        raise RuntimeError("The data cannot train a useful model; stopping before training:\n  " + "\n  ".join(problems))
    logging.info("Data checks passed:\n  %s", "\n  ".join(measured))
