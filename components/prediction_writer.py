"""PredictionWriter: BulkInferrer's answers for the test splits, as files people read, published beside the model.

BulkInferrer (TFX's own component) runs the blessed model's bulk_inference signature over every test split and
writes, per split, the test examples with the model's outputs added (its `output_examples`, not PredictionLogs:
the logs of all splits land in one file, and MNLI's matched and mismatched test sets share their indices). This
component turns them into the files of `modules.predictions` (GLUE: the server's MRPC.tsv, MNLI-m.tsv, ...;
a user's task: test.csv, test.jsonl, ...) and publishes them to
    <predictions_dir>/<task>/<version>/    <version>: the serving version the Pusher pushed the model to,
so a rollback of serving versions keeps models and predictions paired. Publishing is atomic on a local file
system (a complete `.tmp-*` sibling renamed into place, as the AtomicPusher does); a model that was not pushed
(not blessed) publishes nothing and says so. Every test row gets exactly one prediction: the counts and ids are
checked against ExampleGen's split before anything is written.
"""

import collections
import os
import uuid
from typing import Dict, List

import tensorflow as tf
from absl import logging
from tfx import v1 as tfx
from tfx.dsl.io import fileio
from tfx.types import artifact_utils

from components.pusher import TEMP_PREFIX, copy_tree, is_remote
from modules.glue import FEATURE_INDEX, GlueTask
from modules.metrics import OUTPUT_LABEL, OUTPUT_PROBABILITIES, OUTPUT_SCORE
from modules.predictions import PredictionRow, file_name, format_predictions
from modules.serving import numeric_outputs

# The output is an InferenceResult artifact (a type every orchestrator knows; Kubeflow's recovers a custom type
# only from an importable one-dot class path) holding the prediction files. Its custom properties: the directory
# published to ("" if none), and one line saying what was written or why nothing was (the run summary prints it).
PUBLISHED_KEY, SUMMARY_KEY = "published_to", "summary"


def predictions_base(predictions_dir: str, task: GlueTask) -> str:
    return os.path.join(predictions_dir, task.name)


def _records(split_uri: str) -> List[tf.train.Example]:
    files = fileio.glob(os.path.join(split_uri, "*"))
    return [tf.train.Example.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(sorted(files), compression_type="GZIP")]


def _index(example: tf.train.Example) -> int:
    return example.features.feature[FEATURE_INDEX].int64_list.value[0]


def prediction_rows(task: GlueTask, examples: List[tf.train.Example], where: str) -> List[PredictionRow]:
    """One row per example that BulkInferrer answered; an example without the model's outputs is an error."""
    rows, needed = [], numeric_outputs(task)
    for example in examples:
        features = example.features.feature
        if any(name not in features for name in needed):
            raise ValueError(f"{where}: example {_index(example)} has no {'/'.join(needed)} (is this BulkInferrer's "
                             f"output for task {task.name}?).")
        if task.is_regression:
            rows.append(PredictionRow(_index(example), score=features[OUTPUT_SCORE].float_list.value[0]))
        else:
            rows.append(PredictionRow(_index(example), label_id=features[OUTPUT_LABEL].int64_list.value[0],
                                      probabilities=tuple(features[OUTPUT_PROBABILITIES].float_list.value)))
    return rows


def check_complete(split: str, test_indices: List[int], rows: List[PredictionRow]) -> None:
    """Exactly one prediction per test row: the same multiset of ids as ExampleGen's split."""
    expected, got = collections.Counter(test_indices), collections.Counter(row.index for row in rows)
    if expected != got:
        missing, extra = sorted((expected - got).elements()), sorted((got - expected).elements())
        raise RuntimeError(f"Split {split}: {len(rows)} predictions for {len(test_indices)} test rows "
                           f"(ids without a prediction: {missing[:5]}; unexpected: {extra[:5]}).")


def publish(source: str, base_directory: str, version: str) -> str:
    """Copies the files in `source` to <base_directory>/<version>/: on a local file system readers see all of them or
    none (a complete sibling renamed into place); on an object store file by file."""
    target = os.path.join(base_directory, version)
    fileio.makedirs(base_directory)
    if is_remote(base_directory):  # object stores have no rename: files are small, copied one by one
        if fileio.exists(target):
            fileio.rmtree(target)
        copy_tree(source, target)
        return target
    temp = os.path.join(base_directory, f"{TEMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}")
    copy_tree(source, temp)
    if os.path.isdir(target):  # the same model pushed again (an unchanged rerun): the test data may have changed
        old = f"{temp}-old"
        os.rename(target, old)
        os.rename(temp, target)
        fileio.rmtree(old)
    else:
        os.rename(temp, target)
    return target


@tfx.dsl.components.component
def PredictionWriter(
    examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    inference: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    pushed_model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.PushedModel],
    predictions: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.InferenceResult],
    task_spec: tfx.dsl.components.Parameter[str],
    predictions_dir: tfx.dsl.components.Parameter[str],
) -> None:
    """Writes BulkInferrer's answers as files and publishes them beside the pushed model version (module doc)."""
    task = GlueTask.from_json(task_spec)
    predictions.set_string_custom_property(PUBLISHED_KEY, "")
    if not pushed_model.get_int_custom_property("pushed"):
        predictions.set_string_custom_property(SUMMARY_KEY, "none (the model was not blessed)")
        logging.warning("The model was not blessed, so it was not pushed: no predictions for the test splits.")
        return
    files: Dict[str, int] = {}
    for split in artifact_utils.decode_split_names(inference.split_names):
        split_uri = artifact_utils.get_split_uri([inference], split)
        rows = prediction_rows(task, _records(split_uri), split_uri)
        check_complete(split, [_index(e) for e in _records(artifact_utils.get_split_uri([examples], split))], rows)
        if not rows:
            logging.warning("Split %s has no rows: no %s written.", split, file_name(task, split))
            continue
        with fileio.open(os.path.join(predictions.uri, file_name(task, split)), "w") as f:
            f.write(format_predictions(task, split, rows))
        files[file_name(task, split)] = len(rows)
    if not files:
        predictions.set_string_custom_property(SUMMARY_KEY, "none (the test files hold no rows)")
        logging.warning("No test rows to predict for task %s.", task.name)
        return
    version = pushed_model.get_string_custom_property("pushed_version")
    target = publish(predictions.uri, predictions_base(predictions_dir, task), version)
    written = ", ".join(f"{name} {count} rows" for name, count in files.items())
    predictions.set_string_custom_property(PUBLISHED_KEY, target)
    predictions.set_string_custom_property(SUMMARY_KEY, f"{target} ({written})")
    logging.info("Predictions published to %s: %s.", target, written)
