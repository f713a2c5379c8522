"""Runs the pipeline locally: LocalDagRunner, Beam DirectRunner, SQLite ML Metadata.

    python -m pipeline.run --task mrpc --epochs 3 [-- <Beam arguments, e.g. --direct_num_workers=2>]
    python -m pipeline.run --task_spec path/to/task.yaml [...]     (your own dataset; README.md)

Takes the original training script's flags (--casing, --bottleneck_size, --non_linearity, --task,
--batch_size, --epochs, --max_seq_length, --learning_rate, --warmup_ratio, --saved_models_dir); every
flag is checked before any work starts. Ends with a table: task, metrics, blessed, push destination,
wall time per component.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging as std_logging
import os
import sys
import time
import traceback
from typing import List, Optional, Sequence, Tuple

from pipeline import console

# Before TensorFlow is imported: `python -m pipeline.run` owns its process's console (pipeline/console.py), and
# its --verbose shows everything.
MAIN_COMMAND = __name__ == "__main__"
STDERR_FILTER = console.setup_command(sys.argv[1:]) if MAIN_COMMAND else None
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from absl import logging

from modules import backbone as backbone_lib
from modules import glue
from modules.adapters import check_adapter_drop
from modules.config import STRATEGIES, TrainingConfig, TuningConfig
from pipeline import configs

PROJECT_PACKAGES = {"components", "modules", "pipeline", "kubeflow"}
TRAINING_FLAGS = {
    "bottleneck_size": int, "adapter_drop": int, "batch_size": int, "epochs": int, "max_seq_length": int, "seed": int,
    "learning_rate": float, "warmup_ratio": float, "weight_decay": float,
    "non_linearity": str, "placement": str, "precision": str, "xla": str, "serving_export": str,
}
# pipeline.configs.DataChecks' thresholds: TrainabilityGate stops the run before training beyond them.
DATA_CHECK_FLAGS = {
    "min_class_share": "stop before training if a class has no training example, or fewer than this fraction of "
                       "an even share of them (0.1: 5%% with 2 classes)",
    "max_label_linf": "stop before training if the class distributions of train and an eval split are further apart "
                      "(L-infinity distance: the largest difference of a class's share)",
    "max_label_js": "stop before training if the score distributions of train and an eval split are further apart "
                    "(Jensen-Shannon divergence; regression tasks such as STS-B)",
    "max_pair_overlap": "stop before training if a larger share of an eval split's examples have a "
                        "(sentence1, sentence2) pair that is also in train",
}


def split_beam_args(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Our flags, and the Beam arguments given after a lone `--`."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    return argv[:argv.index("--")], argv[argv.index("--") + 1:]


def add_pipeline_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every runner shares (this one, kubeflow.runner): task, backbone, training, blessing, caching."""
    defaults = TrainingConfig()
    task = parser.add_mutually_exclusive_group()
    task.add_argument("--task", default=defaults.task, help="GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli)")
    task.add_argument("--task_spec", help="YAML (or JSON) task spec file describing your own dataset, instead of --task")
    parser.add_argument("--model", "--casing", dest="model", default=defaults.model,
                        help="backbone: 'minilm' (offline default), a local HF model dir, or a hub name like bert-base-uncased")
    for flag, kind in TRAINING_FLAGS.items():
        parser.add_argument(f"--{flag}", type=kind, default=getattr(defaults, flag))
    parser.add_argument("--full_finetune", action="store_true", help="train every weight, no adapters (the reference)")
    parser.add_argument("--freeze_layer_norms", action="store_true", help="keep the encoder's layer norms frozen too")
    parser.add_argument("--original_ln_before", action="store_true",
                        help="adapters read LayerNorm(sublayer output + residual), as AdapterHub's Pfeiffer (seq_bn) ones")
    parser.add_argument("--warm_start", default="", metavar="DIR",
                        help="start from these adapter-only weights (a Trainer's adapters dir or Model artifact, or "
                             "`python -m pipeline.adapterhub import`'s output); the adapter flags must match them; "
                             "--epochs 0 exports, evaluates and pushes them unchanged")
    parser.add_argument("--no_bucketing", action="store_true", help="pad every batch to --max_seq_length")
    parser.add_argument("--no_prefix_cache", action="store_true",
                        help="with --adapter_drop K > 0: run the frozen lowest K layers every step instead of once per example")
    parser.add_argument("--min_eval_value", type=float, default=0.0,
                        help="bless only if the task's main metric reaches this (can only raise the constant-predictor floor)")
    parser.add_argument("--constant_margin", type=float, default=configs.DEFAULT_CONSTANT_MARGIN,
                        help="bless only if the main metric beats what a constant predictor scores on eval by this much")
    parser.add_argument("--max_regression", type=float, default=0.01,
                        help="do not bless a model this much worse than the served one (highest version under "
                             "<serving_dir>/<task>/) on the main metric")
    parser.add_argument("--no_baseline", action="store_true",
                        help="opt out of the comparison with the served model (blessing then rests on the floor alone)")
    parser.add_argument("--no_cache", action="store_true", help="rerun every component even if its inputs are unchanged")
    checks = configs.DataChecks()
    for flag, help_text in DATA_CHECK_FLAGS.items():
        parser.add_argument(f"--{flag}", type=float, default=getattr(checks, flag),
                            help=f"{help_text} (default %(default)s)")
    add_tuning_flags(parser)


