"""Pretraining pays off: the downstream verdict in one command.

    python scripts/bench_pretraining_pays_off.py --minutes 35 --tasks stsb --seeds 1,2,3,4,5 \
        optimizer.lr=1e-4 train.epochs=3

1. Pretrain BERT-mini (sequence 128) on ../shared/data/corpus for `--minutes` of training time with
   `bert pretrain`, and the same shape, from the same initial weights, for the same training time with the
   usual transformers pipeline (`BertForMaskedLM` + `DataCollatorForLanguageModeling` in a plain loop, fp32,
   MLM only: transformers has no NSP data pipeline; scripts/bench_time_to_quality.py has both sides and says
   what they share). `bert pretrain` trains what it trains by default, MLM + NSP (Google's sentence pairs, the
   same tokenizer and the same held-out documents), unless `--mlm-only` makes both objectives MLM alone; its
   `mixed_precision=auto` decides its precision (bf16 on a CPU with bf16 units). Both use `--lr` (peak, 5%
   warmup, linear decay to 0 over the budget).
2. Score both on the same held-out sequences with fixed masks at every kept point: held-out MLM loss
   against training time.
3. Fine-tune three models with `bert glue` on the chosen tasks, every seed, the same settings: ours, the
   reference's, and the shared initial weights (random initialisation, the same shape and tokenizer).
4. Print one table (mean +- std over seeds per task and model) and the verdict: ours against random
   initialisation in standard deviations of the seeds (the larger of the two), and ours against the
   reference; write a PNG of the loss curves and the GLUE scores, and everything as JSON.

`--skip-pretraining` reuses the models of an earlier run in `--out` (to redo only the fine-tuning).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def with_tokenizer(folder: Path, prepared: Path) -> Path:
    """Copy the prepared data's tokenizer into a model folder (the three models share it)."""
    from bert.export import copy_tokenizer

    copy_tokenizer(prepared / "tokenizer", folder)
    return folder


def save_reference(init: Path, state: dict, folder: Path, prepared: Path) -> Path:
    """The reference's final weights as a BERT folder: its encoder and MLM head; the pooler and NSP head,
    which MLM-only training never touches on either side, stay the shared initial ones."""
    from bert.model import BertForPreTraining

    model = BertForPreTraining.from_pretrained(init)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith(("bert.pooler.", "cls.seq_relationship.")) for k in missing), missing
    model.save_pretrained(folder)
    return with_tokenizer(folder, prepared)


def pretrain_both(args: argparse.Namespace) -> dict[str, Any]:
    """Step 1 and 2: both pipelines for the same training time, scored on the same held-out sequences."""
    import bench_time_to_quality as ttq
    from transformers import BertForMaskedLM

    from bert.export import export_checkpoint
    from bert.model import BertForPreTraining

    seconds, every = args.minutes * 60, args.minutes * 60 / 8
    prepared = ttq.prepare(args.corpus, args.out / "prepared", vocab_size=args.vocab_size)
    meta = json.loads((prepared / "meta.json").read_text())
    held = ttq.held_out(prepared, args.held_out)
    ours_data = prepared
    if not args.mlm_only:  # the same tokenizer and held-out documents, as sentence pairs
        ours_data = ttq.prepare(
            args.corpus, args.out / "prepared", nsp=True, tokenizer=prepared / "tokenizer"
        )
    init = with_tokenizer(ttq.initial_weights(meta["vocab_size"], args.out), prepared)
    print(f"prepared {prepared}: {meta['counts']['train']['instances']:,} training sequences; held out "
          f"{held['sequences']} sequences", flush=True)  # fmt: skip
    started = time.perf_counter()
    reference = ttq.run_reference(prepared, init, seconds, every, args.batch_size, lr=args.lr)
    print(f"reference: {reference[-1]['step']} steps in {reference[-1]['seconds']:.0f} s of training "
          f"({time.perf_counter() - started:.0f} s wall)", flush=True)  # fmt: skip
    save_reference(init, reference[-1]["state"], args.out / "reference_model", prepared)
    ref_model = BertForMaskedLM.from_pretrained(str(init))
    for point in reference:
        ref_model.load_state_dict(point.pop("state"))
        point["loss"] = ttq.mlm_loss_on(ref_model, held, our_model=False)
    steps_per_s = reference[-1]["step"] / reference[-1]["seconds"] * 3  # a guess, for the checkpoint spacing
    ours, _ = ttq.run_ours(
        ours_data,
        init,
        args.out,
        seconds,
        every,
        args.batch_size,
        steps_per_s,
        nsp=not args.mlm_only,
        lr=args.lr,
    )
    for point in ours:
        exported = export_checkpoint(point["folder"], args.out / "eval_export")
        point["loss"] = ttq.mlm_loss_on(BertForPreTraining.from_pretrained(exported), held, our_model=True)
    initial = ttq.mlm_loss_on(BertForPreTraining.from_pretrained(init), held, our_model=True)
    shutil.rmtree(args.out / "eval_export", ignore_errors=True)
    curves = {"initial_loss": initial, "reference": reference, "ours": ours, "prepared": str(prepared),
              "ours_objective": "MLM" if args.mlm_only else "MLM + NSP"}  # fmt: skip
    (args.out / "curves.json").write_text(json.dumps(curves, indent=2, default=str) + "\n")
    return curves


