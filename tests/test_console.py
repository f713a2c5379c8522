"""The main command's console filters (pipeline/console.py), each on its own: scoped to one logger and one message,
one Python warning from one module, one C++ line on file descriptor 2. The whole console of a real run is checked
by tests/test_pipeline_e2e.py."""
import logging
import os
import signal
import subprocess
import sys
import warnings

import pytest

from pipeline import console

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
]
# What must get through: the same loggers' real warnings.
REAL = [
    ("absl", "Skipped malformed GLUE row train.tsv:7: expected 5 columns, found 4"),
    ("tensorflow", "Callback method `on_train_batch_end` is slow compared to the batch time."),
    ("transformers.modeling_tf_pytorch_utils", "Some weights of the PyTorch model were not used when initializing "
                                               "the TF 2.0 model TFBertModel: ['cls.predictions.bias']"),
    ("transformers.modeling_tf_utils", "Some layers of TFBertModel were not initialized from the model checkpoint"),
]


def is_benign(logger: str, message: str) -> bool:
    record = logging.LogRecord(logger, logging.WARNING, __file__, 1, message, None, None)
    return any(m.logger == logger and not console.BenignFilter([m.pattern]).filter(record)
               for m in console.BENIGN_MESSAGES)


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


def test_stderr_filter_drops_only_the_known_cpp_lines(capfd: pytest.CaptureFixture) -> None:
    stderr_filter = console.StderrFilter(console.CPP_BENIGN_LINES)
    os.write(2, ("before\n" + CUDA_LINE + REAL_LINE + ONEDNN_LINE + "after").encode())  # no newline at the end
    stderr_filter.close()
    os.write(2, ("\n" + CUDA_LINE).encode())  # after close: everything
    assert capfd.readouterr().err == "before\n" + REAL_LINE + "after\n" + CUDA_LINE


def test_stderr_filter_passes_everything_on_when_the_process_crashes() -> None:
    program = ("import os, sys\nfrom pipeline import console\n"
               "console.StderrFilter(console.CPP_BENIGN_LINES)\n"
               f"os.write(2, {(CUDA_LINE + REAL_LINE).encode()!r})\n"
               "sys.stderr.write('Fatal Python error: the last words\\n'); sys.stderr.flush()\n"
               "os.abort()\n")
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    crashed = subprocess.run([sys.executable, "-c", program], cwd=repo_root, capture_output=True, text=True)
    assert crashed.returncode == -signal.SIGABRT
    assert crashed.stderr == REAL_LINE + "Fatal Python error: the last words\n"
