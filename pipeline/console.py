"""The console of every command (`python -m pipeline.run`, `kubeflow.runner`, `pipeline.bundle`, ...): every
line it prints is one a user should read. Each command calls setup_command first, before TensorFlow is imported.

Known-benign messages are dropped where they are emitted, each with the reason it is benign: log records by
the one logger that emits them (a filter on a logger sees only that logger's own records) and the start of
their text; Python warnings by category, warning module and text; the C++ lines TensorFlow writes to file
descriptor 2 by their text. So are the log records of an error that is raised on to the command, which reports
it in one line (REPORTED_ERRORS). Every other warning and error gets through, and `--verbose` installs none of
these filters.
"""
from __future__ import annotations

import argparse
import atexit
import dataclasses
import logging
import os
import re
import subprocess
import sys
import warnings
from typing import Dict, List, Optional, Sequence

VERBOSE_FLAG = "--verbose"


@dataclasses.dataclass(frozen=True)
class BenignMessage:
    logger: str  # the logger that emits it
    pattern: str  # a regular expression matched at the start of the formatted message
    why: str  # why a user need not read it


BENIGN_MESSAGES = (
    BenignMessage("absl", r"ArtifactQuery\.property_predicate is not supported\.",
                  "TFX 1.16's channel resolver tests a protobuf sub-message for truth, which is always true: it warns "
                  "for every input of every component, though no channel of this pipeline has a property predicate."),
    BenignMessage("absl", r"Examples artifact does not have payload_format custom property\. Falling back to "
                          r"FORMAT_TF_EXAMPLE",
                  "Transform does not record the payload format of its output, which is tf.Examples: the fallback."),
    BenignMessage("absl", r"DEFAULT_IMAGE_PATH_KEY is not found in default_image\.",
                  "TFX 1.16's check is inverted (kubeflow/v2/pipeline_builder._check_default_image warns when the key "
                  "is there): kubeflow.runner's image map for --trainer_image always has the default image's key."),
    BenignMessage("tensorflow", r"Model's `__init__\(\)` arguments contain non-serializable objects\.",
                  "The export saves a tf.Module with its signatures, not a Keras model to rebuild from its config; "
                  "the adapter-only weights are saved with their own JSON config."),
    BenignMessage("tensorflow", r"SavedModel saved prior to TF 2\.5 detected when loading Keras model\.",
                  "TFMA first tries to load the exported SavedModel as a Keras model; it is a tf.Module SavedModel "
                  "by design (tf.saved_model.save), which TFMA then loads as one."),
    BenignMessage("tensorflow", r"From \S*/tensorflow_model_analysis/\S*: tf_record_iterator \(from "
                                r"tensorflow\.python\.lib\.io\.tf_record\) is deprecated",
                  "A deprecation inside TFMA 0.47's metrics writer, not in this project's code."),
    BenignMessage("tensorflow", r"From \S*/tfx_bsl/beam/run_inference\.py:\d+: load \(from "
                                r"tensorflow\.python\.saved_model\.loader_impl\) is deprecated",
                  "BulkInferrer's RunInference (tfx_bsl 1.16) loads the SavedModel with the TF1 loader; the model is "
                  "the same tf.Module SavedModel every other stage loads."),
    BenignMessage("apache_beam.io.tfrecordio", r"Couldn't find python-snappy so the implementation of "
                                               r"_TFRecordUtil\._masked_crc32c is not as fast as it could be\.",
                  "TFRecord checksums in pure Python instead: the same files, and a negligible cost at GLUE's size."),
    BenignMessage("transformers.modeling_tf_utils", r"TensorFlow and JAX classes are deprecated",
                  "transformers is pinned to 4.57.x, the last release with TensorFlow models (requirements.lock)."),
    BenignMessage("transformers.modeling_tf_utils", r"All model checkpoint layers were used when initializing",
                  "A success notice at warning level (tf_model.h5 backbones); a mismatch still warns."),
    BenignMessage("transformers.modeling_tf_utils", r"All the layers of \w+ were initialized from the model checkpoint",
                  "A success notice at warning level (tf_model.h5 backbones); a mismatch still warns."),
    BenignMessage("transformers.modeling_tf_pytorch_utils", r"All PyTorch model weights were used when initializing",
                  "A success notice at warning level (PyTorch-format backbones); a mismatch still warns."),
    BenignMessage("transformers.modeling_tf_pytorch_utils", r"All the weights of \w+ were initialized from the "
                                                            r"PyTorch model",
                  "A success notice at warning level (PyTorch-format backbones); a mismatch still warns."),
)
# Errors logged where they are raised and then raised on, up to the command, which prints each as its one line
# ("error: the pipeline stopped: ValueError: <file>: ..."): without --verbose the log does not print them first,
# with a traceback that is Beam's or TFX's, not the user's.
REPORTED_ERRORS = (
    BenignMessage("apache_beam.runners.common", r"(?s).*\[while running '",
                  "Beam logs the exception of a failed transform, with its traceback, then raises it again with the "
                  "step's name appended (DoFnRunner._reraise_augmented): this is the error the command reports."),
    BenignMessage("absl", r"Execution \d+ failed\.$",
                  "TFX's launcher records the failed execution in ML Metadata and raises its error on, which the "
                  "command reports."),
)
# Python warnings: (category, module that warns, start of the message).
# All three come from Google Cloud client libraries (Beam's GCP extra, Vertex AI) at import, about the versions
# that TFX 1.16 requires (Python 3.10) or that requirements.lock pins with it: nothing a user here can act on.
BENIGN_WARNINGS = (
    (FutureWarning, r"google\.api_core\._python_version_support", r"You are using a non-supported Python version"),
    (FutureWarning, r"google\.auth\.transport\.grpc", r"grpcio < 1\.83\.0 does not support Post-Quantum Cryptography"),
    (FutureWarning, r"google\.cloud\.aiplatform\.", r"Support for google-cloud-storage < 3\.0\.0 will be removed"),
)
# Lines that TensorFlow's C++ runtime writes to file descriptor 2 itself, not through Python's logging:
#  - at import, the TF 2.16 wheel registers its CUDA plugins twice, with or without a GPU (the first one is used);
#  - oneDNN (the CPU kernels) has no int64 kernels here and says that the default kernels run them, as always;
#  - XLA (the train step with --xla, the default with bfloat16) announces its CPU service and first compilation
#    (after absl's notice that it logs to stderr), and says it drops the backbone's check that token ids are below
#    the vocabulary size: the ids come from the backbone's own tokenizer, so they always are;
#  - Grappler (TensorFlow's graph optimiser) cannot estimate the cost of an op of unknown shape in a loaded
#    XLA-compiled export (--serving_export xla): the estimate only guides its optimisations.
CPP_BENIGN_LINES = re.compile(
    rb"Unable to register cu(FFT|DNN|BLAS) factory: Attempting to register factory for plugin cu\w+ when one has "
    rb"already been registered"
    rb"|oneDNN supports DT_INT64 only on platforms with AVX-512\. Falling back to the default Eigen-based "
    rb"implementation if present\."
    rb"|^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    rb"|\] XLA service 0x[0-9a-f]+ initialized for platform Host \(this does not guarantee that XLA will be used\)"
    rb"|\]   StreamExecutor device \(0\): Host, Default Version$"
    rb"|\] Compiled cluster using XLA!  This line is logged at most once for the lifetime of the process\.$"
    rb"|\] Ignoring Assert operator \S*bert/embeddings/assert_less/Assert/Assert$"
    rb"|op_level_cost_estimator\.cc:\d+\] Error in PredictCost\(\) for the op: ")
