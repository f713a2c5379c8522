"""The pushed SavedModel's serving contract, and the TF Serving client pipeline/predict.py, without a TF Serving
binary (none exists on these machines; see serving/README.md).

A pushed model is made the cheap real way: a tiny random BERT (tests/tiny_bert.py) with adapters, the
project's Transform graph written by tf.Transform's Beam API from the project's preprocessing_fn and GLUE
schema, exported by modules.serving.export_serving_model into <serving_dir>/<task>/<version>/, the layout
the Pusher writes and TF Serving loads. Then:
  - the exact REST JSON body and the exact gRPC PredictRequest the client builds are fed to the SavedModel
    loaded by TensorFlow's own loader, the way TF Serving maps them onto the signature (REST columnar
    inputs -> tensors; TensorProtos -> tf.make_ndarray), the answers are turned into TF Serving's responses
    (REST columnar JSON, omitting the name of a single output; PredictResponse of tf.make_tensor_proto) and
    read back by the client's parsers: they must equal direct calls of the signature and of the Keras model;
  - the client runs end to end over real sockets against two stand-ins on 127.0.0.1 that answer with that
    same mapping: an HTTP server with TF Serving's REST predict API (the CLI as a subprocess) and a gRPC
    server with TF Serving's PredictionService;
  - saved_model_cli (TensorFlow's tool) shows the signatures and runs predict_text; the TF Text ops must be
    registered first, which the plain console script does not do (see serving/README.md).
"""
from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest
import tensorflow as tf

from modules.glue import get_task
from pipeline import predict

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
MAX_SEQ_LENGTH = 32
SERVER_LIFETIME_SECONDS = 300  # the stand-in servers shut themselves down after this, whatever happens
PAIRS = [
    ("The company said its profit rose three percent.", "Profit at the company rose by three percent, it said."),
    ("He went home early.", "The market fell sharply on Monday."),
    ("Café prices — up 5%!", "Prices at the café rose five percent."),
]
SENTENCES = [a for a, _ in PAIRS]


# --- a pushed model -------------------------------------------------------------------------------------------


def write_transform_graph(directory: str, task: str, model_dir: str, temp_dir: str) -> str:
    """The Transform graph the pipeline's Transform component writes: preprocessing_fn over the GLUE schema."""
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata

    from components.glue_schema_gen import glue_schema
    from modules.preprocessing import preprocessing_fn

    config = {"task": task, "model": model_dir, "max_seq_length": MAX_SEQ_LENGTH}
    label = 2.5 if get_task(task).is_regression else 1
    raw = [{"sentence1": b"a b", "sentence2": b"c d", "idx": 0, "label": label}]
    metadata = dataset_metadata.DatasetMetadata(glue_schema(task))
    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=temp_dir):
        transform_fn = (pipeline | beam.Create(raw), metadata) | tft_beam.AnalyzeDataset(
            functools.partial(preprocessing_fn, custom_config=config))
        _ = transform_fn | tft_beam.WriteTransformFn(directory)
        # As TFX's Transform executor: the raw metadata too (the serving signatures parse with its feature spec).
        _ = metadata | tft_beam.WriteMetadata(os.path.join(directory, tft.TFTransformOutput.RAW_METADATA_DIR), pipeline)
    return directory


