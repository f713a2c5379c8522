"""AdapterDrop and the cached frozen prefix: training throughput of MiniLM at fixed length 128, batch 32.

    python -m bench.adapter_drop [--steps 3] [--repeats 3] [--drops 0 1 2 3] [--no-adapterhub] [--no-mrpc]
    python -m bench.adapter_drop --mrpc-only      # the MRPC cache part alone (bench/results/adapter_drop_mrpc.json)
    python -m bench.adapter_drop --bert-base --drops 0 6 --steps 2   # a BERT-base-sized random backbone
                                                  # (12 layers, hidden 768; bench/results/adapter_drop_bert_base.json)

Variants, measured in one process and interleaved (A, B, C, ... A, B, C, ...), medians of the repeats:
  K=k            trainer.build_model(TrainingConfig(adapter_drop=k)) + trainer.compile_model, Keras fit on token
                 ids: the embeddings and the lowest k layers run forward (inference mode) in every step
  K=k cached     the same, fed the frozen prefix's output (float16, as modules/prefix_cache hands it to the
                 model): only the top 6 - k layers run
  full           full fine-tuning (every weight trains, no adapters)
  adapterhub K=k AdapterHub's Houlsby adapters (bottleneck 64) with its own AdapterDrop (leave_out=[0..k-1]),
                 on the same MiniLM weights: bench/studies/adapterhub_drop.py, a subprocess run by $ADAPTERHUB_PYTHON
                 (skipped, and said so, if that Python is missing), asked for one measurement at its turn in the
                 rotation
Each measurement is `--steps` training steps on one synthetic batch (bench.train_throughput.synthetic_batch).
The cache is built once before training: its cost per example (embeddings + k layers, inference, batch 32,
length 128) is measured too, and "cached, 10 epochs" charges a tenth of it to every epoch.

With the real MRPC data (GLUE_DIR), the cache of its 3,668 training pairs at K = 2 is built as the Trainer
builds it (length-bucketed, each example at its own length): seconds, bytes, MB per 1,000 examples; its
input pipeline is read once (seconds per epoch without training); and SST-2's training sentences are
tokenised to give the size its cache would have.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from typing import Dict, List

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from bench.common import REPO_ROOT

BATCH, SEQ = 32, 128
# AdapterHub's venv (docs/adapterhub.md): $ADAPTERHUB_PYTHON, else ../hubenv beside the project.
HUB_PYTHON = os.environ.get("ADAPTERHUB_PYTHON", os.path.join(REPO_ROOT, "..", "hubenv", "bin", "python"))


class AdapterHub:
    """bench/studies/adapterhub_drop.py as a subprocess answering one measurement per request."""

    SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "studies", "adapterhub_drop.py")

    def __init__(self, model_dir: str, drops: List[int], threads: int = 0, python: str = ""):
        self.python = python or HUB_PYTHON
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        self.process = subprocess.Popen([self.python, self.SCRIPT, model_dir, "--drops", *map(str, drops)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = self._answer()
        self.cpu_seconds_per_step: Dict[int, List[float]] = {k: [] for k in drops}  # float32 measurements
        self.last_cpu_seconds_per_step = float("nan")

    def _answer(self) -> Dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.python} {self.SCRIPT} ended early (exit {self.process.wait()})")
        return json.loads(line)

    def measure(self, drop: int, steps: int, bf16: bool = False, compile: bool = False) -> float:
        """Examples/s of `steps` AdapterHub training steps at K = drop (bf16: under torch.autocast bfloat16;
        compile: under torch.compile, compiled in the first such call). Raises RuntimeError if torch.compile fails."""
        self.process.stdin.write(f"{drop} {steps}{' bf16' if bf16 else ''}{' compile' if compile else ''}\n")
        self.process.stdin.flush()
        answer = self._answer()
        if "error" in answer:
            raise RuntimeError(f"torch.compile failed in AdapterHub's Python: {answer['error']}")
        self.last_cpu_seconds_per_step = answer["cpu_seconds_per_step"]
        if not (bf16 or compile):
            self.cpu_seconds_per_step[drop].append(answer["cpu_seconds_per_step"])
        return answer["examples_per_second"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def random_bert_base(directory: str) -> str:
    """A BERT-base-sized backbone with random weights (what is measured is speed), MiniLM's uncased vocabulary
    (the same 30,522 WordPieces as bert-base-uncased); returns the model directory."""
    import shutil

    import transformers
    from modules import backbone

    os.makedirs(directory, exist_ok=True)
    minilm = backbone.resolve_model_dir("minilm")
    for name in ("vocab.txt", "tokenizer_config.json"):
        if os.path.exists(os.path.join(minilm, name)):
            shutil.copy(os.path.join(minilm, name), directory)
    backbone.build_backbone(transformers.BertConfig()).save_pretrained(directory)  # BertConfig(): BERT-base
    return directory


def mrpc_cache(common) -> Dict:
    """The real MRPC training set's prefix cache at K = 2, and SST-2's cache size from its token counts."""
    import numpy as np
    import tensorflow as tf
    from bench.studies.mrpc_epoch import write_transformed
    from modules import trainer
    from modules.glue import get_task
    from modules.prefix_cache import CACHE_DTYPE, build_prefix_cache
    from modules.config import TrainingConfig

    path = os.path.join(common.GLUE_DIR, "MRPC", "train.tsv")
    if not os.path.isfile(path):
        return {"skipped": f"{path} not found"}
    records = os.path.join(common.scratch_dir("bench-drop-"), "transformed-00000-of-00001.gz")
    num_examples = write_transformed(path, records)
    spec = {k: tf.io.FixedLenFeature([SEQ], tf.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    spec.update(length=tf.io.FixedLenFeature([], tf.int64), label=tf.io.FixedLenFeature([], tf.int64))
    config = TrainingConfig(adapter_drop=2)
    model = trainer.build_model(config, get_task("mrpc"))
    boundaries = [b for b in trainer.BUCKET_BOUNDARIES if b < SEQ]
    start = time.perf_counter()
    cache = build_prefix_cache(model, trainer.read_transformed([records], spec), BATCH, boundaries)
    build_seconds = time.perf_counter() - start
    tokens = int(cache.hidden_states.row_lengths().numpy().sum())
    read = {}
    for name, prefix_cache in (("token ids", None), ("cached prefix", cache)):
        dataset = trainer.make_dataset([records], spec, BATCH, SEQ, shuffle_seed=42, bucketing=True,
                                       prefix_cache=prefix_cache)
        start = time.perf_counter()
        for _ in dataset:
            pass
        read[name] = time.perf_counter() - start
    result = {"examples": num_examples, "tokens": tokens, "mean_length": tokens / num_examples,
              "build_seconds": build_seconds, "bytes": cache.nbytes,
              "mb_per_1000_examples": cache.nbytes / num_examples * 1000 / 1e6,
              "input_pipeline_seconds_per_epoch": read}
    sst2 = os.path.join(common.GLUE_DIR, "SST-2", "train.tsv")
    if os.path.isfile(sst2):
        from components.glue_example_gen.executor import read_examples
        from modules import backbone
        from modules.glue import FEATURE_TEXT_A
        from modules.preprocessing import BertPairTokenizer

        tokenizer = BertPairTokenizer(backbone.tokenizer_settings(backbone.resolve_model_dir("minilm")), SEQ)
        sentences = [e.features.feature[FEATURE_TEXT_A].bytes_list.value[0]
                     for e in read_examples(sst2, get_task("sst2"), labeled=True)]
        sst2_tokens = sum(int(tokenizer(tf.constant(sentences[i:i + 4096]))["length"].numpy().sum())
                          for i in range(0, len(sentences), 4096))
        itemsize = np.dtype(CACHE_DTYPE).itemsize
        result["sst2"] = {"examples": len(sentences), "tokens": sst2_tokens,
                          "cache_bytes_minilm": sst2_tokens * 384 * itemsize,
                          "cache_bytes_bert_base": sst2_tokens * 768 * itemsize}
    return result


def print_mrpc(mrpc: Dict) -> None:
    if not mrpc or "skipped" in mrpc:
        print(f"MRPC cache not measured: {mrpc.get('skipped', '--no-mrpc')}")
        return
    print(f"\nMRPC prefix cache, K=2: {mrpc['examples']} examples, mean length {mrpc['mean_length']:.1f}, "
          f"{mrpc['bytes'] / 1e6:.1f} MB ({mrpc['mb_per_1000_examples']:.1f} MB per 1,000), "
          f"built in {mrpc['build_seconds']:.1f} s; input pipeline per epoch: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in mrpc["input_pipeline_seconds_per_epoch"].items()))
    if "sst2" in mrpc:
        s = mrpc["sst2"]
        print(f"SST-2 ({s['examples']} examples, {s['tokens']} tokens): cache {s['cache_bytes_minilm'] / 1e9:.2f} GB "
              f"for MiniLM, {s['cache_bytes_bert_base'] / 1e9:.2f} GB for BERT-base")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="training steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved measurements per variant")
    parser.add_argument("--drops", type=int, nargs="+", default=[0, 1, 2, 3], help="AdapterDrop K values")
    parser.add_argument("--no-adapterhub", action="store_true", help="do not measure AdapterHub")
    parser.add_argument("--hub-threads", type=int, default=0,
                        help="AdapterHub's OMP_NUM_THREADS (default: PyTorch's own choice, one per core)")
    parser.add_argument("--no-mrpc", action="store_true", help="skip the MRPC cache measurement")
    parser.add_argument("--mrpc-only", action="store_true", help="only the MRPC cache measurement")
    parser.add_argument("--bert-base", action="store_true",
                        help="a random BERT-base-sized backbone instead of MiniLM (no AdapterHub, no MRPC cache)")
    args = parser.parse_args()
    if args.bert_base:
        args.no_adapterhub = args.no_mrpc = True
    if args.mrpc_only:
        from bench import common

        started = common.machine_state()
        mrpc = mrpc_cache(common)
        print_mrpc(mrpc)
        common.write_results("adapter_drop_mrpc", {"mrpc_cache": mrpc}, started)
        return

    from bench import common
    from bench.train_throughput import CPU_SECONDS_PER_STEP, fit_rate, loop_rate, synthetic_batch, synthetic_dataset

    started = common.machine_state()
    import numpy as np
    import tensorflow as tf
    from modules import backbone, trainer
    from modules.glue import get_task
    from modules.model import PREFIX_OUTPUT
    from modules.config import TrainingConfig

    task = get_task("mrpc")
    features, labels = synthetic_batch()
    model_dir = random_bert_base(common.scratch_dir("bench-bert-base-")) if args.bert_base else "minilm"

    def build(**settings):
        config = TrainingConfig(model=model_dir, **settings)
        model = trainer.build_model(config, task)
        trainer.compile_model(model, config, task, total_steps=10_000)
        return model

    print("building models...", flush=True)
    models, datasets, prefix_functions = {}, {}, {}
    for k in args.drops:
        models[f"K={k}"] = build(adapter_drop=k)
        datasets[f"K={k}"] = synthetic_dataset(features, labels)
        if k:
            model = build(adapter_drop=k)
            prefix_functions[k] = tf.function(model.frozen_prefix)
            cached = {PREFIX_OUTPUT: tf.cast(prefix_functions[k](features), tf.float16),
                      "attention_mask": features["attention_mask"]}
            models[f"K={k} cached"] = model
            datasets[f"K={k} cached"] = synthetic_dataset(cached, labels)
    models["full"] = build(full_finetune=True)
    datasets["full"] = synthetic_dataset(features, labels)
    trainable = {name: int(sum(np.prod(v.shape) for v in m.trainable_variables)) for name, m in models.items()}

    variants = {name: (lambda n=name: fit_rate(models[n], datasets[n], args.steps, n)) for name in models}
    for k, prefix in prefix_functions.items():  # the cache's one-time cost, in examples/s
        variants[f"prefix K={k} (cache build)"] = lambda p=prefix, k=k: loop_rate(
            lambda x, y: p(x), features, labels, args.steps, f"prefix K={k} (cache build)")
    hub = None
    if not args.no_adapterhub:
        if os.path.exists(HUB_PYTHON):
            print("starting AdapterHub...", flush=True)
            hub = AdapterHub(backbone.resolve_model_dir("minilm"), args.drops, args.hub_threads)
            for k in args.drops:
                variants[f"adapterhub K={k}"] = lambda k=k: hub.measure(k, args.steps)
        else:
            print(f"AdapterHub not measured: {HUB_PYTHON} not found (set ADAPTERHUB_PYTHON)")

    print("warm-up (tracing)...", flush=True)
    for name, measure in variants.items():
        if name in models:
            models[name].fit(datasets[name], steps_per_epoch=2, epochs=1, verbose=0)
        elif name.startswith("prefix"):
            measure()
        CPU_SECONDS_PER_STEP.pop(name, None)
    print(f"measuring: {args.repeats} interleaved repeats of {args.steps} steps x {BATCH} examples", flush=True)
    values = common.interleave(variants, args.repeats)
    if hub:
        for k, cpu in hub.cpu_seconds_per_step.items():
            CPU_SECONDS_PER_STEP[f"adapterhub K={k}"] = cpu
        hub.close()
    med = {name: common.median(v) for name, v in values.items()}
    cpu_med = {name: common.median(CPU_SECONDS_PER_STEP.get(name, [])) for name in values}

    def ten_epochs(k: int) -> float:
        """ex/s of 10 epochs on the cache, its one-time build charged to them."""
        return 1 / (1 / med[f"K={k} cached"] + 1 / (10 * med[f"prefix K={k} (cache build)"]))

    base = med["K=0"]
    rows = [[name, trainable.get(name, "-"), med[name], min(values[name]), max(values[name]), cpu_med[name],
             med[name] / base] for name in values]
    ratios = {"K=0 / full": base / med["full"]}
    for k in args.drops:
        if k:
            ratios[f"K={k} / K=0"] = med[f"K={k}"] / base
            ratios[f"K={k} cached / K=0"] = med[f"K={k} cached"] / base
            ratios[f"K={k} cached, 10 epochs / K=0"] = ten_epochs(k) / base
            ratios[f"K={k} cached / full"] = med[f"K={k} cached"] / med["full"]
        if hub:
            project = ten_epochs(k) if k else base
            ratios[f"project / adapterhub, K={k} (project {'cached, 10 epochs' if k else 'K=0'})"] = (
                project / med[f"adapterhub K={k}"])
    print()
    table = common.print_table(["variant", "trainable params", "median ex/s", "min", "max", "CPU s/step",
                                "vs K=0"], rows)
    print()
    common.print_table(["ratio (medians, same run)", "value"], [[k, v] for k, v in ratios.items()])
    mrpc = {} if args.no_mrpc else mrpc_cache(common)
    print_mrpc(mrpc)
    common.write_results("adapter_drop_bert_base" if args.bert_base else "adapter_drop", {
        "settings": {"batch_size": BATCH, "seq_length": SEQ, "steps_per_measurement": args.steps,
                     "repeats": args.repeats,
                     "model": "random BERT-base (12 layers, hidden 768)" if args.bert_base else "minilm (6 layers, hidden 384)",
                     "adapter": "houlsby, bottleneck 64, float32", "drops": args.drops,
                     "data": "one synthetic batch repeated; cached variants: its prefix output in float16"},
        "examples_per_second": {name: {"values": v, "median": med[name]} for name, v in values.items()},
        "cpu_seconds_per_step": {name: cpu_med[name] for name in values},
        "trainable_params": trainable, "ratios": ratios,
        "adapterhub": hub.info if hub else None, "mrpc_cache": mrpc, "table": table,
        "cache_bytes_per_1000_examples_at_128": {"minilm": 1000 * SEQ * 384 * 2, "bert_base": 1000 * SEQ * 768 * 2},
    }, started)


if __name__ == "__main__":
    main()
