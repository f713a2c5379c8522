"""TFX Tuner module: chooses the learning rate, bottleneck size and epochs per task, as Houlsby et al. do.

`tuner_fn` is what the Tuner component calls (components/tuner.py runs it and publishes the search). Every
trial trains with modules/trainer.py's `train` (same datasets, model, optimizer, schedule and seed as the
Trainer) on train minus a holdout, and is scored on that holdout: a part of train carved per class, seeded by
--seed, never the eval split that decides blessing. With --tune_folds K the holdouts are K folds that partition
train (K-fold cross-validation): a trial trains K times and scores the mean, so every example scores it, which a
small dataset's single holdout cannot afford. The Trainer then trains on all of train with the best
trial's settings, so the eval score stays an unbiased estimate.

A trial's score is the holdout's main metric after its last epoch: the model the Trainer reproduces with the
same settings (the learning-rate schedule warms up and decays over all the epochs, so the best epoch of a
longer run is not a model a shorter run gives). With patience, a trial stops once the holdout metric has not
beaten its best for that many epochs; its score is then its last epoch's.

Hyperband treats the epochs as its budget: each trial trains from scratch for its `tuner/epochs` (KerasTuner's
own Tuner would continue an earlier trial's weights, whose schedule was made for fewer epochs).

The search lives in a stable directory, <search_root>/<key>, the key a digest of the training data (not of
the files holding it) and the Tuner's settings: a killed search resumes there (KerasTuner reloads its oracle and
reruns the trial that was running), and a different search never reuses it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import random
import time
from typing import Any, Dict, List, Tuple

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import keras_tuner
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from absl import logging
from keras_tuner.engine.base_tuner import BaseTuner
from keras_tuner.engine.trial import Trial, TrialStatus
from tfx.components.trainer.fn_args_utils import FnArgs
from tfx.components.tuner.component import TunerFnResult

from modules.config import TUNED_FIELDS, TrainingConfig, TuningConfig, tuned_settings
from modules.glue import FEATURE_LABEL, GlueTask
from modules.preprocessing import INPUT_IDS, TOKEN_TYPE_IDS
from modules.trainer import RowFilter, read_transformed, train

HOLDOUT = "holdout"
SEARCH_ROOT_KEY = "search_root"  # the Tuner's custom_config: where the searches' directories are
TUNING_KEY = "tuning"  # the Tuner's custom_config: TuningConfig.to_dict()
RECORD_FILE = "record.json"  # in each trial's directory: settings, holdout metric per epoch, wall time
HOLDOUT_FILE = "holdout.json"  # in the search directory: the holdout's rows per stratum and their digest
HASH_SALT = 0x686F6C646F7574  # "holdout": the second half of the seeded hash key
# Above this standard error (points of accuracy; 100 examples) the Tuner warns that its holdout is too small.
NOISY_HOLDOUT_POINTS = 5.0


def example_keys(features: Dict[str, tf.Tensor], seed: int) -> tf.Tensor:
    """A seeded 63-bit hash of each example's token ids and segments: the same for the same text wherever it
    is in the files (so the holdout does not depend on the order Transform wrote them in), and for duplicates."""
    tokens = tf.concat([features[INPUT_IDS], features[TOKEN_TYPE_IDS]], axis=-1)
    text = tf.strings.reduce_join(tf.strings.as_string(tokens), axis=-1, separator=" ")
    return tf.strings.to_hash_bucket_strong(text, 2 ** 63 - 1, key=[seed, HASH_SALT])


def strata(labels: np.ndarray, task: GlueTask) -> np.ndarray:
    """The stratum of each example: its class, or for regression its score rounded to an integer."""
    return np.rint(labels).astype(np.int64) if task.is_regression else labels.astype(np.int64)


def fold_start(fold: int, fraction: float, n: int) -> int:
    """Where fold `fold` starts among a stratum's n distinct examples in hash order (fold 1: where a single
    holdout ends). A stratum of 2 or more gives fold 0 at least one example, a stratum of 1 none."""
    return 0 if fold == 0 or n < 2 else min(n, max(1, round(fold * fraction * n)))


@dataclasses.dataclass(frozen=True)
class Holdout:
    """The part of train that scores the trials: in each stratum, the `fraction` of distinct examples with the
    smallest seeded hashes; fold k of K (fraction 1/K) the next `fraction` after k of them, so the K folds partition
    train. Same data and seed: the same rows; identical examples fall on the same side."""

    seed: int
    fraction: float
    fold: int
    keys: Tuple[int, ...]  # sorted example_keys of the holdout
    counts: Dict[str, Tuple[int, int]]  # stratum -> (holdout examples, training examples left)
    train_digest: str  # of every training example's key and label: the data, whatever files hold it

    @classmethod
    def carve(cls, train_files: List[str], feature_spec: Dict, task: GlueTask, fraction: float, seed: int,
              folds: int = 1) -> List["Holdout"]:
        """Folds 0 to folds - 1 of `fraction` each (one holdout: folds=1), from one read of train."""
        examples = read_transformed(train_files, feature_spec).batch(1024)
        keys, labels = [], []
        for batch in examples:
            keys.append(example_keys(batch, seed).numpy())
            labels.append(batch[FEATURE_LABEL].numpy())
        if not keys:
            raise ValueError(f"No training examples in {train_files}: nothing to carve a holdout from.")
        keys_, labels_ = np.concatenate(keys), np.concatenate(labels)
        strata_ = strata(labels_, task)
        order = np.lexsort((labels_, keys_))
        digest = hashlib.sha256(keys_[order].tobytes() + labels_[order].astype(np.float64).tobytes()).hexdigest()
        per_stratum = []  # (stratum, its examples' keys, their distinct values sorted)
        for stratum in np.unique(strata_):
            stratum_keys = keys_[strata_ == stratum]
            per_stratum.append((stratum, stratum_keys, np.unique(stratum_keys)))
        holdouts = []
        for fold in range(folds):
            chosen, counts = [], {}
            for stratum, stratum_keys, distinct in per_stratum:
                selected = distinct[fold_start(fold, fraction, len(distinct)):
                                    fold_start(fold + 1, fraction, len(distinct))]
                chosen.extend(selected.tolist())
                inside = np.isin(stratum_keys, selected)
                counts[str(int(stratum))] = (int(inside.sum()), int((~inside).sum()))
            if not chosen:
                raise ValueError(f"holdout {fold} of fraction {fraction}: {len(keys_)} training examples leave it "
                                 "empty (a class needs 2 distinct examples to give one): use a larger "
                                 "--holdout_fraction or fewer --tune_folds.")
            holdouts.append(cls(seed=seed, fraction=fraction, fold=fold, keys=tuple(sorted(set(chosen))),
                                counts=counts, train_digest=digest))
        return holdouts

    def row_filters(self) -> Tuple[RowFilter, RowFilter]:
        """(train without the holdout, the holdout): filters for modules.trainer's datasets."""
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(self.keys, tf.int64), tf.ones(len(self.keys), tf.int64)),
            default_value=0)

        def inside(features: Dict[str, tf.Tensor]) -> tf.Tensor:
            return tf.equal(table.lookup(example_keys(features, self.seed)), 1)

        return (lambda features: tf.logical_not(inside(features))), inside

    def digest(self) -> str:
        return hashlib.sha256(",".join(map(str, self.keys)).encode()).hexdigest()

    def examples(self) -> int:
        return sum(h for h, _ in self.counts.values())

    def to_dict(self) -> Dict[str, Any]:
        return {"fold": self.fold, "digest": self.digest(), "holdout_examples": self.examples(),
                "training_examples": sum(t for _, t in self.counts.values()),
                "per_stratum": {k: {"holdout": h, "train": t} for k, (h, t) in self.counts.items()}}