def models(out: Path) -> dict[str, Path]:
    return {
        "ours": out / "ours" / "export",
        "transformers": out / "reference_model",
        "random init": out / "init",
    }


def fine_tune_all(args: argparse.Namespace) -> dict[str, Any]:
    """Step 3: `bert glue` of each model on the tasks, every seed, the same overrides."""
    verdicts = {}
    for name, folder in models(args.out).items():
        if not (folder / "config.json").is_file():
            raise SystemExit(
                f"bench_pretraining_pays_off: no model at {folder} (run without --skip-pretraining)"
            )
        output = args.out / "glue" / name.replace(" ", "_")
        command = [sys.executable, "-m", "bert.cli", "glue", str(folder), "--data", str(args.glue),
                   "--tasks", args.tasks, "--output", str(output), f"train.seeds=[{args.seeds}]",
                   "logging.trackers=[]", "logging.progress_bar=false", *args.overrides]  # fmt: skip
        print("+", " ".join(command[2:]), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)
        verdicts[name] = json.loads((output / "glue.json").read_text())
    return verdicts


def verdict_table(verdicts: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """Step 4: mean +- std per task and model, and ours against random init and against transformers."""
    names = list(verdicts)
    lines = ["| task | metric | " + " | ".join(names) + " | ours - random (in std) | ours - transformers |",
             "|---|---|" + "---|" * len(names) + "---|---|"]  # fmt: skip
    findings = []
    entries = {name: {e["entry"]: e for e in v["entries"]} for name, v in verdicts.items()}
    for entry in entries["ours"]:
        ours, rnd, ref = (entries[n][entry] for n in ("ours", "random init", "transformers"))
        spread = max(ours["std"], rnd["std"])
        # one seed has no spread: no verdict in standard deviations
        sigmas = (ours["mean"] - rnd["mean"]) / spread if spread > 0 else None
        in_std = "n/a, one seed" if sigmas is None else f"{sigmas:+.1f}"
        gap = ours["mean"] - ref["mean"]
        cells = " | ".join(
            f"{entries[n][entry]['mean'] * 100:.2f} ± {entries[n][entry]['std'] * 100:.2f}" for n in names
        )
        lines.append(f"| {entry} | {ours['metric']} | {cells} | {(ours['mean'] - rnd['mean']) * 100:+.2f} "
                     f"({in_std}) | {gap * 100:+.2f} |")  # fmt: skip
        findings.append({"entry": entry, "metric": ours["metric"], "sigmas_over_random": sigmas,
                         "beats_random_by_3_std": sigmas is not None and sigmas > 3, "minus_transformers": gap,
                         "at_least_transformers": gap >= 0})  # fmt: skip
    return "\n".join(lines), findings


def draw(curves: dict[str, Any], verdicts: dict[str, Any], path: Path) -> None:
    """Held-out MLM loss against training time for both pipelines, and the GLUE scores with their spread."""
    from bert.plot import pyplot

    plt = pyplot("bench_pretraining_pays_off")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    objective = curves.get("ours_objective", "MLM")
    for side, label in (
        ("ours", f"bert pretrain ({objective})"),
        ("reference", "transformers pipeline (MLM)"),
    ):
        points = curves[side]
        left.plot([0] + [p["seconds"] / 60 for p in points], [curves["initial_loss"]] + [p["loss"] for p in points],
                  marker="o", label=label)  # fmt: skip
    left.set_xlabel("training time (minutes)")
    left.set_ylabel("held-out MLM loss")
    left.set_title("BERT-mini pretraining, same time budget")
    left.legend()
    names = list(verdicts)
    entries = [e["entry"] for e in verdicts[names[0]]["entries"]]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        by_entry = {e["entry"]: e for e in verdicts[name]["entries"]}
        xs = [j + i * width for j in range(len(entries))]
        means = [by_entry[e]["mean"] * 100 for e in entries]
        stds = [by_entry[e]["std"] * 100 for e in entries]
        right.bar(xs, means, width, yerr=stds, capsize=3, label=name)
    right.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(entries))])
    right.set_xticklabels(
        [f"{e}\n({verdicts[names[0]]['entries'][k]['metric']})" for k, e in enumerate(entries)]
    )
    right.set_ylabel("dev score x 100 (mean ± std over seeds)")
    right.set_title("fine-tuned with bert glue")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=25.0, help="training time of each pipeline")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--lr",
        type=float,
        default=5e-4,
        help="peak learning rate of both pipelines (default 5e-4; 1e-3 collapsed in a 60-minute run)",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=30522,
        help="WordPiece vocabulary trained on the corpus (default 30522)",
    )
    parser.add_argument(
        "--mlm-only",
        action="store_true",
        help="bert pretrain without NSP, the reference's objective (default: MLM + NSP, bert pretrain's own)",
    )
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "corpus"))
    parser.add_argument("--glue", type=Path, default=ROOT.parent / "shared" / "data" / "glue")
    parser.add_argument("--tasks", default="stsb,mrpc")
    parser.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated fine-tuning seeds")
    parser.add_argument("--held-out", type=int, default=512, help="held-out sequences scored")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "pays_off")
    parser.add_argument("--skip-pretraining", action="store_true", help="reuse the models in --out")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of every `bert glue` run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"load before: {os.getloadavg()}", flush=True)
    if args.skip_pretraining:
        curves = json.loads((args.out / "curves.json").read_text())
    else:
        curves = pretrain_both(args)
    verdicts = fine_tune_all(args)
    table, findings = verdict_table(verdicts)
    print(
        f"\nheld-out MLM loss after {args.minutes:g} min: bert pretrain {curves['ours'][-1]['loss']:.3f}, "
        f"transformers pipeline {curves['reference'][-1]['loss']:.3f} (initial {curves['initial_loss']:.3f})"
    )
    print(f"GLUE dev, seeds {args.seeds}, overrides {' '.join(args.overrides) or 'none'}:\n{table}")
    for f in findings:
        sigmas = f["sigmas_over_random"]
        by = "? std (one seed: no spread)" if sigmas is None else f"{sigmas:+.1f} std"
        print(
            f"{f['entry']}: ours beats random init by {by} "
            f"({'yes' if f['beats_random_by_3_std'] else 'no'}, > 3 needed); ours - transformers "
            f"{f['minus_transformers'] * 100:+.2f} ({'at least as good' if f['at_least_transformers'] else 'worse'})"
        )
    draw(curves, verdicts, args.out / "pays_off.png")
    summary = {"minutes": args.minutes, "seeds": args.seeds, "overrides": args.overrides,
               "ours_objective": curves.get("ours_objective", "MLM"), "findings": findings,
               "final_loss": {"ours": curves["ours"][-1]["loss"], "transformers": curves["reference"][-1]["loss"]},
               "glue": verdicts}  # fmt: skip
    (args.out / "pays_off.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(
        f"load after: {os.getloadavg()}\nwritten: {args.out / 'pays_off.png'}, {args.out / 'pays_off.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