def push_model(root: str, task_name: str, model_dir: str):
    """Exports an untrained adapter model as
    <root>/serving/<task>/<version>/; returns (version dir, Keras model)."""
    import tensorflow_transform as tft
    import tf_keras as keras

    from modules import backbone, preprocessing, serving, trainer
    from modules.model import INPUT_NAMES
    from modules.config import TrainingConfig

    task = get_task(task_name)
    config = TrainingConfig(task=task.name, model=model_dir, max_seq_length=MAX_SEQ_LENGTH, bottleneck_size=8)
    graph_dir = write_transform_graph(os.path.join(root, f"transform_{task.name}"), task.name, model_dir,
                                      os.path.join(root, "tft_tmp"))
    keras.utils.set_random_seed(1)
    model = trainer.build_model(config, task)
    # Spread the answers: a larger random head, centred on PAIRS, so that their labels differ.
    kernel = model.classifier.kernel
    kernel.assign(tf.random.stateless_normal(kernel.shape, seed=[1, 2]))
    features = preprocessing.tokenize_pairs(
        tf.constant(SENTENCES), None if task.text_b is None else tf.constant([b for _, b in PAIRS]),
        backbone.tokenizer_settings(model_dir), MAX_SEQ_LENGTH)
    logits = model({name: features[name] for name in INPUT_NAMES}, training=False)
    model.classifier.bias.assign(model.classifier.bias - tf.reduce_mean(logits, axis=0))
    version_dir = os.path.join(root, "serving", task.name, str(int(time.time())))
    serving.export_serving_model(model, tft.TFTransformOutput(graph_dir), task, version_dir)
    return version_dir, model


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> str:
    from tiny_bert import write_tiny_bert

    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), num_layers=1)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, tiny_bert_dir) -> Dict[str, Any]:
    """The MRPC model (sentence pairs, classification): directory, Keras model, loaded SavedModel."""
    root = str(tmp_path_factory.mktemp("pushed"))
    version_dir, model = push_model(root, "mrpc", tiny_bert_dir)
    return {"dir": version_dir, "model": model, "loaded": tf.saved_model.load(version_dir), "name": "mrpc",
            "model_dir": tiny_bert_dir}


# --- what TF Serving does with a request (the stand-in's side) -----------------------------------------------


def serve_rest(loaded, body: Dict[str, Any]) -> Dict[str, Any]:
    """A columnar REST predict request -> TF Serving's JSON answer: {"outputs": {name: values}}, or
    {"outputs": values} for a single output."""
    signature = loaded.signatures[body.get("signature_name") or "serving_default"]
    inputs = {name: tf.constant(values, tf.string) for name, values in body["inputs"].items()}
    outputs = {name: json_values(value.numpy().tolist()) for name, value in signature(**inputs).items()}
    return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}


def json_values(values: Any) -> Any:
    """Tensor values as TF Serving's REST API writes them: strings (DT_STRING, here "label_name") as JSON text."""
    if isinstance(values, list):
        return [json_values(v) for v in values]
    return values.decode("utf-8") if isinstance(values, bytes) else values


def serve_grpc(loaded, request):
    """A PredictRequest -> the PredictResponse TF Serving returns (outputs as TensorProtos)."""
    from tensorflow_serving.apis import predict_pb2

    signature = loaded.signatures[request.model_spec.signature_name or "serving_default"]
    outputs = signature(**{name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()})
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    for name, value in outputs.items():
        response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
    return response


def direct(loaded, sentence1: List[str], sentence2: Optional[List[str]]) -> Dict[str, np.ndarray]:
    inputs = {"sentence1": tf.constant(sentence1)}
    if sentence2 is not None:
        inputs["sentence2"] = tf.constant(sentence2)
    return {name: value.numpy() for name, value in loaded.signatures["predict_text"](**inputs).items()}


def assert_same(task_name: str, predictions: List[predict.Prediction], expected: Dict[str, np.ndarray]) -> None:
    task = get_task(task_name)
    if task.is_regression:
        np.testing.assert_allclose([p.score for p in predictions], expected["score"], rtol=1e-6)
        return
    np.testing.assert_allclose([p.probabilities for p in predictions], expected["probabilities"], rtol=1e-6)
    assert [p.label_id for p in predictions] == expected["label"].tolist()
    assert [p.label for p in predictions] == [task.label_names[i] for i in expected["label"]]


# --- the contract, in process -------------------------------------------------------------------------------