def carve_holdouts(train_files: List[str], feature_spec: Dict, task: GlueTask, tuning: TuningConfig,
                   seed: int) -> List[Holdout]:
    """One holdout of --holdout_fraction, or with --tune_folds K the K folds (each 1/K of every stratum)."""
    fraction = 1 / tuning.folds if tuning.folds > 1 else tuning.holdout_fraction
    return Holdout.carve(train_files, feature_spec, task, fraction, seed, tuning.folds)


def describe_holdouts(holdouts: List[Holdout]) -> Dict[str, Any]:
    """What holdout.json records: seed, fraction, the examples scoring a trial, and each fold's rows."""
    return {"seed": holdouts[0].seed, "fraction": holdouts[0].fraction, "train_digest": holdouts[0].train_digest,
            "holdout_examples": sum(h.examples() for h in holdouts), "folds": [h.to_dict() for h in holdouts]}


def objective_name(task: GlueTask) -> str:
    return f"{HOLDOUT}_{task.main_metric}"


def search_space(tuning: TuningConfig) -> keras_tuner.HyperParameters:
    """The grid, named as the TrainingConfig fields (Hyperband: without epochs, its budget)."""
    space = keras_tuner.HyperParameters()
    space.Choice("learning_rate", list(tuning.learning_rates))
    space.Choice("bottleneck_size", list(tuning.bottleneck_sizes))
    if tuning.strategy != "hyperband":
        space.Choice("epochs", list(tuning.epochs))
    return space