# The child process that passes file descriptor 2 on: argv[1] is the pattern of the lines to leave out.
FORWARDER = """
import re, sys
benign = re.compile(sys.argv[1].encode("latin-1"))
for line in sys.stdin.buffer:
    if not benign.search(line):
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""


class BenignFilter(logging.Filter):
    """Drops the records of one logger whose message starts with one of `patterns`."""

    def __init__(self, patterns: Sequence[str]):
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.match(message) for p in self.patterns)


def quiet_known_benign(messages: Sequence[BenignMessage] = BENIGN_MESSAGES + REPORTED_ERRORS) -> None:
    """Installs one BenignFilter on each logger named in `messages` (once: the runner may run twice in a process)."""
    patterns_by_logger: Dict[str, List[str]] = {}
    for message in messages:
        patterns_by_logger.setdefault(message.logger, []).append(message.pattern)
    for name, patterns in patterns_by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, BenignFilter) for f in logger.filters):
            logger.addFilter(BenignFilter(patterns))


def ignore_benign_warnings() -> None:
    for category, module, message in BENIGN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def one_tensorflow_handler() -> None:
    """Every TensorFlow log line once: TensorFlow gives its logger a handler of its own when the root logger has
    none at import; once another library configures the root logger (absl calls basicConfig when TFMA is
    imported), each line would be printed by both."""
    tensorflow_logger = logging.getLogger("tensorflow")
    if tensorflow_logger.handlers:
        tensorflow_logger.propagate = False


class StderrFilter:
    """From its creation on, file descriptor 2 of this process (where C++ libraries log; also sys.stderr, and
    the processes this one starts) is passed on by a child process, without the lines `benign` matches.

    A child, not a thread: if this process crashes, the child still reads to the end of what was written
    (its last lines are the ones that matter), then stops when the last writer is gone. It runs in its own
    session, so that Ctrl-C stops this process and not the printing of its traceback.
    """

    def __init__(self, benign: re.Pattern):
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.child = subprocess.Popen([sys.executable, "-c", FORWARDER, benign.pattern.decode("latin-1")],
                                      stdin=subprocess.PIPE, stdout=self.saved, start_new_session=True)
        os.dup2(self.child.stdin.fileno(), 2)
        self.child.stdin.close()  # file descriptor 2 is now this process's one write end of the pipe
        self.closed = False

    def close(self) -> None:
        """Restores file descriptor 2 and waits until the child has passed on every line written before."""
        if self.closed:
            return
        self.closed = True
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.child.wait()


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """The flag setup_command looks for, in a command's --help."""
    parser.add_argument(VERBOSE_FLAG, action="store_true",
                        help="show the whole console: TensorFlow's C++ lines and the known-benign messages "
                             "and errors that pipeline/console.py leaves out")