def test_pushed_layout_and_signatures(pushed):
    version_dir = pushed["dir"]
    assert os.path.basename(os.path.dirname(version_dir)) == "mrpc" and os.path.basename(version_dir).isdigit()
    assert {"saved_model.pb", "variables", "assets"} <= set(os.listdir(version_dir))
    signature = pushed["loaded"].signatures["predict_text"]
    assert sorted(signature.structured_input_signature[1]) == ["sentence1", "sentence2"]
    assert sorted(signature.structured_outputs) == ["label", "label_name", "probabilities"]
    assert sorted(pushed["loaded"].signatures["serving_default"].structured_input_signature[1]) == ["examples"]


def test_rest_body_and_grpc_request_give_the_direct_answers(pushed):
    from tensorflow_serving.apis import predict_pb2

    task, loaded = get_task("mrpc"), pushed["loaded"]
    s1, s2 = [a for a, _ in PAIRS], [b for _, b in PAIRS]
    expected = direct(loaded, s1, s2)
    assert len(set(expected["label"].tolist())) == 2  # the answers differ, so a mix-up would show

    body = predict.build_rest_body(task, s1, s2)
    assert body == {"signature_name": "predict_text", "inputs": {"sentence1": s1, "sentence2": s2}}
    wire_body = json.loads(json.dumps(body))  # exactly what goes over HTTP
    assert_same("mrpc", predict.parse_rest_response(task, json.loads(json.dumps(serve_rest(loaded, wire_body)))),
                expected)

    request = predict.build_grpc_request(task, "mrpc", s1, s2, version=7)
    request = predict_pb2.PredictRequest.FromString(request.SerializeToString())  # exactly what goes over gRPC
    assert (request.model_spec.name, request.model_spec.signature_name, request.model_spec.version.value) == (
        "mrpc", "predict_text", 7)
    assert sorted(request.inputs) == ["sentence1", "sentence2"]
    assert request.inputs["sentence1"].dtype == tf.string.as_datatype_enum
    assert [d.size for d in request.inputs["sentence1"].tensor_shape.dim] == [len(s1)]
    response = predict_pb2.PredictResponse.FromString(serve_grpc(loaded, request).SerializeToString())
    assert_same("mrpc", predict.parse_grpc_response(task, response), expected)


def test_signatures_agree_with_the_keras_model_and_each_other(pushed):
    """predict_text (raw text), serving_default (tf.Examples) and the Keras model on the project's tokenizer."""
    from modules import backbone, preprocessing
    from modules.model import INPUT_NAMES

    s1, s2 = [a for a, _ in PAIRS], [b for _, b in PAIRS]
    expected = direct(pushed["loaded"], s1, s2)
    settings = backbone.tokenizer_settings(pushed["model_dir"])
    features = preprocessing.tokenize_pairs(tf.constant(s1), tf.constant(s2), settings, MAX_SEQ_LENGTH)
    logits = pushed["model"]({name: features[name] for name in INPUT_NAMES}, training=False)
    np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), expected["probabilities"], rtol=1e-5, atol=1e-6)

    examples = [tf.train.Example(features=tf.train.Features(feature={
        "sentence1": tf.train.Feature(bytes_list=tf.train.BytesList(value=[a.encode()])),
        "sentence2": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b.encode()])),
    })).SerializeToString() for a, b in PAIRS]
    from_examples = pushed["loaded"].signatures["serving_default"](examples=tf.constant(examples))
    np.testing.assert_allclose(from_examples["probabilities"].numpy(), expected["probabilities"], rtol=1e-6)


def transform_dir(pushed) -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(pushed["dir"]))), f"transform_{pushed['name']}")


@pytest.fixture(scope="module")
def options_export(pushed, tmp_path_factory) -> str:
    """The pushed model exported with both options of serving.export_serving_model: XLA and bfloat16."""
    import tensorflow_transform as tft

    from modules import serving

    directory = str(tmp_path_factory.mktemp("options") / "export")
    serving.export_serving_model(pushed["model"], tft.TFTransformOutput(transform_dir(pushed)), get_task("mrpc"),
                                 directory, xla_length_bounds=(16, MAX_SEQ_LENGTH), bfloat16=True)
    return directory


