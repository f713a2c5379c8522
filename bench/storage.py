"""Bytes on disk: adapter-only weights (modules.model.save_adapter_weights) vs the full SavedModel.

    python -m bench.storage

For MiniLM (the real pretrained backbone) and for a BERT-base-sized config (hidden 768, 12 layers,
intermediate 3072, vocab 30522; random weights: sizes do not depend on values), Houlsby adapters,
bottleneck 64, 2 labels. The full SavedModel is the adapter model saved with tf.saved_model.save and a
serving signature over the three BERT inputs (the pipeline's export adds the tokenizer graph and the
vocabulary, a few hundred KB more; see bench/serving_latency.py for that export). Sizes are
deterministic, so there are no repeats.
"""
from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def measure(name: str, bert, scratch: str):
    import numpy as np
    import tensorflow as tf
    from modules.adapters import AdapterConfig
    from modules.model import AdapterBertClassifier, save_adapter_weights

    model = AdapterBertClassifier(bert, 2, AdapterConfig(bottleneck_size=64))
    adapter_dir, saved_dir = os.path.join(scratch, name, "adapters"), os.path.join(scratch, name, "saved_model")
    save_adapter_weights(model, adapter_dir)
    spec = {n: tf.TensorSpec([None, None], tf.int64, name=n) for n in ("input_ids", "attention_mask", "token_type_ids")}
    serve = tf.function(lambda features: {"logits": model(features, training=False)}, input_signature=[spec])
    tf.saved_model.save(model, saved_dir, signatures=serve.get_concrete_function())
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    total = trainable + int(sum(np.prod(v.shape) for v in model.non_trainable_variables))
    adapter_bytes, saved_bytes = dir_bytes(adapter_dir), dir_bytes(saved_dir)
    return {
        "backbone": name,
        "hidden_size": bert.config.hidden_size, "layers": bert.config.num_hidden_layers,
        "trainable_params": trainable, "total_params": total,
        "adapter_dir_bytes": adapter_bytes,
        "adapter_files": {f: os.path.getsize(os.path.join(adapter_dir, f)) for f in sorted(os.listdir(adapter_dir))},
        "saved_model_bytes": saved_bytes,
        "saved_model_variables_bytes": dir_bytes(os.path.join(saved_dir, "variables")),
        "adapter_percent_of_full": 100.0 * adapter_bytes / saved_bytes,
    }


def main() -> None:
    from bench import common

    started = common.machine_state()
    import transformers
    from modules import backbone

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as scratch:
        rows.append(measure("minilm", backbone.load_backbone("minilm"), scratch))
        base = transformers.BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                       intermediate_size=3072, vocab_size=30522)
        rows.append(measure("bert-base-sized (random)", backbone.build_backbone(base), scratch))
    for r in rows:
        r["target_met (<= 5% for BERT-base)"] = r["adapter_percent_of_full"] <= 5.0 if r["hidden_size"] == 768 else None
    print()
    table = common.print_table(
        ["backbone", "trainable / total params", "adapter dir MB", "SavedModel MB", "adapters % of full", "target <=5%"],
        [[r["backbone"], f'{r["trainable_params"]:,} / {r["total_params"]:,}', r["adapter_dir_bytes"] / 1e6,
          r["saved_model_bytes"] / 1e6, r["adapter_percent_of_full"],
          {None: "-", True: "met", False: "MISSED"}[r["target_met (<= 5% for BERT-base)"]]] for r in rows])
    common.write_results("storage", {"settings": {"adapter": "houlsby, bottleneck 64, train_layer_norms=True",
                                                  "num_labels": 2}, "rows": rows, "table": table}, started)


if __name__ == "__main__":
    main()