def _number_list(kind: type, flag: str):
    """An argparse type: comma-separated numbers of `kind`, the error naming the flag."""
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(part) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--{flag} {text!r}: expected comma-separated {kind.__name__} values, "
                                             "e.g. " + ("3e-5,3e-4,3e-3" if kind is float else "8,64,256"))
    return parse


def add_tuning_flags(parser: argparse.ArgumentParser) -> None:
    """--tune and its search (docs/tuning.md); the defaults are Houlsby et al.'s grid."""
    defaults = TuningConfig()
    tuning = parser.add_argument_group("tuning (--tune: a Tuner chooses learning rate, bottleneck size and epochs on "
                                       "a holdout carved from train; docs/tuning.md)")
    tuning.add_argument("--tune", action="store_true",
                        help="search the settings below before training; the Trainer then trains on all of train "
                             "with the best trial's (off by default: a search takes many training runs)")
    for flag, kind, default in (("tune_learning_rates", float, defaults.learning_rates),
                                ("tune_bottleneck_sizes", int, defaults.bottleneck_sizes),
                                ("tune_epochs", int, defaults.epochs)):
        tuning.add_argument(f"--{flag}", type=_number_list(kind, flag), default=default, metavar="LIST",
                            help=f"values to search (default {','.join(f'{v:g}' for v in default)})"
                                 + ("; Hyperband: up to the largest, its budget" if flag == "tune_epochs" else ""))
    tuning.add_argument("--tune_strategy", choices=STRATEGIES, default=defaults.strategy,
                        help="grid: every combination; random: --tune_max_trials of them; hyperband: epochs as a "
                             "budget, successive halving (default %(default)s)")
    tuning.add_argument("--tune_max_trials", type=int, default=defaults.max_trials, metavar="N",
                        help="trials at most (default: the whole grid; Hyperband: its first bracket's number)")
    tuning.add_argument("--holdout_fraction", type=float, default=defaults.holdout_fraction,
                        help="share of each class of train that scores the trials, chosen by --seed "
                             "(default %(default)s)")
    tuning.add_argument("--tune_folds", type=int, default=defaults.folds, metavar="K",
                        help="score each trial by K-fold cross-validation on train instead of one holdout: K "
                             "trainings per trial, every example scores (for small datasets; default %(default)s)")
    tuning.add_argument("--tune_patience", type=int, default=defaults.patience, metavar="EPOCHS",
                        help="stop a trial after this many epochs without a better holdout score; 0: never "
                             "(default %(default)s)")
    tuning.add_argument("--hyperband_factor", type=int, default=defaults.hyperband_factor,
                        help="Hyperband's reduction factor between rounds (default %(default)s)")


