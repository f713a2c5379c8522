"""Client of the pushed model under TensorFlow Serving: raw sentences in, labels (or regression scores) out.

    python -m pipeline.predict --model_name mrpc --task mrpc --sentence1 "The cat sat." --sentence2 "A cat sat."
    python -m pipeline.predict --grpc --server localhost:8500 --model_name mrpc --task mrpc --tsv MRPC/dev.tsv
    python -m pipeline.predict --model_name glue --task sst2 --signature sst2 --sentence1 "A great film."
    python -m pipeline.predict --model_name tickets --task_spec tickets.yaml --sentence1 "My invoice is wrong."
    python -m pipeline.predict --task mrpc --input MRPC/test.tsv --output MRPC.tsv --saved_model outputs/serving/mrpc/<v>
    python -m pipeline.predict --task_spec tickets.yaml --input new.csv --output new_predictions.csv --model_name tickets

--input/--output: a whole unlabelled file, read the way the pipeline reads the task's test files (its format and
columns; a malformed row stops it, naming file:line) and written the way the pipeline writes their predictions
(modules/predictions.py: GLUE's index/prediction TSV, or the input's format with id, label and probabilities),
in batches of --batch_size, from a SavedModel on this machine (--saved_model: a pushed version, or a bundle with
--signature <task>) or from TF Serving (--model_name).

It calls the SavedModel's raw-text signature ("predict_text" by default; a multi-task bundle's per-task
signature with --signature <task>), whose inputs are `sentence1` [B] and, for sentence-pair tasks,
`sentence2` [B] strings, and prints per example the label the model returns ("label_name"; the task
description's label for the class id when a model has no such output) with the class probabilities, or
the score of a regression task. The task (--task, or --task_spec for your own dataset) says which inputs
to send. --json prints one JSON object per example instead.

REST (default, port 8501): POST /v1/models/<name>[/versions/<v>]:predict with the columnar body
    {"signature_name": "predict_text", "inputs": {"sentence1": [...], "sentence2": [...]}}
gRPC (--grpc, port 8500): PredictionService.Predict with a tensorflow_serving.apis PredictRequest.
Building requests and reading responses are pure functions (build_rest_body, parse_rest_response,
build_grpc_request, parse_grpc_response), testable without a server. The REST path needs only the
standard library; gRPC needs grpcio, tensorflow-serving-api and TensorFlow (for the tensor protos).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from modules.glue import FEATURE_TEXT_A, FEATURE_TEXT_B, GlueTask, get_task, load_task_spec
from pipeline import console

DEFAULT_SIGNATURE = "predict_text"  # modules.serving.TEXT_SIGNATURE
# Output names of the signature (modules.metrics; repeated so that this client does not import TFMA).
OUTPUT_PROBABILITIES, OUTPUT_LABEL, OUTPUT_LABEL_NAME, OUTPUT_SCORE = "probabilities", "label", "label_name", "score"
REST_PORT, GRPC_PORT = 8501, 8500
DEFAULT_BATCH_SIZE = 64
PROGRESS_ROWS = 2000  # --input files longer than this print a progress line every 10 batches
DEFAULT_TIMEOUT_SECONDS = 30.0


class ServingError(RuntimeError):
    """The server refused the request or answered something this client cannot read."""


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One example's answer: a class (id, label value, probabilities) or a regression score."""

    label_id: Optional[int] = None
    label: Optional[str] = None
    probabilities: Optional[Tuple[float, ...]] = None
    score: Optional[float] = None

    def as_dict(self) -> Dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items() if v is not None}


# --- requests ---------------------------------------------------------------------------------------------