class GridOracle(keras_tuner.Oracle):
    """Every combination of the grid, in order (learning rate, then bottleneck size, then epochs).

    Not KerasTuner's GridSearchOracle: in 1.4.8 it keeps its place in the grid in memory only (not in
    oracle.json), so a reloaded search fails in populate_space (KeyError). This one derives the next combination
    from the trials, which KerasTuner reloads from their own files."""

    def populate_space(self, trial_id: str) -> Dict[str, Any]:
        tried = [trial.hyperparameters.values for trial in self.trials.values()]
        values = next((v for v in grid_values(self.hyperparameters) if v not in tried), None)
        return ({"status": TrialStatus.RUNNING, "values": values} if values
                else {"status": TrialStatus.STOPPED, "values": None})


def grid_values(space: keras_tuner.HyperParameters) -> List[Dict[str, Any]]:
    """Every combination of the space's Choice values, in order."""
    names = [hp.name for hp in space.space]
    return [dict(zip(names, combination)) for combination in itertools.product(*(hp.values for hp in space.space))]


class GridHyperbandOracle(keras_tuner.oracles.HyperbandOracle):
    """KerasTuner's Hyperband over a small discrete grid, which KerasTuner 1.4.8's own cannot finish: its first
    round of the most aggressive bracket asks for more settings than such a grid has (12 for up to 20 epochs; the
    paper's grid has 9), and it draws new settings at random, ending the whole search after 20 draws of tried ones.
    Here a round asks for at most as many settings as the grid has, and a new setting is the first untried one in
    a seeded order. The first bracket then uses every setting (successive halving up to the largest epochs); the
    next brackets find no new setting, and the search ends."""

    def _get_size(self, bracket_num: int, round_num: int) -> int:
        return min(super()._get_size(bracket_num, round_num), len(grid_values(self.hyperparameters)))

    def _random_values(self) -> Any:
        tried = {self._compute_values_hash(t.hyperparameters.values) for t in self.trials.values()}
        candidates = grid_values(self.hyperparameters)
        random.Random(self.seed).shuffle(candidates)
        return next((v for v in candidates if self._compute_values_hash(v) not in tried), None)


def make_oracle(tuning: TuningConfig, task: GlueTask, seed: int) -> keras_tuner.Oracle:
    common = dict(objective=keras_tuner.Objective(objective_name(task), direction="max"),
                  hyperparameters=search_space(tuning), allow_new_entries=False, seed=seed)
    if tuning.strategy == "hyperband":
        oracle = GridHyperbandOracle(max_epochs=max(tuning.epochs), factor=tuning.hyperband_factor,
                                     hyperband_iterations=1, **common)
        oracle.max_trials = tuning.max_trials  # None: the brackets' own number of trials
        return oracle
    oracle_class = GridOracle if tuning.strategy == "grid" else keras_tuner.oracles.RandomSearchOracle
    return oracle_class(max_trials=tuning.max_trials or tuning.grid_size(), **common)