def tuning_config(args: argparse.Namespace, config: TrainingConfig) -> Optional[TuningConfig]:
    """The validated search with --tune, else None; a --tune_* flag without --tune is an error, not ignored."""
    defaults = TuningConfig()
    tuning = TuningConfig(
        learning_rates=args.tune_learning_rates, bottleneck_sizes=args.tune_bottleneck_sizes, epochs=args.tune_epochs,
        strategy=args.tune_strategy, max_trials=args.tune_max_trials, holdout_fraction=args.holdout_fraction,
        folds=args.tune_folds, patience=args.tune_patience, hyperband_factor=args.hyperband_factor)
    if not args.tune:
        if tuning != defaults:
            changed = [f.name for f in dataclasses.fields(TuningConfig)
                       if getattr(tuning, f.name) != getattr(defaults, f.name)]
            raise ValueError(f"tuning settings ({', '.join(changed)}) were given without --tune: add --tune to search.")
        return None
    tuning.check_training(config)
    return tuning


def parse_args(argv: Sequence[str]) -> Tuple[argparse.Namespace, List[str]]:
    """Our flags, and the Beam arguments given after a lone `--`."""
    ours, beam_args = split_beam_args(argv)
    parser = argparse.ArgumentParser(prog="python -m pipeline.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_flags(parser)
    parser.add_argument("--data_dir", help="GLUE data in the standard layout (<dir>/MRPC/train.tsv ...; default "
                        f"{configs.DEFAULT_DATA_DIR}); with --task_spec: where its relative file paths start "
                        "(default: the spec file's directory)")
    parser.add_argument("--output_dir", default=configs.DEFAULT_OUTPUT_DIR,
                        help="default parent of --pipeline_root, --serving_dir and the metadata database")
    parser.add_argument("--pipeline_root", help="where artifacts go (default <output_dir>/pipelines/<pipeline name>)")
    parser.add_argument("--serving_dir", "--saved_models_dir", dest="serving_dir",
                        help="Pusher destination: <serving_dir>/<task>/<version>/ (default <output_dir>/serving)")
    parser.add_argument("--predictions_dir",
                        help="the test splits' predictions: <predictions_dir>/<task>/<version>/, <version> the pushed "
                             "model's (default: 'predictions' beside --serving_dir)")
    parser.add_argument("--metadata_path", help="SQLite ML Metadata file (default <output_dir>/metadata.sqlite)")
    parser.add_argument("--verbose", action="store_true",
                        help="show the full log (TFX's, TensorFlow's C++ lines, the known-benign messages of "
                             "pipeline/console.py), not just progress and warnings")
    return parser.parse_args(ours), beam_args


def training_config(args: argparse.Namespace, check_backbone: bool = True) -> TrainingConfig:
    """The validated training configuration; also checks the backbone exists and fits --max_seq_length.

    check_backbone=False where the backbone is resolved later, in the container (kubeflow.runner); the Trainer checks it there.
    """
    task_spec = glue.load_task_spec(args.task_spec, args.data_dir).to_spec() if args.task_spec else None
    config = TrainingConfig(
        task=args.task, task_spec=task_spec, model=args.model, full_finetune=args.full_finetune,
        train_layer_norms=not args.freeze_layer_norms, bucketing=not args.no_bucketing,
        prefix_cache=not args.no_prefix_cache, original_ln_before=args.original_ln_before,
        warm_start=args.warm_start if "://" in args.warm_start or not args.warm_start else os.path.abspath(args.warm_start),
        **{flag: getattr(args, flag) for flag in TRAINING_FLAGS},
    )
    if config.warm_start:
        from modules.trainer import warm_start_directory

        warm_start_directory(config)
    if not check_backbone:
        return config
    model_dir = backbone_lib.resolve_model_dir(config.model)
    bert_config = backbone_lib.load_config(model_dir)
    backbone_lib.tokenizer_settings(model_dir)
    backbone_lib.check_max_seq_length(config.max_seq_length, bert_config)
    check_adapter_drop(config.adapter_drop, bert_config.num_hidden_layers)
    return config


def data_checks(args: argparse.Namespace) -> configs.DataChecks:
    """The validated thresholds of the checks that stop a run before training (TrainabilityGate)."""
    return configs.DataChecks(**{flag: getattr(args, flag) for flag in DATA_CHECK_FLAGS})


def data_dir(args: argparse.Namespace) -> str:
    """--data_dir, else where the task's files are: the spec file's directory, or the GLUE default."""
    if args.data_dir is not None:
        return args.data_dir
    return os.path.dirname(os.path.abspath(args.task_spec)) if args.task_spec else configs.DEFAULT_DATA_DIR


def print_summary(task: str, metadata_path: str, pipeline_name: str, wall_seconds: float) -> None:
    """Per-component state and wall time of the latest run and what it produced, read from ML Metadata."""
    from modules.metrics import overall_metrics
    from pipeline.runs import pipeline_runs

    run = pipeline_runs(metadata_path, pipeline_name)[-1]
    print("\n" + "=" * 78)
    print(f"{'component':<34}{'state':<12}{'wall time':>12}")
    for node, state in run.states.items():
        print(f"{node:<34}{state:<12}{run.seconds[node]:>10.1f} s")
    lines = [f"task:      {task}"]
    for evaluation in run.outputs.get("ModelEvaluation", []):
        values = overall_metrics(evaluation.uri) or overall_metrics(evaluation.uri, model_name="candidate")
        split = evaluation.uri.rstrip("/").split("/")[-3].replace("Evaluator_", "")
        lines.append(f"{split + ':':<11}" + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    for blessing in run.outputs.get("ModelBlessing", []):
        gate = blessing.custom_properties.get("gate")
        lines.append(f"blessed:   {'yes' if blessing.custom_properties['blessed'].int_value else 'no'}"
                     + (f" ({gate.string_value})" if gate else ""))
    for pushed in run.outputs.get("PushedModel", []):
        props = pushed.custom_properties
        lines.append(f"pushed to: {props['pushed_destination'].string_value if props['pushed'].int_value else 'not pushed'}")
    for results in run.outputs.get("TunerResults", []):
        lines.append(f"tuning:    {results.custom_properties['summary'].string_value}")
    for predictions in run.outputs.get("InferenceResult", []):
        lines.append(f"predictions: {predictions.custom_properties['summary'].string_value}")
    print("-" * 78)
    print("\n".join(lines + [f"wall time: {wall_seconds:.1f} s"]))
    print("=" * 78)


class ProgressFilter(std_logging.Filter):
    """Keeps the log readable: component start/finish, this project's own messages, and every warning."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        ours = os.path.relpath(record.pathname, configs.REPO_ROOT).split(os.sep)[0] in PROJECT_PACKAGES
        return record.levelno >= std_logging.WARNING or ours or str(record.msg).startswith("Component ")


def main(argv: Optional[Sequence[str]] = None) -> None:
    args, beam_args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = training_config(args)
        checks = data_checks(args)
        tuning = tuning_config(args, config)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    from tfx import v1 as tfx
    from pipeline.pipeline import compile_local, create_pipeline, pipeline_name_for

    name = pipeline_name_for(config.task, configs.PIPELINE_NAME)
    pipeline_root = args.pipeline_root or os.path.join(args.output_dir, "pipelines", name)
    serving_dir = args.serving_dir or os.path.join(args.output_dir, "serving")
    metadata_path = args.metadata_path or os.path.join(args.output_dir, "metadata.sqlite")
    try:
        pipeline = create_pipeline(
            pipeline_name=name, pipeline_root=pipeline_root, data_dir=data_dir(args), serving_dir=serving_dir,
            config=config, min_eval_value=args.min_eval_value, max_regression=args.max_regression,
            compare_with_baseline=not args.no_baseline, constant_margin=args.constant_margin,
            beam_pipeline_args=beam_args, enable_cache=not args.no_cache, data_checks=checks,
            predictions_dir=args.predictions_dir, tuning=tuning,
        )
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    # Only once every check has passed: this helper creates the database's directory.
    pipeline.metadata_connection_config = tfx.orchestration.metadata.sqlite_metadata_connection_config(
        os.path.abspath(metadata_path))
    logging.set_verbosity(logging.INFO)
    if MAIN_COMMAND:
        console.one_tensorflow_handler()
    if not args.verbose:
        std_logging.getLogger("absl").addFilter(ProgressFilter())
        console.quiet_known_benign()
    start = time.time()
    try:
        tfx.orchestration.LocalDagRunner().run_with_ir(compile_local(pipeline))
    except Exception as e:  # a component failed; its message says what and where (--verbose: and the traceback)
        if args.verbose:
            traceback.print_exc()
        sys.exit(f"error: the pipeline stopped: {type(e).__name__}: {e}")
    if STDERR_FILTER:
        STDERR_FILTER.close()  # the log's last lines before the summary
    print_summary(config.task, metadata_path, name, time.time() - start)


if __name__ == "__main__":
    main()