def signature_inputs(task: GlueTask, sentence1: Sequence[str], sentence2: Optional[Sequence[str]] = None
                     ) -> Dict[str, List[str]]:
    """The signature's inputs: sentence1 (and sentence2 for sentence-pair tasks), one string per example."""
    sentence1 = list(sentence1)
    if not sentence1:
        raise ValueError("No sentences to send.")
    if task.text_b is None:
        if sentence2 is not None and any(sentence2):
            raise ValueError(f"{task.name} is a single-sentence task: its signature has no {FEATURE_TEXT_B!r} input.")
        return {FEATURE_TEXT_A: sentence1}
    if sentence2 is None:
        raise ValueError(f"{task.name} is a sentence-pair task: give {FEATURE_TEXT_B} too.")
    sentence2 = list(sentence2)
    if len(sentence2) != len(sentence1):
        raise ValueError(f"{len(sentence1)} sentence1 but {len(sentence2)} sentence2 values.")
    return {FEATURE_TEXT_A: sentence1, FEATURE_TEXT_B: sentence2}


def build_rest_body(task: GlueTask, sentence1: Sequence[str], sentence2: Optional[Sequence[str]] = None,
                    signature: str = DEFAULT_SIGNATURE) -> Dict[str, Any]:
    """The JSON body of a REST predict request, in TF Serving's columnar ("inputs") format."""
    return {"signature_name": signature, "inputs": signature_inputs(task, sentence1, sentence2)}


def rest_url(server: str, model_name: str, version: Optional[int] = None) -> str:
    """http://<server>/v1/models/<name>[/versions/<v>]:predict (server "host:port", or a URL with its scheme)."""
    base = server if "://" in server else f"http://{server}"
    path = f"/v1/models/{model_name}" + (f"/versions/{version}" if version is not None else "")
    return base.rstrip("/") + path + ":predict"


def build_grpc_request(task: GlueTask, model_name: str, sentence1: Sequence[str],
                       sentence2: Optional[Sequence[str]] = None, signature: str = DEFAULT_SIGNATURE,
                       version: Optional[int] = None):
    """A tensorflow_serving.apis.predict_pb2.PredictRequest for the raw-text signature."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for name, values in signature_inputs(task, sentence1, sentence2).items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(values, dtype=tf.string, shape=[len(values)]))
    return request


# --- responses ----------------------------------------------------------------------------------------------


def predictions_from_outputs(task: GlueTask, outputs: Mapping[str, Any]) -> List[Prediction]:
    """Predictions from the signature's outputs (name -> array-like): probabilities and label, or score."""
    import numpy as np

    if task.is_regression:
        if OUTPUT_SCORE not in outputs:
            raise ServingError(f"The response has no {OUTPUT_SCORE!r} output (got {sorted(outputs)}): not a regression model?")
        return [Prediction(score=float(s)) for s in np.asarray(outputs[OUTPUT_SCORE], dtype=np.float64).reshape(-1)]
    if OUTPUT_PROBABILITIES not in outputs:
        raise ServingError(f"The response has no {OUTPUT_PROBABILITIES!r} output (got {sorted(outputs)}).")
    probabilities = np.asarray(outputs[OUTPUT_PROBABILITIES], dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] < task.num_labels:
        raise ServingError(f"Probabilities of shape {probabilities.shape} do not fit {task.name}'s {task.num_labels} labels.")
    probabilities = probabilities[:, :task.num_labels]  # a bundle's generic signature pads to its widest task
    if OUTPUT_LABEL in outputs:
        label_ids = np.asarray(outputs[OUTPUT_LABEL]).reshape(-1).astype(np.int64)
    else:
        label_ids = probabilities.argmax(axis=1)
    if len(label_ids) != len(probabilities) or not all(0 <= i < task.num_labels for i in label_ids):
        raise ServingError(f"Labels {label_ids.tolist()} do not fit {task.name}'s {task.num_labels} labels.")
    if OUTPUT_LABEL_NAME in outputs:
        names = [n.decode("utf-8") if isinstance(n, bytes) else str(n)
                 for n in np.asarray(outputs[OUTPUT_LABEL_NAME], dtype=object).reshape(-1)]
    else:
        names = [task.label_names[int(i)] for i in label_ids]
    return [Prediction(label_id=int(i), label=name, probabilities=tuple(float(p) for p in row))
            for i, name, row in zip(label_ids, names, probabilities)]


