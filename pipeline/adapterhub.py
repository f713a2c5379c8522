"""Converts adapters between this project and AdapterHub (`adapters`, PyTorch); see modules/adapterhub.py.

    python -m pipeline.adapterhub export --task mrpc OUT_DIR          # the task's latest pushed adapters (ML Metadata)
    python -m pipeline.adapterhub export --adapters DIR OUT_DIR       # a Model artifact or a Trainer adapters directory
    python -m pipeline.adapterhub import HUB_DIR --task mrpc OUT_DIR [--model minilm] [--max_seq_length 128]

export writes an AdapterHub adapter directory (adapter_config.json, adapter.safetensors, head_config.json,
model_head.safetensors and, for adapters trained with their encoder LayerNorms, encoder_layer_norms.safetensors).
In PyTorch, on the same backbone:

    model = adapters.AutoAdapterModel.from_pretrained(BACKBONE)
    model.load_adapter(OUT_DIR, use_safetensors=True, set_active=True)
    model.load_state_dict(safetensors.torch.load_file(OUT_DIR + "/encoder_layer_norms.safetensors"), strict=False)

(the last line only if that file exists: without it AdapterHub computes with the pretrained LayerNorms).

import writes an AdapterHub Houlsby (double_seq_bn) or Pfeiffer (seq_bn) adapter directory with its prediction
head, trained on the backbone --model, as this project's adapter-only weights (adapter_config.json +
adapter_weights.npz, the Trainer's format). Then:
    python -m pipeline.run --task mrpc --warm_start OUT_DIR --epochs 0 <the adapter flags it prints>
        exports, evaluates and pushes it unchanged (both serving signatures, atomic push); --epochs N trains on;
    python -m pipeline.bundle --adapters OUT_DIR ...   serves it in a multi-task bundle.
Configurations that cannot be reproduced exactly are refused, naming the field, before anything is written.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from pipeline import console

if __name__ == "__main__":  # before TensorFlow is imported (pipeline/console.py)
    console.setup_command(sys.argv[1:])
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from modules.config import TrainingConfig
from pipeline import configs

MINILM_HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"  # what backbone "minilm" is, named for AdapterHub


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.adapterhub", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="this project's adapters -> an AdapterHub adapter directory")
    export.add_argument("output", metavar="OUT_DIR", help="the AdapterHub directory to write (new or empty)")
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="the task's latest pushed model, found in ML Metadata")
    source.add_argument("--adapters", metavar="DIR", help="a Trainer Model artifact or its adapters/ directory")
    export.add_argument("--name", help="the adapter's name in AdapterHub (default: the task)")
    export.add_argument("--output_dir", default=configs.DEFAULT_OUTPUT_DIR, help="default parent of --metadata_path")
    export.add_argument("--metadata_path", help="SQLite ML Metadata file (default <output_dir>/metadata.sqlite)")
    export.add_argument("--pipeline_prefix", default=configs.PIPELINE_NAME, help="task pipelines are named <prefix>-<task>")
    imp = commands.add_parser("import", help="an AdapterHub adapter directory -> this project's adapter-only weights")
    imp.add_argument("hub_dir", metavar="HUB_DIR", help="an AdapterHub adapter directory saved with its head")
    imp.add_argument("output", metavar="OUT_DIR", help="the adapter-only weights directory to write (new or empty)")
    imp.add_argument("--task", required=True, help="the GLUE task the adapter's head predicts")
    imp.add_argument("--model", "--casing", dest="model", default=TrainingConfig.model,
                     help="the backbone the adapter was trained on ('minilm', a local HF model dir, or a hub name)")
    imp.add_argument("--max_seq_length", type=int, default=TrainingConfig.max_seq_length,
                     help="max tokens per example when serving it (the tokenizer's truncation)")
    imp.add_argument("--head_labels", help="the task's label names in the order of the head's outputs, comma-separated "
                                           "(needed when the head's label2id does not name them)")
    for command in (export, imp):
        console.add_verbose_flag(command)
    return parser.parse_args(argv)


def export(args: argparse.Namespace) -> None:
    from components.adapter_bundle import find_pushed_adapters
    from modules.adapterhub import LOAD_LAYER_NORMS, export_adapter
    from modules.model import read_adapter_config
    from modules.bundle import adapters_directory

    if args.task:
        metadata_path = args.metadata_path or os.path.join(args.output_dir, "metadata.sqlite")
        source = find_pushed_adapters(metadata_path, [args.task], args.pipeline_prefix)[0].path
    else:
        source = args.adapters
    model = read_adapter_config(adapters_directory(source)).get("model", "")
    written = export_adapter(source, args.output, name=args.name,
                             model_name=MINILM_HUB_NAME if model == "minilm" else os.path.basename(str(model).rstrip("/")))
    print(f"wrote AdapterHub adapter {written['name']!r} to {args.output}: {', '.join(written['files'])}")
    print(f"load it with: model.load_adapter({args.output!r}, use_safetensors=True, set_active=True)")
    if written["layer_norms"]:
        print("WARNING: these adapters were trained with the encoder LayerNorms, which AdapterHub's adapter files "
              "cannot hold; also run\n  " + LOAD_LAYER_NORMS.format(path=written["layer_norms"]))


def import_(args: argparse.Namespace) -> None:
    from modules.adapterhub import import_adapter
    from modules.glue import get_task
    from modules.trainer import adapter_flags
    from modules.adapters import AdapterConfig

    head_labels = args.head_labels.split(",") if args.head_labels else None
    config = import_adapter(args.hub_dir, get_task(args.task), args.model, args.output, args.max_seq_length, head_labels)
    flags = adapter_flags(AdapterConfig(**config["adapter"]))
    print(f"wrote {config['task']} adapters ({config['adapter']}) to {args.output}")
    print(f"serve them: python -m pipeline.run --task {config['task']} --model {args.model} --max_seq_length "
          f"{args.max_seq_length} {flags} --warm_start {args.output} --epochs 0")
    print(f"bundle them: python -m pipeline.bundle --adapters {args.output} [--tasks ...]")


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        (export if args.command == "export" else import_)(args)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
