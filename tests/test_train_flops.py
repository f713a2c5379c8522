"""bench.train_throughput.flops_per_example, the FLOPs its GFLOP/s and shares of the matmul limit rest on,
against a hand count on the tiny BERT's config (hidden 32, intermediate 64, 2 layers)."""
from __future__ import annotations

from tiny_bert import write_tiny_bert


def test_flops_per_example_is_the_hand_count(tmp_path):
    from bench.train_throughput import adapter_params, flops_per_example
    from modules import backbone
    from modules.adapters import AdapterConfig
    from modules.model import AdapterBertClassifier

    model_dir = write_tiny_bert(tmp_path / "tiny")
    config = backbone.load_config(model_dir)
    model = AdapterBertClassifier(backbone.load_backbone(model_dir), 2, AdapterConfig(bottleneck_size=4))
    # Houlsby: 2 adapters in each of 2 layers, each 32x4 down and 4x32 up.
    assert adapter_params(model) == 2 * 2 * (32 * 4 + 4 * 32) == 1024

    seq = 8
    # Per layer: Q, K, V, attention output 4 * 32 * 32 = 4096; feed-forward 32 * 64 + 64 * 32 = 4096.
    encoder_matrices = 2 * (4096 + 4096)                        # 16,384 weights each token passes through
    attention = 2 * (2 * seq * 32 + 2 * seq * 32)               # QK^T and AV per token, 2 layers: 2,048 FLOPs
    full_forward = seq * (2 * encoder_matrices + attention)     # 8 * 34,816 = 278,528
    adapter_forward = seq * (2 * (encoder_matrices + 1024) + attention)  # 8 * 36,864 = 294,912

    # Adapter training: forward and the gradient carried down (frozen weights get none); full: also every weight's.
    assert flops_per_example(config, seq, adapter_params(model)) == {"forward": adapter_forward,
                                                                     "train": 2 * adapter_forward}
    assert flops_per_example(config, seq, full_finetune=True) == {"forward": full_forward, "train": 3 * full_forward}
