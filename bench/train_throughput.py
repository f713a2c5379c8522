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
  adapterhub         with --adapterhub PYTHON (a Python with PyTorch and AdapterHub's `adapters`, docs/adapterhub.md):
                     AdapterHub's Houlsby adapters (bottleneck 64, gelu) on the same MiniLM weights and batch layout,
                     bench/studies/adapterhub_drop.py at K = 0 in that Python, asked for one measurement at its turn
  adapterhub_bf16    the same under torch.autocast("cpu", dtype=torch.bfloat16)
and a breakdown of the adapter and full steps: forward (training=True, with loss) / forward+backward
(GradientTape, gradients of the trainable variables) / whole Keras train step.
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

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

BATCH, SEQ = 32, 128
THREAD_SETTINGS = {  # name -> (intra_op, inter_op, extra env)
    "default(intra=0,inter=0)": (0, 0, {}),
    "intra=2,inter=1": (2, 1, {}),
    "intra=1,inter=1": (1, 1, {}),
    "default,oneDNN off": (0, 0, {"TF_ENABLE_ONEDNN_OPTS": "0"}),
    "default,oneDNN on": (0, 0, {"TF_ENABLE_ONEDNN_OPTS": "1"}),  # TF's default only on AVX512-VNNI/BF16, AMX CPUs
}


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
    start, cpu = time.perf_counter(), time.process_time()
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
                        help="also measure AdapterHub (float32 and bf16 autocast) with this Python, interleaved")
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

    print("building models (6 copies of MiniLM)...")
    models = {
        "adapter": build(False),
        "full": build(True),
        "adapter_xla": build(False, jit_compile=True),
        "adapter_bf16": build(False, bf16=True),
        "adapter_bf16_xla": build(False, jit_compile=True, bf16=True),
    }
    reference = models["adapter"]
    for name in ("adapter_xla", "adapter_bf16", "adapter_bf16_xla"):
        models[name].set_weights(reference.get_weights())  # same adapters, head and backbone everywhere
    trainable = {name: int(sum(np.prod(v.shape) for v in m.trainable_variables)) for name, m in models.items()}

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

    variants = {name: (lambda m=m, n=name: fit_rate(m, dataset, args.steps, n)) for name, m in models.items()}
    for name, fn in (("forward", forward), ("adapter_fwd_train", fwd_a), ("adapter_fwd_bwd", fwd_bwd_a),
                     ("full_fwd_train", fwd_f), ("full_fwd_bwd", fwd_bwd_f)):
        variants[name] = lambda fn=fn, n=name: loop_rate(fn, features, labels, args.steps, n)

    hub = None
    if args.adapterhub:
        from bench.adapter_drop import AdapterHub
        from modules import backbone

        print("starting AdapterHub...", flush=True)
        hub = AdapterHub(backbone.resolve_model_dir("minilm"), [0], python=args.adapterhub)
        trainable["adapterhub"] = trainable["adapterhub_bf16"] = hub.info["trainable_params"]["0"]

        def hub_rate(name: str) -> float:
            rate = hub.measure(0, args.steps, bf16=name.endswith("bf16"))
            CPU_SECONDS_PER_STEP.setdefault(name, []).append(hub.last_cpu_seconds_per_step)
            return rate

        for name in ("adapterhub", "adapterhub_bf16"):
            variants[name] = lambda n=name: hub_rate(n)

    print("warm-up (tracing, XLA compilation)...")
    compile_seconds = {}
    for name, measure in variants.items():
        start = time.perf_counter()
        if name in models:
            models[name].fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)
        else:
            measure()
        compile_seconds[name] = round(time.perf_counter() - start, 1)
        CPU_SECONDS_PER_STEP.pop(name, None)  # warm-up is not measured
        print(f"  {name}: {compile_seconds[name]} s")
    xla_check = {name: {"model.jit_compile": bool(models[name].jit_compile),
                        "train_function_jit_compile": getattr(models[name].train_function, "_jit_compile", None)}
                 for name in ("adapter_xla", "adapter_bf16_xla")}

    print(f"measuring: {args.repeats} interleaved repeats of {args.steps} steps x {BATCH} examples")
    values = common.interleave(variants, args.repeats)
    med = {name: common.median(v) for name, v in values.items()}
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
        "adapter_xla / adapter": med["adapter_xla"] / med["adapter"],
        "adapter_bf16 / adapter": med["adapter_bf16"] / med["adapter"],
        "adapter_bf16_xla / adapter": med["adapter_bf16_xla"] / med["adapter"],
    }
    if hub:
        ratios["adapter / adapterhub (float32)"] = med["adapter"] / med["adapterhub"]
        ratios["adapter_bf16 / adapterhub_bf16"] = med["adapter_bf16"] / med["adapterhub_bf16"]
    # Seconds per step (medians): forward, backward = fwd_bwd - fwd, optimizer+Keras = step - fwd_bwd.
    breakdown = {}
    for kind in ("adapter", "full"):
        step, fb, f = (BATCH / med[kind], BATCH / med[f"{kind}_fwd_bwd"], BATCH / med[f"{kind}_fwd_train"])
        breakdown[kind] = {"step_s": step, "forward_s": f, "backward_s": fb - f, "optimizer_and_keras_s": step - fb}

    targets = {"adapter >= 25 ex/s": med["adapter"] >= 25, "adapter >= 1.5x full": ratios["adapter / full"] >= 1.5}
    print()
    rows = [[name, trainable.get(name, "-"), med[name], min(values[name]), max(values[name]), cpu_med[name],
             med[name] / med["adapter"]] for name in values]
    table = common.print_table(["variant", "trainable params", "median ex/s", "min", "max", "CPU s/step",
                                "vs adapter"], rows)
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
    print("targets:", targets)
    common.write_results("train_throughput", {
        "settings": {"batch_size": BATCH, "seq_length": SEQ, "steps_per_measurement": args.steps,
                     "repeats": args.repeats, "model": "minilm", "adapter": "houlsby, bottleneck 64",
                     "data": "one synthetic batch repeated (tf.data from_tensors().repeat())"},
        "examples_per_second": {name: {"values": v, "median": med[name]} for name, v in values.items()},
        "trainable_params": trainable, "ratios": ratios, "breakdown_seconds_per_step": breakdown,
        "cpu_seconds_per_step": {n: {"values": CPU_SECONDS_PER_STEP[n], "median": cpu_med[n]} for n in values},
        "warmup_seconds": compile_seconds, "xla_check": xla_check, "bf16_check": bf16_check,
        "thread_settings": threads, "targets": targets, "adapterhub": hub.info if hub else None, "table": table,
    }, started)


if __name__ == "__main__":
    main()