def test_export_options_keep_the_contract(pushed, options_export):
    """serving.export_serving_model's XLA and bfloat16 options together: the same signatures (names, inputs, outputs)
    answering like the default export within 1e-2 of the probabilities (bfloat16's tolerance; each option alone:
    tests/test_serving_xla.py), after a load from disk."""
    loaded = tf.saved_model.load(options_export)
    for name, signature in pushed["loaded"].signatures.items():
        assert loaded.signatures[name].structured_input_signature == signature.structured_input_signature
        assert sorted(loaded.signatures[name].structured_outputs) == sorted(signature.structured_outputs)
    s1, s2 = [a for a, _ in PAIRS], [b for _, b in PAIRS]
    expected, answer = direct(pushed["loaded"], s1, s2), direct(loaded, s1, s2)
    assert np.abs(answer["probabilities"] - expected["probabilities"]).max() <= 1e-2
    examples = tf.constant([tf.train.Example(features=tf.train.Features(feature={
        "sentence1": tf.train.Feature(bytes_list=tf.train.BytesList(value=[a.encode()])),
        "sentence2": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b.encode()])),
    })).SerializeToString() for a, b in PAIRS])
    for name in ("serving_default", "bulk_inference"):
        probabilities = loaded.signatures[name](examples=examples)["probabilities"].numpy()
        assert np.abs(probabilities - expected["probabilities"]).max() <= 1e-2


def warmup_shapes(transform_graph_dir: str, logs) -> List[Tuple[int, int]]:
    """(tokenized length, batch size) of each warm-up request, through the task's Transform graph; each request's
    rows must be alike."""
    import tensorflow_transform as tft

    layer = tft.TFTransformOutput(transform_graph_dir).transform_features_layer()
    shapes = []
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.signature_name == "predict_text"
        inputs = {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}
        inputs.setdefault("sentence2", tf.fill(tf.shape(inputs["sentence1"]), ""))  # as predict_text does
        lengths = layer(inputs)["length"].numpy()
        assert len(set(lengths)) == 1
        shapes.append((int(lengths[0]), len(lengths)))
    return shapes


WARMUP_SHAPES = [(bound, batch) for bound in (16, MAX_SEQ_LENGTH) for batch in (1, 2, 4, 8, 16, 32)]


def test_an_xla_export_carries_tf_servings_warmup_requests(pushed, options_export):
    """TF Serving replays assets.extra/tf_serving_warmup_requests when it loads a model: an XLA export carries one
    predict_text request per length bound and batch size up to 32, each tokenized to exactly its bound, so each
    compiles a shape client requests will use; each is answered by the loaded model as the server would. The default
    export compiles nothing and carries none."""
    from tensorflow_serving.apis import prediction_log_pb2

    from modules import serving

    path = os.path.join(options_export, serving.WARMUP_FILE)
    logs = [prediction_log_pb2.PredictionLog.FromString(record.numpy()) for record in tf.data.TFRecordDataset(path)]
    assert warmup_shapes(transform_dir(pushed), logs) == WARMUP_SHAPES
    loaded = tf.saved_model.load(options_export)
    for log in logs:
        answer = serve_grpc(loaded, log.predict_log.request)
        batch = len(log.predict_log.request.inputs["sentence1"].string_val)
        assert tf.make_ndarray(answer.outputs["probabilities"]).shape == (batch, 2)
    assert not os.path.exists(os.path.join(pushed["dir"], serving.WARMUP_FILE))