def search_key(train_digest: str, custom_config: Dict[str, Any]) -> str:
    """The search's directory name: the same training data and settings (a rerun after a kill) find the same one,
    also when ExampleGen ran again on the same files (TFX's input fingerprint counts their modification times)."""
    settings = {k: v for k, v in custom_config.items() if k != SEARCH_ROOT_KEY}
    text = json.dumps({"train_digest": train_digest, "settings": settings}, sort_keys=True)
    return "search-" + hashlib.sha256(text.encode()).hexdigest()[:16]


class AdapterTuner(BaseTuner):
    """Runs each trial with modules/trainer.py's `train` on train minus a holdout, scored on that holdout; with
    folds, once per fold, scored by the mean."""

    def __init__(self, oracle: keras_tuner.Oracle, directory: str, project_name: str, config: TrainingConfig,
                 tuning: TuningConfig, train_files: List[str], feature_spec: Dict, holdouts: List[Holdout]):
        super().__init__(oracle, directory=directory, project_name=project_name, overwrite=False)
        self.config, self.tuning, self.train_files, self.feature_spec = config, tuning, train_files, feature_spec
        self.holdouts = holdouts

    def run_trial(self, trial: Trial, *args, **kwargs) -> Dict[str, float]:
        settings = tuned_settings({"values": trial.hyperparameters.values})
        config = dataclasses.replace(self.config, **settings)
        task = config.task_description()
        trial_dir = self.get_trial_dir(trial.trial_id)
        log_dir = os.path.join(trial_dir, "logs")
        if tf.io.gfile.exists(log_dir):  # a killed attempt's events
            tf.io.gfile.rmtree(log_dir)
        logging.info("trial %s: %s", trial.trial_id, describe_settings(settings))
        objective, folds, start = objective_name(task), [], time.time()
        for holdout in self.holdouts:
            keras.backend.clear_session()  # the previous training's model
            train_rows, holdout_rows = holdout.row_filters()
            fold_log_dir = log_dir if len(self.holdouts) == 1 else os.path.join(log_dir, f"fold_{holdout.fold}")
            _, history = train(config, self.train_files, self.train_files, self.feature_spec, fold_log_dir,
                               train_rows=train_rows, eval_rows=holdout_rows, eval_name=HOLDOUT,
                               patience=self.tuning.patience)
            folds.append({"fold": holdout.fold, "epochs_run": len(history), objective: history[-1][objective],
                          "stopped_early": len(history) < config.epochs, "history": history})
        record = {"trial_id": trial.trial_id, "settings": settings,
                  objective: float(np.mean([fold[objective] for fold in folds])),
                  "stopped_early": any(fold["stopped_early"] for fold in folds), "seconds": time.time() - start,
                  "folds": folds}
        with tf.io.gfile.GFile(os.path.join(trial_dir, RECORD_FILE), "w") as f:
            json.dump(record, f, indent=2)
        epochs = "+".join(str(f["epochs_run"]) for f in folds)
        logging.info("trial %s done: %s %.4f%s after %s epochs%s, %.0f s", trial.trial_id, objective, record[objective],
                     f" (mean of {len(folds)} folds)" if len(folds) > 1 else "", epochs,
                     " (stopped early)" if record["stopped_early"] else "", record["seconds"])
        return {objective: record[objective]}

    def trial_records(self) -> List[Dict[str, Any]]:
        """The records of every finished trial, this run's and earlier (killed) runs' of the same search."""
        records = []
        for trial_id in sorted(self.oracle.trials):
            path = os.path.join(self.project_dir, f"trial_{trial_id}", RECORD_FILE)
            if tf.io.gfile.exists(path):
                with tf.io.gfile.GFile(path) as f:
                    records.append(json.load(f))
        return records


def describe_settings(settings: Dict[str, Any]) -> str:
    """E.g. "learning rate 0.0003, bottleneck 64, 20 epochs"."""
    parts = {"learning_rate": "learning rate {:g}", "bottleneck_size": "bottleneck {}", "epochs": "{} epochs"}
    return ", ".join(parts[name].format(settings[name]) for name in TUNED_FIELDS if name in settings)


def accuracy_standard_error(examples: int) -> float:
    """One standard error, in points, of an accuracy near 0.5 measured on `examples` examples."""
    return 50 / examples ** 0.5


