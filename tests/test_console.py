"""The commands' console filters (pipeline/console.py), each on its own: scoped to one logger and one message,
one Python warning from one module, one C++ line on file descriptor 2; every command sets them up before TensorFlow
is imported, and a data error is one line. The whole console of a real run is checked by tests/test_pipeline_e2e.py."""
import logging
import os
import signal
import subprocess
import sys
import warnings
from typing import List

import pytest

from pipeline import console
from tiny_mrpc import MRPC_HEADER, write_mrpc

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every `python -m` command, with arguments that show the help where --verbose is.
COMMANDS = [("pipeline.run", ["--help"]), ("kubeflow.runner", ["--help"]), ("pipeline.bundle", ["--help"]),
            ("pipeline.adapterhub", ["export", "--help"]), ("pipeline.predict", ["--help"])]

# Each known-benign message as the main command printed it (logger, message), before the filters existed.
PRINTED = [
    ("absl", "ArtifactQuery.property_predicate is not supported."),
    ("absl", "Examples artifact does not have payload_format custom property. Falling back to FORMAT_TF_EXAMPLE"),
    ("tensorflow", "Model's `__init__()` arguments contain non-serializable objects. Please implement a "
                   "`get_config()` method in the subclassed Model for proper saving and loading. Defaulting to empty "
                   "config."),
    ("tensorflow", "SavedModel saved prior to TF 2.5 detected when loading Keras model. Please ensure that you are "
                   "saving the model with model.save() or tf.keras.models.save_model(), *NOT* tf.saved_model.save()."),
    ("tensorflow", "From /work/.venv/lib/python3.10/site-packages/tensorflow_model_analysis/writers/"
                   "metrics_plots_and_validations_writer.py:112: tf_record_iterator (from "
                   "tensorflow.python.lib.io.tf_record) is deprecated and will be removed in a future version."),
    ("apache_beam.io.tfrecordio", "Couldn't find python-snappy so the implementation of "
                                  "_TFRecordUtil._masked_crc32c is not as fast as it could be."),
    ("transformers.modeling_tf_utils", "TensorFlow and JAX classes are deprecated and will be removed in "
                                       "Transformers v5."),
    ("transformers.modeling_tf_utils", "All model checkpoint layers were used when initializing TFBertModel.\n"),
    ("transformers.modeling_tf_utils", "All the layers of TFBertModel were initialized from the model checkpoint at "
                                       "/tmp/tiny_bert.\nIf your task is similar to the task ..."),
    ("transformers.modeling_tf_pytorch_utils", "All PyTorch model weights were used when initializing TFBertModel.\n"),
    ("transformers.modeling_tf_pytorch_utils", "All the weights of TFBertModel were initialized from the PyTorch "
                                               "model.\nIf your task is similar to the task ..."),
    ("absl", "DEFAULT_IMAGE_PATH_KEY is not found in default_image."),
    # REPORTED_ERRORS: what the run logged before its own one line, for a header-only train.tsv.
    ("apache_beam.runners.common", "/tmp/glue/MRPC/train.tsv: no data rows (expected a header line and at least one "
                                   "row). [while running 'InputToRecord[train]/ReadFile']"),
    ("absl", "Execution 1 failed."),
]
# What must get through: the same loggers' real warnings.
REAL = [
    ("absl", "Skipped malformed GLUE row train.tsv:7: expected 5 columns, found 4"),
    ("tensorflow", "Callback method `on_train_batch_end` is slow compared to the batch time."),
    ("transformers.modeling_tf_pytorch_utils", "Some weights of the PyTorch model were not used when initializing "
                                               "the TF 2.0 model TFBertModel: ['cls.predictions.bias']"),
    ("transformers.modeling_tf_utils", "Some layers of TFBertModel were not initialized from the model checkpoint"),
    ("apache_beam.runners.common", "a Beam error without a step"),
    ("absl", "Execution 1 failed to publish its outputs."),
]