def setup_command(argv: Sequence[str]) -> Optional[StderrFilter]:
    """The console of a `python -m` command; call it first, before anything imports TensorFlow: its C++ runtime
    reads TF_CPP_MIN_LOG_LEVEL once, and prints the CUDA registration lines, at import.

    argv: the command's arguments; --verbose among its own flags (before a lone `--`, after which Beam's come)
    turns every filter off. Otherwise: TensorFlow's C++ INFO and WARNING lines off, and the known-benign Python
    warnings, log records (with REPORTED_ERRORS) and C++ lines left out. Returns the StderrFilter (closed at exit;
    a command may close it earlier, e.g. before its summary), or None with --verbose.
    """
    argv = list(argv)
    own = argv[:argv.index("--")] if "--" in argv else argv
    if VERBOSE_FLAG in own:
        return None
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # absl must create its "absl" logger (an ABSLLogger, which records the caller's file, not absl's) before a
    # filter is put on it: pipeline.run's progress filter keeps the project's messages by that file.
    import absl.logging  # noqa: F401
    ignore_benign_warnings()
    quiet_known_benign()
    stderr_filter = StderrFilter(CPP_BENIGN_LINES)
    atexit.register(stderr_filter.close)  # also after an error: its message is passed on before the exit
    return stderr_filter