@pytest.mark.parametrize("task_name", ["stsb", "sst2"])
def test_other_task_kinds_round_trip(tmp_path, tiny_bert_dir, task_name):
    """Regression (a single output: TF Serving's REST answer drops its name) and a single-sentence task (whose
    warm-up requests, one sentence, also tokenize to their bounds)."""
    from modules import serving

    task = get_task(task_name)
    version_dir, _ = push_model(str(tmp_path), task_name, tiny_bert_dir)
    loaded = tf.saved_model.load(version_dir)
    s2 = None if task.text_b is None else [b for _, b in PAIRS]
    expected = direct(loaded, SENTENCES, s2)
    body = predict.build_rest_body(task, SENTENCES, s2)
    assert sorted(body["inputs"]) == (["sentence1"] if s2 is None else ["sentence1", "sentence2"])
    answer = json.loads(json.dumps(serve_rest(loaded, body)))
    if task.is_regression:
        assert isinstance(answer["outputs"], list)  # {"outputs": [score, ...]}
    assert_same(task_name, predict.parse_rest_response(task, answer), expected)
    request = predict.build_grpc_request(task, task_name, SENTENCES, s2)
    assert_same(task_name, predict.parse_grpc_response(task, serve_grpc(loaded, request)), expected)
    logs = serving.warmup_requests(task, (16, MAX_SEQ_LENGTH))
    assert warmup_shapes(str(tmp_path / f"transform_{task_name}"), logs) == WARMUP_SHAPES


def test_client_checks_inputs_and_reads_errors():
    mrpc, sst2 = get_task("mrpc"), get_task("sst2")
    with pytest.raises(ValueError, match="sentence-pair task"):
        predict.build_rest_body(mrpc, ["a"])
    with pytest.raises(ValueError, match="1 sentence1 but 2 sentence2"):
        predict.build_rest_body(mrpc, ["a"], ["b", "c"])
    with pytest.raises(ValueError, match="single-sentence task"):
        predict.build_rest_body(sst2, ["a"], ["b"])
    with pytest.raises(predict.ServingError, match="Servable not found"):
        predict.parse_rest_response(mrpc, {"error": "Servable not found for request: Latest(x)"})
    with pytest.raises(predict.ServingError, match="do not fit"):
        predict.parse_rest_response(mrpc, {"outputs": {"probabilities": [[0.5, 0.5]], "label": [2]}})
    # A multi-task bundle's generic signature pads probabilities to its widest task.
    (answer,) = predict.parse_rest_response(mrpc, {"outputs": {"probabilities": [[0.25, 0.75, 0.0]], "label": [1]}})
    assert (answer.label, answer.probabilities) == ("1", (0.25, 0.75))
    assert predict.rest_url("localhost:8501", "mrpc") == "http://localhost:8501/v1/models/mrpc:predict"
    assert predict.rest_url("https://h:1/", "m", 3) == "https://h:1/v1/models/m/versions/3:predict"


def test_cli_defaults_to_rest_on_8501():
    base = ["--model_name", "mrpc", "--task", "mrpc", "--sentence1", "a", "--sentence2", "b"]
    assert predict.parse_args(base).grpc is False
    assert predict.parse_args(["--rest"] + base).grpc is False
    assert predict.parse_args(["--grpc"] + base).grpc is True
    with pytest.raises(SystemExit):
        predict.parse_args(["--rest", "--grpc"] + base)


def test_read_tsv_takes_glue_files(tmp_path):
    mrpc = tmp_path / "dev.tsv"
    mrpc.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA b.\tC d.\n0\t3\t4\tE.\tF.\n",
                    encoding="utf-8-sig")
    assert predict.read_tsv(str(mrpc), get_task("mrpc")) == (["A b.", "E."], ["C d.", "F."])
    cola = tmp_path / "cola.tsv"  # CoLA's labeled files have no header
    cola.write_text("gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n")
    assert predict.read_tsv(str(cola), get_task("cola")) == (["The sailors rode the breeze clear of the rocks."], None)
    plain = tmp_path / "plain.tsv"
    plain.write_text("sentence1\tsentence2\nx\ty\n")
    assert predict.read_tsv(str(plain), get_task("rte")) == (["x"], ["y"])
    other = tmp_path / "other.tsv"
    other.write_text("text\tlabel\nx\t1\n")
    with pytest.raises(ValueError, match="names neither"):
        predict.read_tsv(str(other), get_task("sst2"))