def is_benign(logger: str, message: str) -> bool:
    record = logging.LogRecord(logger, logging.WARNING, __file__, 1, message, None, None)
    return any(m.logger == logger and not console.BenignFilter([m.pattern]).filter(record)
               for m in console.BENIGN_MESSAGES + console.REPORTED_ERRORS)


@pytest.mark.parametrize("logger, message", PRINTED)
def test_every_printed_benign_message_is_known(logger: str, message: str) -> None:
    assert is_benign(logger, message)


@pytest.mark.parametrize("logger, message", REAL)
def test_real_warnings_are_not_benign(logger: str, message: str) -> None:
    assert not is_benign(logger, message)


def test_filter_is_scoped_to_its_logger(caplog: pytest.LogCaptureFixture) -> None:
    console.quiet_known_benign([console.BenignMessage("test_console.noisy", r"known noise", "a test")])
    for name in ("test_console.noisy", "test_console.other"):
        logging.getLogger(name).warning("known noise, from %s", name)
        logging.getLogger(name).warning("a real problem")
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("test_console.noisy", "a real problem"),
        ("test_console.other", "known noise, from test_console.other"),
        ("test_console.other", "a real problem"),
    ]


def test_benign_warning_is_ignored_from_its_module_only() -> None:
    message = "You are using a non-supported Python version (3.10.13)."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        console.ignore_benign_warnings()
        warnings.warn_explicit(message, FutureWarning, "support.py", 1,
                               module="google.api_core._python_version_support")
        warnings.warn_explicit(message, FutureWarning, "other.py", 1, module="someone_else")
        warnings.warn_explicit("Another notice.", FutureWarning, "support.py", 2,
                               module="google.api_core._python_version_support")
    assert [(w.filename, str(w.message)) for w in caught] == [("other.py", message), ("support.py", "Another notice.")]


CUDA_LINE = ("2026-12-02 05:57:34.430312: E external/local_xla/xla/stream_executor/cuda/cuda_blas.cc:1442] Unable to "
             "register cuBLAS factory: Attempting to register factory for plugin cuBLAS when one has already been "
             "registered\n")
ONEDNN_LINE = ("2026-12-02 06:06:53.917522: E tensorflow/core/util/util.cc:131] oneDNN supports DT_INT64 only on "
               "platforms with AVX-512. Falling back to the default Eigen-based implementation if present.\n")
REAL_LINE = "2026-12-02 05:57:35.000000: E tensorflow/core/util/util.cc:131] a real C++ error\n"
XLA_LINES = (  # a bfloat16 + XLA training's, from a real MRPC run, and an XLA export's Evaluator
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796545188.874030   17820 service.cc:145] XLA service 0x7fb58c04bd00 initialized for platform Host "
    "(this does not guarantee that XLA will be used). Devices:\n"
    "I0000 00:00:1796545188.874169   17820 service.cc:153]   StreamExecutor device (0): Host, Default Version\n"
    "W0000 00:00:1796545190.679626   17820 assert_op.cc:38] Ignoring Assert operator "
    "adapter_bert_classifier/bert/embeddings/assert_less/Assert/Assert\n"
    "I0000 00:00:1796545211.325373   17820 device_compiler.h:188] Compiled cluster using XLA!  This line is logged at "
    "most once for the lifetime of the process.\n"
    "W0000 00:00:1796548492.735550    5602 op_level_cost_estimator.cc:699] Error in PredictCost() for the op: op: "
    "\"Softmax\" attr { key: \"T\" value { type: DT_FLOAT } } inputs { dtype: DT_FLOAT shape { unknown_rank: true } }\n")
OTHER_ASSERT = "W0000 00:00:1796545190.679626   17820 assert_op.cc:38] Ignoring Assert operator model/other/Assert\n"


def test_stderr_filter_drops_only_the_known_cpp_lines(capfd: pytest.CaptureFixture) -> None:
    stderr_filter = console.StderrFilter(console.CPP_BENIGN_LINES)
    os.write(2, ("before\n" + CUDA_LINE + REAL_LINE + XLA_LINES + OTHER_ASSERT + ONEDNN_LINE + "after").encode())
    stderr_filter.close()  # ^ no newline at the end
    os.write(2, ("\n" + CUDA_LINE).encode())  # after close: everything
    assert capfd.readouterr().err == "before\n" + REAL_LINE + OTHER_ASSERT + "after\n" + CUDA_LINE


