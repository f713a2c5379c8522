"""One frozen backbone, many tasks: a SavedModel serving every task's adapters on a single copy of BERT.

Each task of a bundle is an `AdapterBertClassifier` of its own (its adapters, encoder layer norms when
they were trained, pooler and classifier), but the frozen pretrained weights (embeddings, attention,
feed-forward and every other weight the task did not train) are the SAME `tf.Variable` objects in all
task models: the task backbones are built inside a variable creator scope that hands back the shared
variable instead of creating a new one. A SavedModel stores a variable once per object, so the bundle
holds the backbone once plus one small set of task variables per task. Adapters are inserted into each
task's own `TFBertMainLayer`, which is why the task models cannot share one HF model instance, and
swapping task weights in and out of one model at request time would be neither thread-safe nor
servable as a graph.

Signatures of a bundle (raw text in; the backbone's WordPiece tokenizer runs in the graph with each
task's own max_seq_length, exactly as in that task's single-task "predict_text", modules/serving.py):
  "<task>" (one per task, e.g. "mrpc", "sst2"):
      inputs   sentence1 [B] string, and sentence2 [B] string for sentence-pair tasks
      outputs  as the task's single-task model: probabilities [B, num_labels] float32, label [B] int64
               and label_name [B] string (classification), or score [B] float32 (regression, STS-B)
  "predict" (also "serving_default"): any task, chosen per request or per example
      inputs   task      string, a scalar (one task for the whole batch) or [B] (one per example);
                         task names, case- and dash-insensitive ("SST-2" = "sst2"); an unknown name
                         fails the request (InvalidArgument) naming the bundle's tasks
               sentence1 [B] string
               sentence2 [B] string (ignored by single-sentence tasks: send "")
      outputs  the same structure whatever the task:
               probabilities [B, max_labels] float32: class probabilities, zero-padded beyond the
                             task's num_labels (max_labels = largest num_labels in the bundle);
                             all zeros for a regression task
               label         [B] int64: predicted class, -1 for a regression task
               label_name    [B] string: the task's label value of that class, "" for a regression task
               score         [B] float32: the regression score, or for a classification task the
                             probability of the predicted label
               num_labels    [B] int64: how many columns of probabilities belong to the task
                             (0 for a regression task)
  "all_tasks": every task for the same input, in one call
      inputs   sentence1 [B] string, sentence2 [B] string (ignored by single-sentence tasks)
      outputs  "<task>/<output>" for every task and each output of its own signature, e.g. "mrpc/label",
               "stsb/score"; each equals that task's signature (within float rounding)
      Tasks that read the same tokens (same max_seq_length and number of sentences) and were trained with
      AdapterDrop (K > 0) run the embeddings and their common lowest layers without adapters once, not once
      per task: those layers have the same frozen weights in every such task (`shared_prefixes`).
The tokenizer uses TensorFlow Text ops, as the single-task models' "predict_text" does: `import
tensorflow_text` before `tf.saved_model.load`, and serve with a TF Serving build that has them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import types
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import tensorflow as tf
import transformers

from modules import backbone as backbone_lib
from modules.adapters import AdapterConfig
from modules.glue import BUNDLE_GENERIC_SIGNATURE, FEATURE_TEXT_A, FEATURE_TEXT_B, GlueTask, get_task
from modules.metrics import OUTPUT_LABEL, OUTPUT_LABEL_NAME, OUTPUT_PROBABILITIES, OUTPUT_SCORE
from modules.model import (
    ADAPTER_WEIGHTS_FILE,
    INPUT_NAMES,
    AdapterBertClassifier,
    Untracked,
    load_adapter_weights,
    read_adapter_config,
    variable_key,
)
from modules.preprocessing import BertPairTokenizer
from modules.serving import ADAPTERS_SUBDIR, model_inputs, predict_outputs

GENERIC_SIGNATURE = BUNDLE_GENERIC_SIGNATURE  # no task spec may take this name (modules/glue.py)
ALL_TASKS_SIGNATURE = "all_tasks"
TASK_INPUT = "task"
OUTPUT_NUM_LABELS = "num_labels"
_BACKBONE_SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")


class BundleError(ValueError):
    """A combination of backbone and adapter sets that cannot be bundled; raised before anything is written."""


@dataclasses.dataclass(frozen=True)
class TaskAdapters:
    """One task's adapter-only artifact, as `modules.trainer.run_fn` writes it (JSON config + .npz)."""

    task: GlueTask
    directory: str  # the adapters directory (holding adapter_config.json and adapter_weights.npz)
    config: Dict
    trained_keys: frozenset  # variable keys stored in the .npz: everything this task trained

    @property
    def max_seq_length(self) -> int:
        return int(self.config["max_seq_length"])

    def weights_sha256(self) -> str:
        with tf.io.gfile.GFile(os.path.join(self.directory, ADAPTER_WEIGHTS_FILE), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()


def adapters_directory(path: str) -> str:
    """`path` itself if it holds adapter-only weights, else its `adapters/` subdirectory (a Model artifact's uri)."""
    for candidate in (path, os.path.join(path, ADAPTERS_SUBDIR)):
        if tf.io.gfile.exists(os.path.join(candidate, "adapter_config.json")):
            return candidate
    raise BundleError(
        f"{path} holds no adapter-only weights (adapter_config.json, here or in {ADAPTERS_SUBDIR}/): give the adapters "
        "directory a Trainer wrote, or its Model artifact. Fully fine-tuned models have none and cannot be bundled."
    )


def read_task_adapters(path: str) -> TaskAdapters:
    """Reads and checks one adapter artifact's config and weight names (the weights themselves are loaded later)."""
    directory = adapters_directory(path)
    config = read_adapter_config(directory)
    missing = [key for key in ("task", "max_seq_length", "num_labels", "adapter", "backbone") if key not in config]
    if missing:
        raise BundleError(f"{directory}/adapter_config.json lacks {missing}: not written by the Trainer of this project.")
    try:  # the task description the Trainer saved; adapters of GLUE tasks saved before it existed name the task
        task = GlueTask.from_spec(config["task_spec"]) if "task_spec" in config else get_task(config["task"])
        AdapterConfig(**config["adapter"])
    except (ValueError, TypeError) as e:
        raise BundleError(f"{directory}: {e}") from e
    if config["num_labels"] != task.num_labels:
        raise BundleError(f"{directory}: {config['num_labels']} labels, but task {task.name} has {task.num_labels}.")
    weights_file = os.path.join(directory, ADAPTER_WEIGHTS_FILE)
    if not tf.io.gfile.exists(weights_file):
        raise BundleError(f"{weights_file} is missing.")
    with tf.io.gfile.GFile(weights_file, "rb") as f:
        keys = frozenset(np.load(f).files)
    return TaskAdapters(task=task, directory=directory, config=config, trained_keys=keys)


def check_combination(adapter_sets: Sequence[TaskAdapters], bert_config: transformers.PretrainedConfig) -> None:
    """Refuses duplicate tasks and adapters whose backbone shapes or sequence length do not fit (cheap checks;
    the weights fingerprint is compared when each task model is built, still before anything is written)."""
    if not adapter_sets:
        raise BundleError("No tasks to bundle.")
    seen: Dict[str, str] = {}
    for adapters in adapter_sets:
        name = adapters.task.name
        if name in seen:
            raise BundleError(
                f"Task {name} is given twice ({seen[name]} and {adapters.directory}): a bundle has one model per task."
            )
        seen[name] = adapters.directory
        trained_on = adapters.config["backbone"]
        for key in _BACKBONE_SHAPE_KEYS:
            if trained_on.get(key) != getattr(bert_config, key):
                raise BundleError(
                    f"Task {name}'s adapters ({adapters.directory}) were trained on a backbone with {key}="
                    f"{trained_on.get(key)}; the bundle's backbone has {key}={getattr(bert_config, key)}."
                )
        if adapters.max_seq_length > bert_config.max_position_embeddings:
            raise BundleError(f"Task {name}: max_seq_length {adapters.max_seq_length} exceeds the backbone's "
                              f"{bert_config.max_position_embeddings} positions.")


class SharedBackbone:
    """The pretrained backbone's variables, handed to every task model that does not train them."""

    def __init__(self, bert_model: transformers.TFBertModel):
        self.config = bert_model.config
        self.variables: Dict[str, tf.Variable] = {variable_key(v): v for v in bert_model.variables}

    @contextlib.contextmanager
    def _sharing(self, shared_keys: frozenset) -> Iterator[None]:
        def creator(next_creator, **kwargs):
            name = kwargs.get("name")
            scope = tf.get_current_name_scope()
            # The name the variable would get; variable_key drops the model's instance prefix ("tf_bert_model_3/").
            key = variable_key(types.SimpleNamespace(name=f"{scope}/{name}:0")) if name and scope else None
            if key in shared_keys:
                return self.variables[key]
            return next_creator(**kwargs)

        with tf.variable_creator_scope(creator):
            yield

    def task_model(self, adapters: TaskAdapters) -> AdapterBertClassifier:
        """The task's AdapterBertClassifier with its trained weights loaded and the frozen ones shared.

        Raises BundleError if the adapters were trained on other backbone weights (fingerprint) or settings.
        """
        shared_keys = frozenset(self.variables) - adapters.trained_keys
        with self._sharing(shared_keys):
            bert = backbone_lib.build_backbone(self.config)
        model = AdapterBertClassifier(bert, adapters.task.num_labels, AdapterConfig(**adapters.config["adapter"]))
        try:
            load_adapter_weights(model, adapters.directory)  # checks shapes, settings, fingerprint, weight names
        except ValueError as e:
            raise BundleError(f"Task {adapters.task.name}: {e}") from e
        not_shared = [variable_key(v) for v in model.frozen_variables()
                      if self.variables.get(variable_key(v)) is not v]
        if not_shared:  # the creator scope missed a variable: the bundle would store it twice
            raise RuntimeError(f"Frozen variables of task {adapters.task.name} are not shared with the backbone: {not_shared[:5]}")
        return model


@dataclasses.dataclass(frozen=True)
class SharedPrefix:
    """Tasks that read the same tokens; `sharing` of them run the embeddings and their lowest `layers` once."""

    max_seq_length: int
    pair: bool  # two sentences
    tasks: Tuple[str, ...]
    sharing: Tuple[str, ...]  # the tasks trained with AdapterDrop (K > 0)
    layers: int  # min K over `sharing`: layers no task of `sharing` adapted


class BundleModule(tf.Module):
    """What a bundle SavedModel contains: the shared backbone variables, each task's variables, the signatures."""

    def __init__(self, shared: SharedBackbone, models: Dict[str, AdapterBertClassifier], tasks: Dict[str, GlueTask],
                 tokenizer_settings: backbone_lib.TokenizerSettings, max_seq_lengths: Dict[str, int]):
        super().__init__(name="glue_bundle")
        self.task_names = sorted(models)
        self.tasks = {name: tasks[name] for name in self.task_names}
        self.max_labels = max(task.num_labels for task in self.tasks.values())
        # Saved objects: the backbone variables any task uses, once; then each task's own variables.
        used = {id(v) for model in models.values() for v in model.variables}
        self.backbone_variables = [v for _, v in sorted(shared.variables.items()) if id(v) in used]
        backbone_ids = {id(v) for v in self.backbone_variables}
        self.task_variables = {name: [v for v in model.variables if id(v) not in backbone_ids]
                               for name, model in models.items()}
        tokenizers: Dict[int, BertPairTokenizer] = {}  # one per max_seq_length: tasks alike share the vocabulary
        for length in set(max_seq_lengths.values()):
            tokenizers[length] = BertPairTokenizer(tokenizer_settings, length)
        self._py = Untracked(models=models, model_functions={}, tokenizer_functions={},
                             tokenizers={name: tokenizers[max_seq_lengths[name]] for name in models})

    def task_outputs(self, name: str, sentence1: tf.Tensor, sentence2: Optional[tf.Tensor]) -> Dict[str, tf.Tensor]:
        """One task's outputs, named and shaped as in its single-task model."""
        task = self.tasks[name]
        tokenize = self._tokenizer_function(self._py.tokenizers[name], pair=task.text_b is not None)
        features = model_inputs(tokenize(sentence1, sentence2) if task.text_b is not None else tokenize(sentence1))
        logits = self._model_function(name)(*[features[key] for key in INPUT_NAMES])
        return predict_outputs(task, logits)

    def _tokenizer_function(self, tokenizer: BertPairTokenizer, pair: bool) -> tf.types.experimental.GenericFunction:
        """The tokenizer as one tf.function per (max_seq_length, one or two sentences), shared by the tasks alike."""
        key = (tokenizer.max_seq_length, pair)
        if key not in self._py.tokenizer_functions:
            spec = tf.TensorSpec([None], tf.string)
            if pair:
                function = tf.function(lambda a, b: tokenizer(a, b), input_signature=[spec, spec], autograph=False)
            else:
                function = tf.function(lambda a: tokenizer(a), input_signature=[spec], autograph=False)
            self._py.tokenizer_functions[key] = function
        return self._py.tokenizer_functions[key]

    def _model_function(self, name: str) -> tf.types.experimental.GenericFunction:
        """The task model as one tf.function, traced once and called by both of the task's signatures."""
        if name not in self._py.model_functions:
            model = self._py.models[name]
            spec = tf.TensorSpec([None, None], tf.int64)  # batches cut to their longest example

            @tf.function(input_signature=[spec] * len(INPUT_NAMES), autograph=False)
            def logits(*features):
                return model(dict(zip(INPUT_NAMES, features)), training=False)

            self._py.model_functions[name] = logits
        return self._py.model_functions[name]

    def shared_prefixes(self) -> List[SharedPrefix]:
        """The tasks grouped by the tokens they read; in each group, the AdapterDrop tasks share the embeddings
        and the lowest min(K) layers, which none of them adapted."""
        grouped: Dict[tuple, List[str]] = {}
        for name in self.task_names:
            key = (self._py.tokenizers[name].max_seq_length, self.tasks[name].text_b is not None)
            grouped.setdefault(key, []).append(name)
        prefixes = []
        for (length, pair), names in sorted(grouped.items()):
            drops = [self._py.models[name].adapter_config.adapter_drop for name in names]
            sharing = tuple(name for name, drop in zip(names, drops) if drop > 0)
            prefixes.append(SharedPrefix(length, pair, tuple(names), sharing,
                                         min((drop for drop in drops if drop > 0), default=0)))
        return prefixes

    def all_tasks_outputs(self, sentence1: tf.Tensor, sentence2: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Every task's outputs for the same sentences, each shared frozen prefix computed once."""
        outputs: Dict[str, tf.Tensor] = {}
        for prefix in self.shared_prefixes():
            tokenize = self._tokenizer_function(self._py.tokenizers[prefix.tasks[0]], pair=prefix.pair)
            features = model_inputs(tokenize(sentence1, sentence2) if prefix.pair else tokenize(sentence1))
            if prefix.sharing:
                hidden_states = self._py.models[prefix.sharing[0]].frozen_prefix(features, prefix.layers)
            for name in prefix.tasks:
                model = self._py.models[name]
                if name in prefix.sharing:
                    logits = model.above_prefix(hidden_states, features["attention_mask"], depth=prefix.layers)
                else:
                    logits = model(features, training=False)
                for key, value in predict_outputs(self.tasks[name], logits).items():
                    outputs[f"{name}/{key}"] = value
        return outputs

    def all_tasks_signature(self) -> tf.types.experimental.ConcreteFunction:
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=FEATURE_TEXT_A),
                                      tf.TensorSpec([None], tf.string, name=FEATURE_TEXT_B)], autograph=False)
        def all_tasks(sentence1, sentence2):
            return self.all_tasks_outputs(sentence1, sentence2)

        return all_tasks.get_concrete_function()

    def task_signature(self, name: str) -> tf.types.experimental.ConcreteFunction:
        if self.tasks[name].text_b is None:
            @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=FEATURE_TEXT_A)], autograph=False)
            def serve(sentence1):
                return self.task_outputs(name, sentence1, None)
        else:
            @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=FEATURE_TEXT_A),
                                          tf.TensorSpec([None], tf.string, name=FEATURE_TEXT_B)], autograph=False)
            def serve(sentence1, sentence2):
                return self.task_outputs(name, sentence1, sentence2)
        return serve.get_concrete_function()

    def _generic_outputs(self, name: str, sentence1: tf.Tensor, sentence2: tf.Tensor) -> List[tf.Tensor]:
        """A task's outputs in the fixed structure of the generic signature."""
        task = self.tasks[name]
        outputs = self.task_outputs(name, sentence1, sentence2)
        batch = tf.shape(sentence1)[0]
        if task.is_regression:
            return [tf.zeros([batch, self.max_labels], tf.float32), tf.fill([batch], tf.constant(-1, tf.int64)),
                    tf.fill([batch], ""), outputs[OUTPUT_SCORE], tf.zeros([batch], tf.int64)]
        probabilities, label = outputs[OUTPUT_PROBABILITIES], outputs[OUTPUT_LABEL]
        return [tf.pad(probabilities, [[0, 0], [0, self.max_labels - task.num_labels]]), label,
                outputs[OUTPUT_LABEL_NAME], tf.gather(probabilities, label, batch_dims=1),
                tf.fill([batch], tf.constant(task.num_labels, tf.int64))]

    def generic_signature(self) -> tf.types.experimental.ConcreteFunction:
        names = tf.constant([name.replace("-", "") for name in self.task_names])  # compared as `requested` is

        @tf.function(input_signature=[tf.TensorSpec(None, tf.string, name=TASK_INPUT),
                                      tf.TensorSpec([None], tf.string, name=FEATURE_TEXT_A),
                                      tf.TensorSpec([None], tf.string, name=FEATURE_TEXT_B)], autograph=False)
        def predict(task, sentence1, sentence2):
            tf.debugging.assert_less_equal(tf.rank(task), 1, message="task must be a scalar or a [batch] vector")
            requested = tf.strings.regex_replace(tf.strings.lower(task), "-", "")
            requested = tf.broadcast_to(requested, tf.shape(sentence1))
            matches = tf.equal(requested[:, None], names[None, :])
            known = tf.reduce_all(tf.reduce_any(matches, axis=1))
            unknown = tf.boolean_mask(requested, tf.logical_not(tf.reduce_any(matches, axis=1)))
            with tf.control_dependencies([tf.debugging.Assert(
                    known, ["unknown task:", unknown[:1], f"this bundle serves {', '.join(self.task_names)}"])]):
                task_ids = tf.argmax(tf.cast(matches, tf.int32), axis=1, output_type=tf.int32)
            positions = tf.dynamic_partition(tf.range(tf.shape(sentence1)[0]), task_ids, len(self.task_names))
            parts: List[List[tf.Tensor]] = []
            for name, index in zip(self.task_names, positions):
                s1, s2 = tf.gather(sentence1, index), tf.gather(sentence2, index)
                run = lambda name=name, s1=s1, s2=s2: self._generic_outputs(name, s1, s2)  # noqa: E731
                empty = lambda: [tf.zeros([0, self.max_labels], tf.float32), tf.zeros([0], tf.int64),  # noqa: E731
                                 tf.zeros([0], tf.string), tf.zeros([0], tf.float32), tf.zeros([0], tf.int64)]
                parts.append(tf.cond(tf.size(index) > 0, run, empty))
            keys = [OUTPUT_PROBABILITIES, OUTPUT_LABEL, OUTPUT_LABEL_NAME, OUTPUT_SCORE, OUTPUT_NUM_LABELS]
            return {key: tf.dynamic_stitch(positions, [part[i] for part in parts]) for i, key in enumerate(keys)}

        return predict.get_concrete_function()

    def signatures(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
        signatures = {name: self.task_signature(name) for name in self.task_names}
        generic = self.generic_signature()
        signatures[GENERIC_SIGNATURE] = generic
        signatures["serving_default"] = generic
        signatures[ALL_TASKS_SIGNATURE] = self.all_tasks_signature()
        return signatures


def build_bundle(model: str, adapter_sets: Sequence[TaskAdapters],
                 bert_model: Optional[transformers.TFBertModel] = None) -> BundleModule:
    """Loads the backbone named by `model` once and builds every task on it; raises BundleError on any mismatch.

    Nothing is written: save the result with `save_bundle`.
    """
    model_dir = backbone_lib.resolve_model_dir(model)
    bert_config = backbone_lib.load_config(model_dir)
    check_combination(adapter_sets, bert_config)
    shared = SharedBackbone(bert_model if bert_model is not None else backbone_lib.load_backbone(model))
    models = {adapters.task.name: shared.task_model(adapters) for adapters in adapter_sets}
    return BundleModule(shared, models, {adapters.task.name: adapters.task for adapters in adapter_sets},
                        backbone_lib.tokenizer_settings(model_dir),
                        {adapters.task.name: adapters.max_seq_length for adapters in adapter_sets})


def save_bundle(module: BundleModule, directory: str,
                signatures: Optional[Dict[str, tf.types.experimental.ConcreteFunction]] = None) -> None:
    """Writes the bundle SavedModel (traces the signatures first if they are not given)."""
    tf.saved_model.save(module, directory, signatures=signatures or module.signatures())