# --- over real sockets ---------------------------------------------------------------------------------------


class RestStandIn(BaseHTTPRequestHandler):
    """TF Serving's REST predict API on one model: POST /v1/models/<name>[/versions/<n>]:predict."""

    loaded = None
    model_name = ""
    path_pattern = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?:predict$")

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        match = self.path_pattern.match(self.path)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not match or match.group(1) != self.model_name:
            return self.answer(404, {"error": f"Servable not found for request: Latest({match and match.group(1)})"})
        try:
            return self.answer(200, serve_rest(self.loaded, body))
        except Exception as e:  # what the server would say about a bad request
            return self.answer(400, {"error": f"{type(e).__name__}: {e}"})

    def answer(self, status: int, body: Dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def rest_server(pushed):
    handler = type("Handler", (RestStandIn,), {"loaded": pushed["loaded"], "model_name": pushed["name"]})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    watchdog = threading.Timer(SERVER_LIFETIME_SECONDS, server.shutdown)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def grpc_server(pushed):
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 (the service's naming)
            if request.model_spec.name != pushed["name"]:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({request.model_spec.name})")
            try:
                return serve_grpc(pushed["loaded"], request)
            except Exception as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{type(e).__name__}: {e}")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    watchdog = threading.Timer(SERVER_LIFETIME_SECONDS, server.stop, args=(0,))
    watchdog.daemon = True
    watchdog.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        watchdog.cancel()
        server.stop(0).wait(10)


def test_cli_over_rest(pushed, rest_server, tmp_path):
    s1, s2 = [a for a, _ in PAIRS], [b for _, b in PAIRS]
    expected = direct(pushed["loaded"], s1, s2)
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("sentence1\tsentence2\n" + "".join(f"{a}\t{b}\n" for a, b in PAIRS), encoding="utf-8")
    command = [sys.executable, "-m", "pipeline.predict", "--server", rest_server, "--model_name", "mrpc",  # REST: the default
               "--task", "mrpc", "--tsv", str(tsv), "--batch_size", "2", "--json"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["sentence1"], line["sentence2"]) for line in lines] == PAIRS
    assert_same("mrpc", [predict.Prediction(label_id=line["label_id"], label=line["label"],
                                            probabilities=tuple(line["probabilities"])) for line in lines], expected)
    # Human-readable output, and TF Serving's error for an unknown model reaches the user.
    command = command[:command.index("--tsv")] + ["--sentence1", s1[0], "--sentence2", s2[0]]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"label {get_task('mrpc').label_names[expected['label'][0]]}  (0: ")
    command[command.index("mrpc")] = "nope"
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "HTTP 404" in result.stderr and "Servable not found" in result.stderr


def test_client_over_grpc(pushed, grpc_server, capsys):
    s1, s2 = [a for a, _ in PAIRS], [b for _, b in PAIRS]
    expected = direct(pushed["loaded"], s1, s2)
    task = get_task("mrpc")
    assert_same("mrpc", predict.predict_grpc(grpc_server, "mrpc", task, s1, s2), expected)
    predict.main(["--grpc", "--server", grpc_server, "--model_name", "mrpc", "--task", "mrpc", "--json",
                  *[arg for a, b in PAIRS for arg in ("--sentence1", a, "--sentence2", b)]])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["label_id"] for line in lines] == expected["label"].tolist()
    with pytest.raises(predict.ServingError, match="NOT_FOUND"):
        predict.predict_grpc(grpc_server, "nope", task, s1, s2)


# --- saved_model_cli -----------------------------------------------------------------------------------------