def parse_rest_response(task: GlueTask, body: Mapping[str, Any]) -> List[Prediction]:
    """Predictions from a columnar REST response: {"outputs": {name: values}}, or {"outputs": values} when the
    signature has a single output (TF Serving then omits its name: STS-B's "score")."""
    if "error" in body:
        raise ServingError(f"TF Serving: {body['error']}")
    if "outputs" not in body:
        raise ServingError(f"Not a columnar predict response (keys {sorted(body)}).")
    outputs = body["outputs"]
    if not isinstance(outputs, Mapping):
        outputs = {OUTPUT_SCORE if task.is_regression else OUTPUT_PROBABILITIES: outputs}
    return predictions_from_outputs(task, outputs)


def parse_grpc_response(task: GlueTask, response) -> List[Prediction]:
    """Predictions from a tensorflow_serving.apis.predict_pb2.PredictResponse."""
    import tensorflow as tf

    return predictions_from_outputs(task, {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()})


# --- transport ------------------------------------------------------------------------------------------------


def predict_rest(server: str, model_name: str, task: GlueTask, sentence1: Sequence[str],
                 sentence2: Optional[Sequence[str]] = None, signature: str = DEFAULT_SIGNATURE,
                 version: Optional[int] = None, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> List[Prediction]:
    data = json.dumps(build_rest_body(task, sentence1, sentence2, signature)).encode("utf-8")
    request = urllib.request.Request(rest_url(server, model_name, version), data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as e:  # TF Serving explains errors in a JSON body {"error": ...}
        text = e.read().decode("utf-8", "replace")
        try:
            message = json.loads(text).get("error", text)
        except ValueError:
            message = text
        raise ServingError(f"HTTP {e.code} from {request.full_url}: {message}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ServingError(f"Cannot reach TF Serving at {request.full_url}: {e}") from None
    predictions = parse_rest_response(task, body)
    if len(predictions) != len(sentence1):
        raise ServingError(f"Sent {len(sentence1)} examples, got {len(predictions)} answers.")
    return predictions


def predict_grpc(server: str, model_name: str, task: GlueTask, sentence1: Sequence[str],
                 sentence2: Optional[Sequence[str]] = None, signature: str = DEFAULT_SIGNATURE,
                 version: Optional[int] = None, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> List[Prediction]:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = build_grpc_request(task, model_name, sentence1, sentence2, signature, version)
    with grpc.insecure_channel(server) as channel:
        try:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)
        except grpc.RpcError as e:
            raise ServingError(f"gRPC {e.code().name} from {server}: {e.details()}") from None
    predictions = parse_grpc_response(task, response)
    if len(predictions) != len(sentence1):
        raise ServingError(f"Sent {len(sentence1)} examples, got {len(predictions)} answers.")
    return predictions


# --- command line -------------------------------------------------------------------------------------------


def read_tsv(path: str, task: GlueTask) -> Tuple[List[str], Optional[List[str]]]:
    """Sentences of a TSV file with a header naming the task's GLUE columns (e.g. MRPC's "#1 String") or
    sentence1/sentence2; a header-less file with the task's GLUE columns (CoLA) works too. UTF-8, BOM allowed."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = [row for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if row]
    if not rows:
        raise ValueError(f"{path} is empty.")
    candidates = [(task.text_a, task.text_b), (FEATURE_TEXT_A, FEATURE_TEXT_B if task.text_b else None)]
    for column_a, column_b in candidates:
        if column_a in rows[0] and (column_b is None or column_b in rows[0]):
            header, rows = rows[0], rows[1:]
            break
    else:
        if task.columns is None or len(rows[0]) != len(task.columns):
            raise ValueError(f"{path}: the first line names neither {task.text_a!r}/{task.text_b!r} nor "
                             f"{FEATURE_TEXT_A!r}/{FEATURE_TEXT_B!r} columns.")
        header, (column_a, column_b) = list(task.columns), candidates[0]
    a, b = header.index(column_a), header.index(column_b) if column_b else None
    short = [i + 2 for i, row in enumerate(rows) if len(row) <= max(a, b or 0)]
    if short:
        raise ValueError(f"{path}: lines {short[:5]} have too few columns.")
    return [row[a] for row in rows], ([row[b] for row in rows] if b is not None else None)


def saved_model_predictor(path: str, signature: str):
    """A function (task, sentence1, sentence2) -> predictions calling `signature` of a SavedModel in this process."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the tokenizer ops inside the signature)

    try:
        function = tf.saved_model.load(path).signatures[signature]
    except (OSError, ValueError) as e:
        raise ValueError(f"--saved_model {path}: cannot load a SavedModel ({e}).") from None
    except KeyError:
        raise ValueError(f"--saved_model {path} has no signature {signature!r}.") from None

    def predict(task: GlueTask, sentence1: Sequence[str], sentence2: Optional[Sequence[str]]) -> List[Prediction]:
        inputs = {name: tf.constant(values) for name, values in signature_inputs(task, sentence1, sentence2).items()}
        return predictions_from_outputs(task, {name: value.numpy() for name, value in function(**inputs).items()})

    return predict


def predict_file(task: GlueTask, input_path: str, output_path: str, predict, batch_size: int) -> int:
    """Predicts every row of an unlabelled file and writes the predictions file; returns the number of rows."""
    import time

    from components.glue_example_gen.executor import read_examples
    from modules.glue import FEATURE_INDEX
    from modules.predictions import PredictionRow, format_predictions

    def text(example, name: str) -> str:
        return example.features.feature[name].bytes_list.value[0].decode("utf-8")

    examples = list(read_examples(input_path, task, labeled=False))
    rows, start, progress = [], time.time(), len(examples) > PROGRESS_ROWS
    for number, offset in enumerate(range(0, len(examples), batch_size), start=1):
        batch = examples[offset:offset + batch_size]
        sentence2 = [text(e, FEATURE_TEXT_B) for e in batch] if task.text_b else None
        answers = predict(task, [text(e, FEATURE_TEXT_A) for e in batch], sentence2)
        for example, answer in zip(batch, answers):
            rows.append(PredictionRow(example.features.feature[FEATURE_INDEX].int64_list.value[0],
                                      label_id=answer.label_id, probabilities=answer.probabilities, score=answer.score))
        done, seconds = len(rows), time.time() - start
        if progress and (number % 10 == 0 or done == len(examples)):
            rate = done / max(seconds, 1e-9)
            print(f"{done}/{len(examples)} rows, {rate:.1f} rows/s, ETA {(len(examples) - done) / rate:.0f} s",
                  file=sys.stderr)
    text_out = format_predictions(task, "test", rows)
    temp = f"{output_path}.tmp"
    with open(temp, "w", encoding="utf-8", newline="") as f:
        f.write(text_out)
    os.replace(temp, output_path)  # never a half-written predictions file
    return len(rows)


def format_prediction(task: GlueTask, prediction: Prediction) -> str:
    if task.is_regression:
        return f"score {prediction.score:.4f}"
    probabilities = "  ".join(f"{name}: {p:.4f}" for name, p in zip(task.label_names, prediction.probabilities))
    return f"label {prediction.label}  ({probabilities})"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    protocol = parser.add_mutually_exclusive_group()
    protocol.add_argument("--rest", dest="grpc", action="store_false", help="REST API (the default)")
    protocol.add_argument("--grpc", dest="grpc", action="store_true", help="gRPC PredictionService")
    parser.set_defaults(grpc=False)  # REST unless --grpc (store_false alone would default to True)
    parser.add_argument("--server", help=f"host:port (default localhost:{REST_PORT} for REST, localhost:{GRPC_PORT} for gRPC)")
    parser.add_argument("--model_name", help="the model's name in TF Serving (MODEL_NAME / models.config)")
    parser.add_argument("--saved_model", help="with --input: a SavedModel directory on this machine instead of TF Serving")
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument("--task", help="GLUE task: gives the inputs to send (one or two sentences)")
    task.add_argument("--task_spec", help="your own dataset's task spec file (YAML or JSON), instead of --task")
    parser.add_argument("--signature", default=DEFAULT_SIGNATURE,
                        help=f"signature to call (default {DEFAULT_SIGNATURE}; a multi-task bundle's task name)")
    parser.add_argument("--model_version", type=int, help="a specific version (default: the one the server serves)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--sentence1", action="append", help="a sentence (repeat for a batch)")
    source.add_argument("--tsv", help="a TSV file of examples (GLUE layout, or sentence1/sentence2 columns)")
    source.add_argument("--input", help="an unlabelled file in the task's test format; its predictions go to --output")
    parser.add_argument("--output", help="with --input: the predictions file to write")
    parser.add_argument("--sentence2", action="append", help="the second sentence of a pair (as often as --sentence1)")
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="examples per request")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, help="seconds per request")
    parser.add_argument("--json", action="store_true", help="one JSON object per example")
    console.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    if args.batch_size <= 0:
        parser.error("--batch_size must be positive.")
    if args.tsv and args.sentence2:
        parser.error("--sentence2 goes with --sentence1, not --tsv.")
    if bool(args.input) != bool(args.output):
        parser.error("--input and --output go together.")
    if args.saved_model and not args.input:
        parser.error("--saved_model goes with --input (single sentences and --tsv ask TF Serving).")
    if not args.saved_model and not args.model_name:
        parser.error("--model_name is required (or --input with --saved_model).")
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    server = args.server or f"localhost:{GRPC_PORT if args.grpc else REST_PORT}"
    predict = predict_grpc if args.grpc else predict_rest
    try:
        task = load_task_spec(args.task_spec) if args.task_spec else get_task(args.task)
        if not args.input:
            sentence1, sentence2 = read_tsv(args.tsv, task) if args.tsv else (args.sentence1, args.sentence2)
            signature_inputs(task, sentence1, sentence2)  # check before sending anything
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    if args.input:
        try:
            if args.saved_model:
                predictor = saved_model_predictor(args.saved_model, args.signature)
            else:
                def predictor(task: GlueTask, sentence1: Sequence[str], sentence2: Optional[Sequence[str]]):
                    return predict(server, args.model_name, task, sentence1, sentence2, args.signature,
                                   args.model_version, args.timeout)
            rows = predict_file(task, args.input, args.output, predictor, args.batch_size)
        except (ValueError, OSError, ServingError) as e:
            sys.exit(f"error: {e}")
        print(f"wrote {args.output}: {rows} predictions")
        return
    for start in range(0, len(sentence1), args.batch_size):
        batch_a = sentence1[start:start + args.batch_size]
        batch_b = sentence2[start:start + args.batch_size] if sentence2 is not None else None
        try:
            predictions = predict(server, args.model_name, task, batch_a, batch_b, args.signature,
                                  args.model_version, args.timeout)
        except ServingError as e:
            sys.exit(f"error: {e}")
        for i, prediction in enumerate(predictions):
            if args.json:
                example = {FEATURE_TEXT_A: batch_a[i], **({FEATURE_TEXT_B: batch_b[i]} if batch_b else {})}
                print(json.dumps({**example, **prediction.as_dict()}, ensure_ascii=False))
            else:
                pair = f"{batch_a[i]!r}" + (f" / {batch_b[i]!r}" if batch_b else "")
                print(f"{format_prediction(task, prediction)}  {pair}")


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `... | head` ends quietly
    console.setup_command(sys.argv[1:])  # before --grpc imports TensorFlow (pipeline/console.py)
    main()
