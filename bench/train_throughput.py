"""Training throughput of MiniLM at batch 32, sequence length 128 (fixed): adapters vs full fine-tuning.

    python -m bench.train_throughput [--steps 5] [--repeats 3] [--no-threads] [--adapterhub PYTHON]

Every variant runs the project's code path: AdapterBertClassifier + trainer.compile_model + Keras fit on
the same synthetic batch (random token ids, full attention mask, two segments), repeated `--steps` times
per measurement; measurements are interleaved (A, B, C, ... A, B, C, ...) and medians are reported.

Variants measured in one process:
  adapter            the pipeline's default (Houlsby adapters, bottleneck 64, float32)
  full               full_finetune=True (no adapters, every weight trains)
  forward            the adapter model's forward pass only: tf.function, training=False
  adapter_xla        adapter model compiled with jit_compile=True (XLA)
  adapter_bf16       adapter model built under keras.mixed_precision "mixed_bfloat16"
  adapter_bf16_xla   both
  adapter_bf16_matmul  the float32 adapter model under --precision bfloat16_matmul: TensorFlow rewrites its train
                     step to multiply matrices in bfloat16 and do everything else in float32 (trainer.bfloat16_matmuls)
  adapter_bf16_matmul_xla  the same with --xla on: XLA-compiled, the Dense layers casting to bfloat16 products
  adapterhub         with --adapterhub PYTHON (a Python with PyTorch and AdapterHub's `adapters`, docs/adapterhub.md):
                     AdapterHub's Houlsby adapters (bottleneck 64, gelu) on the same MiniLM weights and batch layout,
                     bench/studies/adapterhub_drop.py at K = 0 in that Python, asked for one measurement at its turn
  adapterhub_bf16    the same under torch.autocast("cpu", dtype=torch.bfloat16)
  adapterhub_compile, adapterhub_bf16_compile   both under torch.compile (dropped, and the error recorded, if
                     torch.compile fails there)
and a breakdown of the adapter and full steps: forward (training=True, with loss) / forward+backward
(GradientTape, gradients of the trainable variables) / whole Keras train step.

The machine's limit, interleaved with the variants: TensorFlow's matmul rate (a tf.function, GFLOP/s counted as
2*m*n*k) at the backbone's shapes, float32 and bfloat16: the tokens of a batch (32 x 128 = 4096 rows) times
hidden x intermediate, intermediate x hidden and hidden x hidden (each as often as one layer has it: 1, 1, 4).
Every variant's rate is also given in GFLOP/s (flops_per_example: the backbone's matrix products) and as a share
of the float32 limit and, for bfloat16 variants, of the bfloat16 one; the targets are training at >= 60% of the
float32 limit and >= 40% of the bfloat16 one.
Thread settings are set at TensorFlow start-up, so they are measured in child processes (one per setting,
rounds interleaved) running the plain adapter variant.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List, Tuple

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

BATCH, SEQ = 32, 128
TARGETS = {"float32": 0.60, "bfloat16": 0.40}  # issue #31: training's share of the matmul limit, per precision
BF16_VARIANTS = ("adapter_bf16", "adapter_bf16_xla", "adapter_bf16_matmul", "adapter_bf16_matmul_xla",
                 "adapterhub_bf16", "adapterhub_bf16_compile")
THREAD_SETTINGS = {  # name -> (intra_op, inter_op, extra env)
    "default(intra=0,inter=0)": (0, 0, {}),
    "intra=2,inter=1": (2, 1, {}),
    "intra=1,inter=1": (1, 1, {}),
    "default,oneDNN off": (0, 0, {"TF_ENABLE_ONEDNN_OPTS": "0"}),
    "default,oneDNN on": (0, 0, {"TF_ENABLE_ONEDNN_OPTS": "1"}),  # TF's default only on AVX512-VNNI/BF16, AMX CPUs
}


def flops_per_example(config, seq_length: int, adapter_params: int = 0, full_finetune: bool = False) -> Dict[str, float]:
    """FLOPs of one example of `seq_length` tokens: {"forward": ..., "train": ...} (a training step's forward and
    backward), counted from the backbone's config so the same count holds for any BERT.

    Only matrix products count, 2 FLOPs per multiply-add, because they are what the matmul limit bounds
    (LayerNorm, softmax, GELU, dropout are elementwise; the embeddings are lookups; the pooler and classifier
    see one token of seq_length). Per token, forward: 2 x the weight-matrix entries it passes through (per layer
    Q, K, V, attention output: 4 h^2; feed-forward in and out: 2 h i; plus the adapters' kernels, adapter_params
    in all) and attention's products QK^T and AV (2 x 2 x seq_length x h per layer).
    Training: the backward pass multiplies by every matrix again to carry the gradient down (one more forward);
    full fine-tuning also forms every weight's gradient (a third forward). Adapter training skips the frozen
    weights' gradients: 2 x forward. That leaves out the adapters' own weight gradients and attention's second
    gradient product (each about 2.5% of an adapter step at MiniLM's sizes), so an adapter step's rate is a
    lower bound.
    """
    layers, hidden, intermediate = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    matrices = layers * (4 * hidden * hidden + 2 * hidden * intermediate) + adapter_params
    attention = layers * 2 * 2 * seq_length * hidden
    forward = seq_length * (2 * matrices + attention)
    return {"forward": float(forward), "train": float((3 if full_finetune else 2) * forward)}


def adapter_params(model) -> int:
    """The entries of the model's adapter kernels (down and up projections), which every token passes through."""
    import numpy as np

    return int(sum(np.prod(v.shape) for adapter in model.adapters for v in adapter.weights if len(v.shape) == 2))


def matmul_shapes(config, rows: int) -> List[Tuple[int, int, int, int]]:
    """(m, k, n, times per layer) of the backbone's weight matmuls for `rows` tokens."""
    hidden, intermediate = config.hidden_size, config.intermediate_size
    return [(rows, hidden, intermediate, 1), (rows, intermediate, hidden, 1), (rows, hidden, hidden, 4)]


class MatmulLimit:
    """TensorFlow's matmul rate at the backbone's shapes in one dtype: the most a training step's matrix products
    can run at here. A measurement times `repeats` x one layer's matmuls; GFLOP/s = 2*m*n*k per product over the
    time of all, and per shape."""

    def __init__(self, shapes: List[Tuple[int, int, int, int]], dtype: str):
        import tensorflow as tf

        self.shapes = shapes
        # One tf.function per shape, each traced once (one wrapping tf.matmul for all would retrace per shape).
        self.matmuls = [tf.function(lambda a, b: tf.matmul(a, b)) for _ in shapes]
        self.operands = [(tf.cast(tf.random.uniform((m, k)), dtype), tf.cast(tf.random.uniform((k, n)), dtype))
                         for m, k, n, _ in shapes]
        self.per_shape: Dict[str, List[float]] = {f"{m}x{k} @ {k}x{n}": [] for m, k, n, _ in shapes}

    def measure(self, repeats: int) -> float:
        total_flops = total_seconds = 0.0
        for (m, k, n, times), matmul, (a, b), key in zip(self.shapes, self.matmuls, self.operands, self.per_shape):
            start = time.perf_counter()
            for _ in range(repeats * times):
                out = matmul(a, b)
            out.numpy()
            seconds, flops = time.perf_counter() - start, 2.0 * m * n * k * repeats * times
            self.per_shape[key].append(flops / seconds / 1e9)
            total_flops, total_seconds = total_flops + flops, total_seconds + seconds
        return total_flops / total_seconds / 1e9


def synthetic_batch(seed: int = 0):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30000, size=(BATCH, SEQ)).astype("int64")
    ids[:, 0], ids[:, SEQ // 2], ids[:, -1] = 101, 102, 102  # [CLS] a [SEP] b [SEP]
    types = np.zeros((BATCH, SEQ), "int64")
    types[:, SEQ // 2 + 1:] = 1
    features = {"input_ids": tf.constant(ids), "attention_mask": tf.ones((BATCH, SEQ), tf.int64),
                "token_type_ids": tf.constant(types)}
    labels = tf.constant(rng.integers(0, 2, size=(BATCH,)).astype("int64"))
    return features, labels


def synthetic_dataset(features, labels):
    """The batch forever, without tf.data autotuning like the Trainer's input (trainer.without_autotune)."""
    import tensorflow as tf
    from modules import trainer

    return trainer.without_autotune(tf.data.Dataset.from_tensors((features, labels)).repeat())


def build(full_finetune: bool, jit_compile: bool = False, bf16: bool = False):
    """The pipeline's model and optimizer (trainer.build_model, trainer.compile_model) for one variant."""
    from modules import trainer
    from modules.glue import get_task
    from modules.config import TrainingConfig

    config = TrainingConfig(full_finetune=full_finetune, precision="mixed_bfloat16" if bf16 else "float32")
    task = get_task(config.task)
    model = trainer.build_model(config, task)
    trainer.compile_model(model, config, task, total_steps=10_000)
    if jit_compile:
        model.jit_compile = True  # what model.compile(..., jit_compile=True) sets
    return model


CPU_SECONDS_PER_STEP = {}  # variant -> [process CPU seconds per step]: less sensitive to other processes' load


def fit_rate(model, dataset, steps: int, name: str = "") -> float:
    from modules.trainer import bfloat16_matmuls

    start, cpu = time.perf_counter(), time.process_time()
    with bfloat16_matmuls(name.startswith("adapter_bf16_matmul"), model):  # applies when the step is traced
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    CPU_SECONDS_PER_STEP.setdefault(name, []).append((time.process_time() - cpu) / steps)
    return steps * BATCH / (time.perf_counter() - start)


def loop_rate(fn, features, labels, steps: int, name: str = "") -> float:
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        out = fn(features, labels)
    _ = [t.numpy() for t in (out if isinstance(out, (list, tuple)) else [out])][:1]
    CPU_SECONDS_PER_STEP.setdefault(name, []).append((time.process_time() - cpu) / steps)
    return steps * BATCH / (time.perf_counter() - start)


def child(args) -> None:
    """One thread setting: plain adapter fit throughput, printed as JSON on the last line."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.intra)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter)
    features, labels = synthetic_batch()
    dataset = synthetic_dataset(features, labels)
    model = build(full_finetune=False)
    fit_rate(model, dataset, 2)  # trace and warm up
    rates = [fit_rate(model, dataset, args.steps) for _ in range(args.child_repeats)]
    print(json.dumps({"rates": rates}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="training steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved measurements per variant")
    parser.add_argument("--thread-rounds", type=int, default=1, help="rounds of child processes per thread setting")
    parser.add_argument("--no-threads", action="store_true", help="skip the thread-setting child processes")
    parser.add_argument("--adapterhub", metavar="PYTHON", default="",
                        help="also measure AdapterHub (float32 and bf16 autocast, each also under torch.compile) "
                             "with this Python, interleaved")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--intra", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--inter", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child-repeats", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from bench import common

    started = common.machine_state()
    import numpy as np
    import tensorflow as tf

    features, labels = synthetic_batch()
    dataset = synthetic_dataset(features, labels)

    print("building models (7 copies of MiniLM)...")
    models = {
        "adapter": build(False),
        "full": build(True),
        "adapter_xla": build(False, jit_compile=True),
        "adapter_bf16": build(False, bf16=True),
        "adapter_bf16_xla": build(False, jit_compile=True, bf16=True),
        "adapter_bf16_matmul": build(False),
        "adapter_bf16_matmul_xla": build(False, jit_compile=True),
    }
    reference = models["adapter"]
    adapter_variants = [name for name in models if name.startswith("adapter_")]  # the adapter model, another way
    for name in adapter_variants:
        models[name].set_weights(reference.get_weights())  # same adapters, head and backbone everywhere
    trainable = {name: int(sum(np.prod(v.shape) for v in m.trainable_variables)) for name, m in models.items()}
    bert_config = reference.bert.config
    adapter_flops = flops_per_example(bert_config, SEQ, adapter_params(reference))
    full_flops = flops_per_example(bert_config, SEQ, full_finetune=True)

    # Does bf16 still give the same predictions? Same weights, inference mode.
    logits32 = reference(features, training=False).numpy()
    logits16 = tf.cast(models["adapter_bf16"](features, training=False), tf.float32).numpy()
    bf16_check = {"max_abs_logit_diff": float(np.abs(logits32 - logits16).max()),
                  "max_abs_logit": float(np.abs(logits32).max()),
                  "same_argmax_fraction": float((logits32.argmax(-1) == logits16.argmax(-1)).mean()),
                  "compute_dtype_of_first_adapter": models["adapter_bf16"].adapters[0].compute_dtype}

    forward = tf.function(lambda x, y: reference(x, training=False))

    def make_breakdown(model):
        loss = model.loss

        @tf.function
        def fwd(x, y):
            return loss(y, model(x, training=True))

        @tf.function
        def fwd_bwd(x, y):
            with tf.GradientTape() as tape:
                value = loss(y, model(x, training=True))
            grads = tape.gradient(value, model.trainable_variables)
            # Use every gradient, or tf.function prunes the weight-gradient ops whose results are unused.
            return [value] + [tf.reduce_sum(g.values if isinstance(g, tf.IndexedSlices) else g) for g in grads]

        return fwd, fwd_bwd

    fwd_a, fwd_bwd_a = make_breakdown(models["adapter"])
    fwd_f, fwd_bwd_f = make_breakdown(models["full"])

    limits = {dtype: MatmulLimit(matmul_shapes(bert_config, BATCH * SEQ), dtype) for dtype in TARGETS}
    variants: Dict[str, Callable[[], float]] = {f"matmul_{dtype}": (lambda limit=limit: limit.measure(args.steps))
                                                for dtype, limit in limits.items()}
    variants.update({name: (lambda m=m, n=name: fit_rate(m, dataset, args.steps, n)) for name, m in models.items()})
    for name, fn in (("forward", forward), ("adapter_fwd_train", fwd_a), ("adapter_fwd_bwd", fwd_bwd_a),
                     ("full_fwd_train", fwd_f), ("full_fwd_bwd", fwd_bwd_f)):
        variants[name] = lambda fn=fn, n=name: loop_rate(fn, features, labels, args.steps, n)
    # Matrix-product FLOPs per example of every variant that trains or runs the model (flops_per_example).
    flops = {name: adapter_flops["train"] for name in ["adapter", *adapter_variants, "adapter_fwd_bwd"]}
    flops.update(full=full_flops["train"], full_fwd_bwd=full_flops["train"], forward=adapter_flops["forward"],
                 adapter_fwd_train=adapter_flops["forward"], full_fwd_train=full_flops["forward"])

    hub = None
    if args.adapterhub:
        from bench.adapter_drop import AdapterHub
        from modules import backbone

        print("starting AdapterHub...", flush=True)
        hub = AdapterHub(backbone.resolve_model_dir("minilm"), [0], python=args.adapterhub)

        def hub_rate(name: str) -> float:
            rate = hub.measure(0, args.steps, bf16="bf16" in name, compile=name.endswith("compile"))
            CPU_SECONDS_PER_STEP.setdefault(name, []).append(hub.last_cpu_seconds_per_step)
            return rate

        for name in ("adapterhub", "adapterhub_bf16", "adapterhub_compile", "adapterhub_bf16_compile"):
            variants[name] = lambda n=name: hub_rate(n)
            trainable[name] = hub.info["trainable_params"]["0"]
            flops[name] = adapter_flops["train"]  # the same Houlsby adapters (bottleneck 64) on the same backbone

    print("warm-up (tracing, XLA compilation, torch.compile)...")
    compile_seconds, torch_compile_errors = {}, {}
    for name, measure in list(variants.items()):
        start = time.perf_counter()
        if name in models:
            fit_rate(models[name], dataset, 2, name)
        else:
            try:
                measure()
            except RuntimeError as e:
                if not name.endswith("compile"):
                    raise
                torch_compile_errors[name] = str(e)
                del variants[name]
                print(f"  {name}: not measured: {e}")
                continue
        compile_seconds[name] = round(time.perf_counter() - start, 1)
        CPU_SECONDS_PER_STEP.pop(name, None)  # warm-up is not measured
        print(f"  {name}: {compile_seconds[name]} s")
    for matmul in limits.values():
        for shape_values in matmul.per_shape.values():
            shape_values.clear()  # warm-up is not measured
    xla_check = {name: {"model.jit_compile": bool(models[name].jit_compile),
                        "train_function_jit_compile": getattr(models[name].train_function, "_jit_compile", None)}
                 for name in ("adapter_xla", "adapter_bf16_xla")}

    print(f"measuring: {args.repeats} interleaved repeats of {args.steps} steps x {BATCH} examples")
    values = common.interleave(variants, args.repeats)
    limit_values = {dtype: values.pop(f"matmul_{dtype}") for dtype in limits}
    limit = {dtype: common.median(v) for dtype, v in limit_values.items()}
    med = {name: common.median(v) for name, v in values.items()}
    gflops = {name: flops[name] * med[name] / 1e9 for name in values if name in flops}
    share = {name: {dtype: gflops[name] / limit[dtype]
                    for dtype in (TARGETS if name in BF16_VARIANTS else ["float32"])} for name in gflops}
    cpu_med = {name: common.median(CPU_SECONDS_PER_STEP[name]) for name in values}
    if hub:
        hub.close()

    threads = {}
    if not args.no_threads:
        print("thread settings (child processes, interleaved rounds)...")
        thread_values = {name: [] for name in THREAD_SETTINGS}
        for r in range(args.thread_rounds):
            for name, (intra, inter, env) in THREAD_SETTINGS.items():
                cmd = [sys.executable, "-m", "bench.train_throughput", "--child", "--intra", str(intra), "--inter",
                       str(inter), "--steps", str(args.steps)]
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=common.REPO_ROOT,
                                     env={**os.environ, **env})
                if out.returncode != 0:
                    print(out.stderr[-2000:])
                    raise RuntimeError(f"thread child {name} failed")
                rates = json.loads(out.stdout.strip().splitlines()[-1])["rates"]
                thread_values[name].extend(rates)
                print(f"  round {r + 1} {name}: {', '.join(f'{x:.2f}' for x in rates)}")
        threads = {name: {"values": v, "median": common.median(v)} for name, v in thread_values.items()}

    ratios = {
        "adapter / full": med["adapter"] / med["full"],
        "adapter / full (by CPU s/step)": cpu_med["full"] / cpu_med["adapter"],
        "adapter / (forward/2)": med["adapter"] / (med["forward"] / 2),
        **{f"{name} / adapter": med[name] / med["adapter"] for name in adapter_variants},
    }
    if hub:
        ratios["adapter / adapterhub (float32)"] = med["adapter"] / med["adapterhub"]
        ratios["adapter_bf16 / adapterhub_bf16"] = med["adapter_bf16"] / med["adapterhub_bf16"]
        for name in ("adapterhub_compile", "adapterhub_bf16_compile"):
            if name in med:
                ratios[f"{name} / {name.rsplit('_', 1)[0]}"] = med[name] / med[name.rsplit("_", 1)[0]]
    # Seconds per step (medians): forward, backward = fwd_bwd - fwd, optimizer+Keras = step - fwd_bwd.
    breakdown = {}
    for kind in ("adapter", "full"):
        step, fb, f = (BATCH / med[kind], BATCH / med[f"{kind}_fwd_bwd"], BATCH / med[f"{kind}_fwd_train"])
        breakdown[kind] = {"step_s": step, "forward_s": f, "backward_s": fb - f, "optimizer_and_keras_s": step - fb}

    targets = {"adapter >= 25 ex/s": med["adapter"] >= 25, "adapter >= 1.5x full": ratios["adapter / full"] >= 1.5}
    for name in models:
        dtype = "bfloat16" if name in BF16_VARIANTS else "float32"
        targets[f"{name} >= {TARGETS[dtype]:.0%} of the {dtype} matmul limit"] = share[name][dtype] >= TARGETS[dtype]

    def percent(name: str, dtype: str) -> str:
        return f"{share[name][dtype]:.1%}" if dtype in share.get(name, {}) else "-"

    print()
    rows = [[name, trainable.get(name, "-"), med[name], min(values[name]), max(values[name]), cpu_med[name],
             med[name] / med["adapter"], gflops.get(name, "-"), percent(name, "float32"), percent(name, "bfloat16")]
            for name in values]
    table = common.print_table(["variant", "trainable params", "median ex/s", "min", "max", "CPU s/step",
                                "vs adapter", "GFLOP/s", "% f32 limit", "% bf16 limit"], rows)
    print()
    limit_table = common.print_table(
        ["matmul limit (GFLOP/s, medians)", "one layer's mix", *limits["float32"].per_shape],
        [[dtype, limit[dtype], *(common.median(v) for v in limits[dtype].per_shape.values())] for dtype in limits])
    print()
    common.print_table(["ratio", "value"], [[k, v] for k, v in ratios.items()])
    print()
    common.print_table(["step breakdown (s/step, medians)", "step", "forward", "backward", "optimizer+keras"],
                       [[k, v["step_s"], v["forward_s"], v["backward_s"], v["optimizer_and_keras_s"]]
                        for k, v in breakdown.items()])
    if threads:
        print()
        common.print_table(["thread setting (adapter fit)", "median ex/s", "n"],
                           [[k, v["median"], len(v["values"])] for k, v in threads.items()])
    print()
    print("bf16 check:", bf16_check)
    print("XLA check:", xla_check)
    if torch_compile_errors:
        print("torch.compile not measured:", torch_compile_errors)
    print("targets:", {key: "met" if value else "missed" for key, value in targets.items()})
    common.write_results("train_throughput", {
        "settings": {"batch_size": BATCH, "seq_length": SEQ, "steps_per_measurement": args.steps,
                     "repeats": args.repeats, "model": "minilm", "adapter": "houlsby, bottleneck 64",
                     "data": "one synthetic batch repeated (tf.data from_tensors().repeat())"},
        "examples_per_second": {name: {"values": v, "median": med[name]} for name, v in values.items()},
        "trainable_params": trainable, "ratios": ratios, "breakdown_seconds_per_step": breakdown,
        "matmul_limit_gflops": {dtype: {"values": limit_values[dtype], "median": limit[dtype],
                                        "per_shape": {key: {"values": v, "median": common.median(v)}
                                                      for key, v in limits[dtype].per_shape.items()}}
                                for dtype in limits},
        "flops_per_example": {"adapter": adapter_flops, "full": full_flops,
                              "counted": "matrix products of the backbone's config (flops_per_example)"},
        "gflops": gflops, "share_of_matmul_limit": share, "torch_compile_errors": torch_compile_errors,
        "cpu_seconds_per_step": {n: {"values": CPU_SECONDS_PER_STEP[n], "median": cpu_med[n]} for n in values},
        "warmup_seconds": compile_seconds, "xla_check": xla_check, "bf16_check": bf16_check,
        "thread_settings": threads, "targets": targets, "adapterhub": hub.info if hub else None, "table": table,
        "limit_table": limit_table,
    }, started)


if __name__ == "__main__":
    main()