def saved_model_cli(args: List[str], register_tf_text: bool) -> subprocess.CompletedProcess:
    """TensorFlow's saved_model_cli; with register_tf_text, run in a Python that imported tensorflow_text first
    (the console script has no flag for op libraries)."""
    if register_tf_text:
        command = [sys.executable, "-c", "import sys, tensorflow_text; from tensorflow.python.tools import "
                                         "saved_model_cli; sys.exit(saved_model_cli.main())"]
    else:
        command = [SAVED_MODEL_CLI]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
    return subprocess.run(command + args, capture_output=True, text=True, timeout=180, env=env)


def test_saved_model_cli_shows_and_runs_the_pushed_model(pushed):
    shown = saved_model_cli(["show", "--dir", pushed["dir"], "--all"], register_tf_text=False)
    assert shown.returncode == 0, shown.stderr[-3000:]
    text = shown.stdout
    for signature in ("serving_default", "predict_text"):
        assert f"signature_def['{signature}']" in text
    predict_text = text[text.index("signature_def['predict_text']"):text.index("signature_def['serving_default']")]
    for name in ("inputs['sentence1']", "inputs['sentence2']", "outputs['label']", "outputs['probabilities']"):
        assert name in predict_text
    assert "dtype: DT_STRING" in predict_text and "Method name is: tensorflow/serving/predict" in predict_text
    ops = set(re.search(r"contains the following ops: \{(.*)\}", text).group(1).replace("'", "").split(", "))
    assert {"FastWordpieceTokenizeWithOffsets", "NormalizeUTF8", "RegexSplitWithOffsets"} <= ops  # TF Text

    ran = saved_model_cli(["run", "--dir", pushed["dir"], "--tag_set", "serve", "--signature_def", "predict_text",
                           "--input_exprs", 'sentence1=["a b"];sentence2=["c d"]'], register_tf_text=True)
    assert ran.returncode == 0, ran.stderr[-3000:]
    values = dict(re.findall(r"Result for output key (\w+):\n(.*?)(?=\nResult for|\Z)", ran.stdout, re.S))
    expected = direct(pushed["loaded"], ["a b"], ["c d"])
    assert int(values["label"].strip("[] \n")) == expected["label"][0]
    probabilities = [float(x) for x in values["probabilities"].replace("[", " ").replace("]", " ").split()]
    np.testing.assert_allclose(probabilities, expected["probabilities"][0], rtol=1e-5)


# --- deployment files ----------------------------------------------------------------------------------------


def test_kubernetes_manifests_fit_together():
    """Parsed and cross-checked (no cluster here): models.config is a valid ModelServerConfig whose base paths
    are under the models mount; the Deployment mounts the ConfigMap it names; the Service targets its ports."""
    import yaml
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    k8s = os.path.join(REPO_ROOT, "serving", "k8s")
    with open(os.path.join(k8s, "deployment.yaml")) as f:
        documents = {d["kind"]: d for d in yaml.safe_load_all(f)}
    with open(os.path.join(k8s, "service.yaml")) as f:
        service = yaml.safe_load(f)
    config_map, deployment = documents["ConfigMap"], documents["Deployment"]
    models = text_format.Parse(config_map["data"]["models.config"], model_server_config_pb2.ModelServerConfig())
    names = [c.name for c in models.model_config_list.config]
    assert names == ["mrpc"]
    assert all(c.model_platform == "tensorflow" and c.model_version_policy.HasField("latest")
               for c in models.model_config_list.config)

    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "tensorflow/serving:2.16.1"
    args = dict(arg.lstrip("-").split("=", 1) for arg in container["args"])
    assert (args["port"], args["rest_api_port"]) == ("8500", "8501")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert args["model_config_file"] == os.path.join(mounts["config"], "models.config")
    assert "persistentVolumeClaim" in volumes["models"]
    assert all(c.base_path.startswith(mounts["models"] + "/") for c in models.model_config_list.config)
    assert container["readinessProbe"]["httpGet"]["path"] == f"/v1/models/{names[0]}/metadata"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}

    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert {(p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {(8500, "grpc"), (8501, "http")}
