"""SearchTuner: TFX's Tuner component (modules/tuner.py's tuner_fn) with an executor that records every trial.

TFX's own Tuner executor writes the best hyperparameters and, per completed trial, its id, score and values.
This one writes, to the same two artifacts:
  best_hyperparameters/best_hyperparameters.txt  KerasTuner's HyperParameters config (what the Trainer reads as
      fn_args.hyperparameters) plus "search": the search's summary, which the Trainer writes into
      adapter_config.json;
  tuner_results/tuner_results.json  TFX's format (completed trials, best first: trial_id, score, values);
  tuner_results/trials.json         every finished trial's settings, score and wall time, and per fold (one
      without --tune_folds) its holdout metric per epoch and epochs run (stopped early or not); this run's
      trials and those a killed run finished before;
  tuner_results/holdout.json        the holdout: seed, fraction, per fold its examples per stratum and digest;
  tuner_results/tensorboard/trial_<id>/  each trial's TensorBoard events (holdout metrics per epoch; per fold
      in fold_<k>/);
and the one-line summary as the TunerResults artifact's "summary" custom property (the run summary prints it).
"""
import json
import os
from typing import Any, Dict, List

import tensorflow as tf
from absl import logging
from tfx import types
from tfx import v1 as tfx
from tfx.components.tuner import executor as tuner_executor
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils, standard_component_specs

from components.pusher import copy_tree
from modules.tuner import HOLDOUT_FILE, AdapterTuner, describe_search, search_summary

BEST_HYPERPARAMETERS_FILE = "best_hyperparameters.txt"  # TFX's name: the Trainer reads the directory's one file
TUNER_RESULTS_FILE, TRIALS_FILE = "tuner_results.json", "trials.json"
TENSORBOARD_DIR = "tensorboard"
SUMMARY_KEY = "summary"


def _write_json(path: str, value: Any) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(value, f, indent=2, default=float)


def publish_search(tuner: AdapterTuner, output_dict: Dict[str, List[types.Artifact]]) -> Dict[str, Any]:
    """Writes the best hyperparameters and every trial's record to the Tuner's artifacts; returns the summary."""
    summary = search_summary(tuner)
    best = tuner.oracle.get_best_trials(1)[0].hyperparameters.get_config()
    best_uri = artifact_utils.get_single_uri(output_dict[standard_component_specs.BEST_HYPERPARAMETERS_KEY])
    _write_json(os.path.join(best_uri, BEST_HYPERPARAMETERS_FILE), {**best, "search": summary})
    results = tuner.oracle.get_best_trials(len(tuner.oracle.trials))
    results_artifact = output_dict[standard_component_specs.TUNER_RESULTS_KEY][0]
    _write_json(os.path.join(results_artifact.uri, TUNER_RESULTS_FILE),
                [{"trial_id": t.trial_id, "score": t.score, **t.hyperparameters.values} for t in results
                 if t.status == "COMPLETED"])
    records = tuner.trial_records()
    _write_json(os.path.join(results_artifact.uri, TRIALS_FILE), records)
    _write_json(os.path.join(results_artifact.uri, HOLDOUT_FILE), summary["holdout"])
    for record in records:
        trial_logs = os.path.join(tuner.project_dir, f"trial_{record['trial_id']}", "logs")
        copy_tree(trial_logs, os.path.join(results_artifact.uri, TENSORBOARD_DIR, f"trial_{record['trial_id']}"))
    line = describe_search(summary)
    results_artifact.set_string_custom_property(SUMMARY_KEY, line)
    logging.info("tuning: %s", line)
    return summary


class Executor(tuner_executor.Executor):
    """TFX's Tuner executor, publishing every trial's record (publish_search) instead of the scores alone."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        if tuner_executor.get_tune_args(exec_properties):
            raise ValueError("SearchTuner runs its trials one after another: tune_args (parallel trials) are not "
                             "supported (kubeflow/README.md says how to scale a search out).")
        tuner = tuner_executor.search(input_dict, exec_properties, self._get_tmp_dir())
        publish_search(tuner, output_dict)


class SearchTuner(tfx.components.Tuner):
    """tfx.components.Tuner with components.tuner.Executor."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)
