"""The `bert` command line: one frame for every subcommand.

    bert <command> CONFIG.yaml [key=value ...]     (prepare, pretrain, finetune)
    bert <command> [plain flags]                   (evaluate, export, inspect, bench, plot)

This file owns argument parsing and error reporting only; each handler imports its module lazily so that
`bert --help` answers at once, without importing torch. Errors the user can fix (a bad config, a missing
file) print one line `bert <command>: error: ...` and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bert import __version__

OVERRIDE_HELP = """\
config and overrides:
  CONFIG is a YAML file (see configs/). Any field can be overridden with dotted key=value pairs,
  values parsed as YAML:  train.max_steps=100  model.num_hidden_layers=6  logging.trackers=[wandb]
  A section given a name loads a preset:  model=mini  (configs/model/mini.yaml); on the command line it
  replaces the section the file sets, and model.x=... after it applies to the preset.
  A config may inherit another with a top-level  base: other.yaml
  --print-config shows the resolved config; --list-keys shows every key with its meaning.
"""

FINETUNE_OVERRIDE_HELP = """\
config and overrides:
  CONFIG is a YAML file (see configs/finetune/). Any field can be overridden with dotted key=value pairs,
  values parsed as YAML:  train.epochs=2  train.global_batch_size=16  optimizer.lr=3e-5  logging.trackers=[wandb]
  train.global_batch_size is sequences per optimizer step over all processes (pretraining's train.batch_size
  is per device); train.gradient_accumulation_steps splits it into micro-batches; train.max_steps replaces
  train.epochs.
  A config may inherit another with a top-level  base: other.yaml
  --print-config shows the resolved config; --list-keys shows every key with its meaning.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=110)


def _config_args(parser: argparse.ArgumentParser, config_help: str) -> None:
    parser.add_argument("config", nargs="?", help=config_help)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of config fields")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    parser.add_argument(
        "--list-keys", action="store_true", help="list every config key with its meaning and exit"
    )