def holdout_resolution(examples: int) -> str:
    """What a holdout (all folds together) of this size can tell apart, and the flags to act on when that is little."""
    error = accuracy_standard_error(examples)
    text = (f"holdout of {examples} examples: one standard error of an accuracy near 0.5 on it is {error:.1f} points, "
            f"so trials closer than about {2 * error:.0f} points are not told apart")
    if error > NOISY_HOLDOUT_POINTS:
        text += ("; a larger --holdout_fraction, --tune_folds (every example scores, each trial trains once per "
                 "fold) or more training data makes the choice less of a coin toss")
    return text


def tuner_fn(fn_args: FnArgs) -> TunerFnResult:
    """Entry point of the TFX Tuner component: the search of the Tuner's custom_config over its train split."""
    custom = fn_args.custom_config
    config, tuning = TrainingConfig.from_dict(custom), TuningConfig.from_dict(custom[TUNING_KEY])
    task = config.task_description()
    feature_spec = tft.TFTransformOutput(fn_args.transform_graph_path).transformed_feature_spec()
    holdouts = carve_holdouts(fn_args.train_files, feature_spec, task, tuning, config.seed)
    directory = os.path.join(custom[SEARCH_ROOT_KEY], search_key(holdouts[0].train_digest, custom))
    record = describe_holdouts(holdouts)
    examples = record["holdout_examples"]
    logging.info("search in %s; holdout: %d of %d training examples%s (seed %d)", directory, examples,
                 sum(h + t for h, t in holdouts[0].counts.values()),
                 f" in {len(holdouts)} folds" if len(holdouts) > 1 else "", config.seed)
    (logging.warning if accuracy_standard_error(examples) > NOISY_HOLDOUT_POINTS else logging.info)(
        holdout_resolution(examples))
    tuner = AdapterTuner(make_oracle(tuning, task, config.seed), os.path.dirname(directory),
                         os.path.basename(directory), config, tuning, fn_args.train_files, feature_spec, holdouts)
    with tf.io.gfile.GFile(os.path.join(tuner.project_dir, HOLDOUT_FILE), "w") as f:
        json.dump(record, f, indent=2)
    return TunerFnResult(tuner=tuner, fit_kwargs={})


def search_summary(tuner: AdapterTuner) -> Dict[str, Any]:
    """The search in numbers: what was chosen, its holdout score, how many trials (stopped early), how long."""
    records = tuner.trial_records()
    task = tuner.config.task_description()
    if not any(t.status == "COMPLETED" for t in tuner.oracle.trials.values()):
        failed = [t for t in tuner.oracle.trials.values() if t.message]
        raise RuntimeError(f"no trial of the search in {tuner.project_dir} completed"
                           + (f"; trial {failed[-1].trial_id} failed with: {failed[-1].message}" if failed else "."))
    best = tuner.oracle.get_best_trials(1)[0]
    return {"metric": objective_name(task), "score": best.score, "best_trial": best.trial_id,
            "chosen": tuned_settings(best.hyperparameters.get_config()), "strategy": tuner.tuning.strategy,
            "trials": len(records), "stopped_early": sum(r["stopped_early"] for r in records),
            "seconds": sum(r["seconds"] for r in records), "holdout": describe_holdouts(tuner.holdouts)}


def describe_search(summary: Dict[str, Any]) -> str:
    """E.g. "chosen: learning rate 0.0003, bottleneck 64, 20 epochs; holdout f1 0.8710 on 367 examples; 18 trials
    (5 stopped early), 1 h 12 min"; with folds "... holdout f1 0.8710 (mean of 5 folds) on 3668 examples; ..."."""
    minutes = round(summary["seconds"] / 60)
    took = (f"{summary['seconds']:.0f} s" if summary["seconds"] < 60
            else f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min")
    stopped = f" ({summary['stopped_early']} stopped early)" if summary["stopped_early"] else ""
    folds = len(summary["holdout"]["folds"])
    return (f"chosen: {describe_settings(summary['chosen'])}; {summary['metric'].replace('_', ' ')} "
            f"{summary['score']:.4f}{f' (mean of {folds} folds)' if folds > 1 else ''} on "
            f"{summary['holdout']['holdout_examples']} examples; {summary['trials']} trials{stopped}, {took}")