def test_stderr_filter_passes_everything_on_when_the_process_crashes() -> None:
    program = ("import os, sys\nfrom pipeline import console\n"
               "console.StderrFilter(console.CPP_BENIGN_LINES)\n"
               f"os.write(2, {(CUDA_LINE + REAL_LINE).encode()!r})\n"
               "sys.stderr.write('Fatal Python error: the last words\\n'); sys.stderr.flush()\n"
               "os.abort()\n")
    crashed = subprocess.run([sys.executable, "-c", program], cwd=REPO_ROOT, capture_output=True, text=True)
    assert crashed.returncode == -signal.SIGABRT
    assert crashed.stderr == REAL_LINE + "Fatal Python error: the last words\n"


def command(module: str, *argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m module argv` as a user runs it: from the repository, without the tests' TF_CPP_MIN_LOG_LEVEL."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


# Runs a command's module as `python -m` does, with setup_command wrapped: it must be called once, with the
# command's arguments, before anything has imported TensorFlow (its C++ runtime prints the CUDA lines at import).
SETUP_PROBE = """
import runpy, sys
from pipeline import console
calls = []
setup = console.setup_command
def probe(argv):
    calls.append(("tensorflow" in sys.modules, list(argv)))
    return setup(argv)
console.setup_command = probe
sys.argv = sys.argv[1:]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
finally:
    print(calls)
"""


@pytest.mark.parametrize("module, argv", COMMANDS, ids=[module for module, _ in COMMANDS])
def test_every_command_sets_up_its_console_before_tensorflow(module: str, argv: List[str]) -> None:
    result = subprocess.run([sys.executable, "-c", SETUP_PROBE, module, *argv], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str([(False, argv)]), result.stdout[-3000:]
    assert "--verbose" in result.stdout  # the flag that turns the filters off, in the command's --help


def test_verbose_is_a_flag_of_the_command_not_of_beam() -> None:
    """After a lone `--` the arguments are Beam's: a `--verbose` there leaves the console filtered."""
    program = ("from pipeline import console\n"
               "print(console.setup_command(['--task', 'mrpc', '--', '--verbose']) is not None,"
               " console.setup_command(['--verbose', '--', '--runner=DirectRunner']) is None)")
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["True", "True"], result.stderr[-2000:]


def test_kubeflow_runner_prints_no_cuda_lines(tmp_path) -> None:
    output = tmp_path / "p.json"
    result = command("kubeflow.runner", "--image", "IMAGE", "--pipeline_root", "gs://b/root",
                     "--data_dir", "gs://b/glue", "--serving_dir", "gs://b/serving", "--output", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    assert output.exists()
    assert "Unable to register" not in result.stderr, result.stderr[-3000:]
    assert not console.CPP_BENIGN_LINES.search(result.stderr.encode()), result.stderr[-3000:]


def error_lines(stderr: str) -> List[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower()]


def test_header_only_train_file_is_one_error_line(tmp_path) -> None:
    """A data error fails ExampleGen, the first component: one line, naming the file; no Beam or TFX traceback."""
    data_dir = write_mrpc(str(tmp_path / "glue"), train_rows=0, eval_rows=4, shuffle_train_labels=False, seed=0)
    train = os.path.join(data_dir, "MRPC", "train.tsv")
    with open(train, encoding="utf-8") as f:
        assert f.read() == MRPC_HEADER + "\n"  # the header, no row
    result = command("pipeline.run", "--task", "mrpc", "--data_dir", data_dir, "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Unable to register" not in result.stderr, result.stderr[-3000:]
    (line,) = error_lines(result.stderr)
    assert line.startswith("error: the pipeline stopped: ") and train in line, line
    assert line == result.stderr.splitlines()[-1]