def _load(args: argparse.Namespace, cls: type) -> Any:
    """Resolve CONFIG + overrides into `cls`; handles --print-config and --list-keys."""
    from bert.config import field_docs, load_config, to_dict

    if args.list_keys:
        for key, doc in field_docs(cls).items():
            print(f"{key:42s} {doc}")
        raise SystemExit(0)
    config_path = args.config
    overrides = list(args.overrides)
    if config_path is not None and "=" in config_path and not config_path.endswith((".yaml", ".yml")):
        overrides.insert(0, config_path)  # no file given, only overrides
        config_path = None
    cfg = load_config(cls, config_path, overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        raise SystemExit(0)
    return cfg


# ------------------------------------------------------------------------------------------------ handlers


def _run_prepare(args: argparse.Namespace) -> int:
    from bert.config import PretrainConfig

    cfg = _load(args, PretrainConfig)
    from bert.data.prepare import run_prepare

    folder = run_prepare(cfg, output_dir=args.output, force=args.force)
    if args.verify:
        from bert.data.prepared import verify_prepared
        from bert.errors import UserError

        problem = verify_prepared(folder, full=True)
        if problem is not None:
            raise UserError(
                f"{folder}: damaged prepared data: {problem}; run bert prepare with --force to rebuild it"
            )
        print(f"verified {folder}: every file matches its sha256")
    return 0


def _run_pretrain(args: argparse.Namespace) -> int:
    from bert.config import PretrainConfig

    _resume_in_place(args)
    cfg = _load(args, PretrainConfig)
    from bert.pretrain import pretrain

    pretrain(cfg, hooks=getattr(args, "hooks", None))
    return 0


def _resume_in_place(args: argparse.Namespace) -> None:
    """`bert pretrain RUN/config.yaml` resumes the run in RUN, wherever that folder is now (moved to another
    machine or mount), unless train.output_dir is given on the command line."""
    if not args.config or Path(args.config).name != "config.yaml":
        return
    run = Path(args.config).resolve().parent
    if not (run / "checkpoints").is_dir() or any(o.startswith("train.output_dir=") for o in args.overrides):
        return
    args.overrides = [*args.overrides, f"train.output_dir={run}"]
    print(f"{args.config} is a run folder's config: resuming in {run}", flush=True)


def _run_finetune(args: argparse.Namespace) -> int:
    from bert.config import FinetuneConfig

    cfg = _load(args, FinetuneConfig)
    from bert.finetune import finetune

    finetune(cfg)
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from bert.config import FinetuneConfig, load_config
    from bert.finetune import evaluate_saved

    cfg = load_config(FinetuneConfig, args.task_config, args.overrides)
    evaluate_saved(args.model, cfg, split=args.split, output=args.output)
    return 0


def _run_glue(args: argparse.Namespace) -> int:
    from bert.glue import run_glue

    tasks = [t.strip().lower() for t in args.tasks.split(",")] if args.tasks else None
    run_glue(args.model, args.data, args.output, tasks, args.overrides)
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from bert.export import export_checkpoint

    export_checkpoint(args.checkpoint, args.output)
    return 0


def _run_inspect(args: argparse.Namespace) -> int:
    from bert.data.show import run_inspect

    run_inspect(args)
    return 0


def _run_plot(args: argparse.Namespace) -> int:
    from bert.plot import plot_runs

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    print(f"wrote {plot_runs(args.runs, args.out, metrics)}")
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from bert.bench import run_bench

    run_bench(args)
    return 0


# ------------------------------------------------------------------------------------------------- parsers


def _add(
    sub: argparse._SubParsersAction,
    name: str,
    summary: str,
    description: str,
    example: str,
    handler: Callable,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=summary,
        description=textwrap.dedent(description).strip(),
        epilog="example:\n" + textwrap.indent(textwrap.dedent(example).strip(), "  "),
        formatter_class=_Formatter,
    )
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bert",
        description="Pretrain BERT with MLM + NSP, fine-tune it on sentence-pair tasks, and watch the runs.",
        epilog=textwrap.dedent(
            """\
            typical session:
              bert prepare configs/pretrain/demo.yaml        # corpus -> tokenizer -> NSP pairs on disk
              bert inspect data/prepared/<hash>              # see tokens, segments, masks, NSP labels
              bert pretrain configs/pretrain/demo.yaml       # train, evaluate, checkpoint, export
              bert finetune configs/finetune/demo.yaml       # fine-tune the export on a pair task
              bert glue runs/demo/export --data DIR          # every GLUE pair task, one table

            Run `bert <command> --help` for what each command does and an example.
            """
        ),
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"bert {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="<command>")

    p = _add(
        sub,
        "prepare",
        "turn a corpus into tokenized NSP pairs on disk",
        """
        Read a corpus (text files, folders, globs, JSONL/CSV/Parquet, a Hugging Face dataset, or the built-in
        synthetic corpus), train or load a WordPiece tokenizer, build NSP sentence pairs with Google's
        semantics, and write them as a sharded Arrow dataset with a validation split and a metadata file.
        The data.* keys of the config drive it; re-running with the same inputs reuses the result.
        """,
        """
        bert prepare configs/pretrain/demo.yaml
        bert prepare configs/pretrain/bert_base_phase1.yaml data.corpus=[../shared/data/corpus] data.num_proc=2
        """,
        _run_prepare,
    )
    _config_args(p, "pretraining config (its data section is used)")
    p.add_argument("--output", help="write here instead of data.cache_dir/<hash>")
    p.add_argument("--force", action="store_true", help="rebuild even when a complete result exists")
    p.add_argument("--verify", action="store_true", help="check every file of the result against its sha256")
    p.epilog += "\n\n" + OVERRIDE_HELP

    p = _add(
        sub,
        "pretrain",
        "pretrain BERT (MLM + NSP) with Accelerate",
        """
        Pretrain a BERT model with masked language modelling and next sentence prediction. Runs on the CPU,
        one GPU, or many GPUs and nodes under `accelerate launch` or `torchrun` with the same arguments.
        Evaluates on the held-out split, logs to TensorBoard/wandb, checkpoints every train.save_every steps,
        resumes from the latest complete checkpoint in train.output_dir, and exports the final model in the
        Hugging Face format with its tokenizer.
        """,
        """
        bert pretrain configs/pretrain/demo.yaml
        bert pretrain configs/pretrain/demo.yaml train.max_steps=100 model=mini logging.trackers=[tensorboard,wandb]
        accelerate launch --config_file configs/accelerate/8gpu.yaml -m bert.cli pretrain configs/pretrain/bert_base_phase1.yaml
        """,
        _run_pretrain,
    )
    _config_args(p, "pretraining config, e.g. configs/pretrain/demo.yaml")
    p.epilog += "\n\n" + OVERRIDE_HELP

    p = _add(
        sub,
        "finetune",
        "fine-tune on a sentence-pair task (MRPC, RTE, STS-B, QQP, MNLI, QNLI, WNLI)",
        """
        Fine-tune a pretrained model (this project's export or any Hugging Face BERT folder) on a
        sentence-pair classification or regression task, evaluate every epoch, keep the best model by the
        task's metric, and write test predictions. Several seeds report each result and mean +- std.
        """,
        """
        bert finetune configs/finetune/mrpc.yaml model_path=runs/demo/export
        bert finetune configs/finetune/mrpc.yaml task.data_dir=../shared/data/glue/MRPC train.seeds=[1,2,3,4,5]
        """,
        _run_finetune,
    )
    _config_args(p, "fine-tuning config, e.g. configs/finetune/mrpc.yaml")
    p.epilog += "\n\n" + FINETUNE_OVERRIDE_HELP

    p = _add(
        sub,
        "glue",
        "fine-tune on every GLUE sentence-pair task of a folder, and one table of results",
        """
        Fine-tune MODEL on each GLUE sentence-pair task found in --data (MRPC/, RTE/, STS-B/, QQP/, MNLI/,
        QNLI/, WNLI/ in the GLUE layout) with that task's recipe (configs/finetune/<task>.yaml) and every
        seed of train.seeds; then write glue.json and glue.md (per task: mean +- std over seeds, each seed,
        the training budget; the GLUE average: each task scores the mean of its metrics and dev sets, then
        the mean over tasks), print the table, add it to the model's card and log it to TensorBoard/wandb.
        Re-running skips the seeds already finished with the same settings and weights. Overrides apply to
        every task: train.seeds=[1,2,3], task.max_train_examples=20000 (a deterministic subsample of the
        large training sets), train.epochs=2.
        """,
        """
        bert glue runs/bert_base/export --data ../shared/data/glue train.seeds=[1,2,3]
        bert glue runs/demo/export --data glue_data --tasks mrpc,rte,stsb task.max_train_examples=5000
        """,
        _run_glue,
    )
    p.add_argument(
        "model", help="model folder (an export, a Hugging Face BERT, or a training run/checkpoint)"
    )
    p.add_argument("--data", required=True, help="GLUE-layout folder holding one folder per task")
    p.add_argument("--tasks", help="comma-separated tasks to run (default: every task found)")
    p.add_argument("--output", help="results folder (default runs/glue/<the model's run name>)")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides of every task's config"
    )
    p.epilog += (
        "\n\n"
        + FINETUNE_OVERRIDE_HELP.replace(
            "  CONFIG is a YAML file (see configs/finetune/). Any field",
            "  Every task's recipe (configs/finetune/<task>.yaml). Any field",
        )
        .split("  --print-config")[0]
        .rstrip()
        + "\n"
    )

    p = _add(
        sub,
        "evaluate",
        "score a saved model on a task's dev (or test) split",
        """
        Evaluate a fine-tuned model folder on a task and print its metrics (and write them as JSON with
        --output). The task config says where the data is and which metric applies.
        """,
        """
        bert evaluate runs/mrpc/best configs/finetune/mrpc.yaml task.data_dir=../shared/data/glue/MRPC
        """,
        _run_evaluate,
    )
    p.add_argument("model", help="fine-tuned model folder")
    p.add_argument("task_config", help="fine-tuning config naming the task and its data")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the task config")
    p.add_argument(
        "--split", default="dev", choices=["dev", "train", "test"], help="split to score (default dev)"
    )
    p.add_argument("--output", help="write the metrics as JSON here")

    p = _add(
        sub,
        "export",
        "export a training checkpoint as a Hugging Face model folder",
        """
        Write a checkpoint's model as config.json + model.safetensors with the run's tokenizer, a folder that
        `transformers.BertForPreTraining.from_pretrained` and `bert finetune` load.
        """,
        """
        bert export runs/demo/checkpoints/step_0000400 runs/demo/export-400
        """,
        _run_export,
    )
    p.add_argument(
        "checkpoint", help="checkpoint step folder (or a run folder: its latest complete checkpoint)"
    )
    p.add_argument("output", help="folder to write the model to")

    p = _add(
        sub,
        "plot",
        "draw the curves of one or several runs into a PNG (no server)",
        """
        Read each run folder's metrics.jsonl (pretraining) or metrics.json (fine-tuning, every seed) and draw
        one panel per metric with every run's curve, labelled by run name: the losses and accuracies by
        default, or the metrics you name. Needs matplotlib (the `plots` extra).
        """,
        """
        bert plot runs/demo runs/demo_long --out runs/compare.png
        bert plot runs/demo --metrics train/loss,eval/mlm_accuracy
        """,
        _run_plot,
    )
    p.add_argument("runs", nargs="+", help="run folders (train.output_dir of bert pretrain or bert finetune)")
    p.add_argument("--out", default="plot.png", help="the PNG to write (default plot.png)")
    p.add_argument(
        "--metrics", default=None, help="comma-separated metric names (default: losses, accuracies)"
    )

    p = _add(
        sub,
        "inspect",
        "show prepared data or a collated batch as a table (and a picture)",
        """
        Print a readable table of tokens with segment ids, attention mask, masked positions with the original
        tokens, and the NSP label, for examples of a prepared dataset or one collated batch (with the masks the
        collator draws). --png draws the batch as a picture: tokens coloured by segment, padding and masking.
        """,
        """
        bert inspect data/prepared/<hash> --num 2
        bert inspect data/prepared/<hash> --batch 8 --png batch.png
        """,
        _run_inspect,
    )
    p.add_argument("path", help="prepared dataset folder (written by `bert prepare`)")
    p.add_argument("--split", default="train", help="split to read (default train)")
    p.add_argument("--num", type=int, default=3, help="examples to show (default 3)")
    p.add_argument("--start", type=int, default=0, help="index of the first example (default 0)")
    p.add_argument("--batch", type=int, default=0, help="collate this many examples and show the batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the collator's dynamic masking")
    p.add_argument("--png", help="also draw the examples as a PNG picture at this path")

    p = _add(
        sub,
        "bench",
        "benchmark a training step against Hugging Face transformers",
        """
        Time forward + backward + AdamW steps of this project's BertForPreTraining against
        transformers.BertForPreTraining with the same config, weights and batch (sentence pairs of realistic
        lengths, 15% masked), alternating in one process. Prints tokens per second and the ratio, as a table
        and as JSON. Needs the `transformers` extra.
        """,
        """
        bert bench --model mini --batch-size 32 --seq-len 128
        bert bench --model base --batch-size 8 --attn unpadded --steps 10 --json bench.json
        bert bench --model mini --batch-size 8 --sides plain,compiled      # what torch.compile gives
        bert bench --model base --batch-size 8 --dtype fp32,bf16           # both dtypes, interleaved
        """,
        _run_bench,
    )
    p.add_argument("--model", default="mini", help="model preset from configs/model (default mini)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per step (default 32)")
    p.add_argument("--seq-len", type=int, default=128, help="padded sequence length (default 128)")
    p.add_argument(
        "--attn", default="unpadded", choices=["eager", "sdpa", "unpadded"], help="our attention path"
    )
    p.add_argument("--steps", type=int, default=10, help="timed steps per model (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per model (default 2)")
    p.add_argument(
        "--dtype",
        default="fp32",
        help="autocast dtype: fp32, bf16 or fp16, or several (fp32,bf16: every side at each, interleaved)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch")
    p.add_argument("--json", help="also write the results as JSON here")
    p.add_argument("--no-reference", action="store_true", help="time only this project's model")
    p.add_argument(
        "--data",
        help="a prepared folder (bert prepare): time the first batch bert pretrain would read from it, instead "
        "of a synthetic batch of realistic lengths",
    )
    p.add_argument(
        "--sides",
        help="comma-separated sides to time, of: ours (with --fast-paths), plain (ours, no fast paths), "
        "compiled (ours under torch.compile, no fast paths), reference (transformers); default "
        "ours,reference",
    )
    p.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of the 'compiled' side (default inductor; eager/aot_eager trace only)",
    )
    p.add_argument(
        "--fast-paths",
        default="auto",
        choices=["auto", "on", "off"],
        help="the speedups of bert.model.fast for 'ours': auto (on for the CPU, off on CUDA), on, off",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: every core of the machine)"
    )
    p.add_argument(
        "--adamw",
        default="fused",
        choices=["fused", "default"],
        help="AdamW of both models: 'fused' (default; what `bert pretrain` and, on torch >= 2.8, the "
        "transformers Trainer use) or torch's default implementation",
    )
    return parser


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The command line; key=value overrides may also come after flags (argparse takes positionals in one
    run only)."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None, hooks: Any = None) -> int:
    """`bert ...`; `hooks` (bert.hooks.TrainHooks) reach the training loop: for tests, not for users."""
    parser = build_parser()
    args = parse_arguments(parser, argv)
    args.hooks = hooks
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    command = (argv if argv is not None else sys.argv[1:])[:1]
    name = command[0] if command else ""
    from bert.config import ConfigError
    from bert.errors import UserError

    try:
        return int(args.handler(args) or 0)
    except (ConfigError, FileNotFoundError) as err:
        message = (
            str(err)
            if isinstance(err, ConfigError) or not err.filename
            else f"{err.filename}: {err.strerror}"
        )
        print(f"bert {name}: error: {message}", file=sys.stderr)
        return 2
    except UserError as err:
        print(f"bert {name}: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        import errno

        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {err.filename}" if err.filename else ""
        print(
            f"bert {name}: error: the disk is full{where}; the last complete checkpoint is intact: free space "
            "(or lower train.keep_last) and run the same command again to resume",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
