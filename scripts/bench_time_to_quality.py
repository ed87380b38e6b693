"""Time to quality: `bert pretrain` against the common transformers pipeline, the same wall-clock budget each.

    python scripts/bench_time_to_quality.py --minutes 20 [--batch-size 16] [--corpus ../shared/data/corpus]

Both sides train the same model shape (BERT-mini, from the same initial weights) with the same tokenizer,
sequences, sequence length (128), batch size, optimizer (fused AdamW: lr, betas, weight decay, clipping) and a
learning rate defined over the same time budget (warmup over the first 5%, then linear decay to 0 when the
budget is spent), MLM only:

- ours: `bert pretrain` (data.nsp=false), which draws its masks in its collator and runs the fast paths;
- reference: `transformers.BertForMaskedLM` fed by `DataCollatorForLanguageModeling` (15%, 80/10/10), in a
  plain loop, as transformers' MLM examples do, over the same training sequences, shuffled.

Every `--every` seconds of training each side's weights are kept (ours as checkpoints, whose saving counts in
its time; the reference's copied in memory, not counted); afterwards all are scored on the same held-out
sequences (the validation split, documents neither side trained on) with the same fixed masks. The script
prints held-out MLM loss against training time for both, and the ratio of the time ours needs to reach the
reference's final loss to the reference's time (linear interpolation between kept points).

It also measures the data path: `bert pretrain`'s tokens/s against `bert bench --data` on the same batches
(the loader, logging and checkpoints must not starve the step). Results as JSON with --json.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LR, BETAS, WEIGHT_DECAY, EPS, CLIP, WARMUP = 1e-3, (0.9, 0.999), 0.01, 1e-6, 1.0, 0.05


def prepare(
    corpus: str, cache: Path, nsp: bool = False, tokenizer: Path | None = None, vocab_size: int = 30522
) -> Path:
    """Instances of the corpus (sequence 128), MLM only unless `nsp`; a tokenizer trained on the corpus
    unless one is given (pass the MLM-only preparation's to give an NSP preparation the same tokens; both
    hold out the same documents, as the split depends only on the corpus and the seed)."""
    from bert.config import PretrainConfig, load_config
    from bert.data.prepare import run_prepare

    overrides = [
        f"data.corpus=[{corpus}]",
        f"data.nsp={str(nsp).lower()}",
        f"data.vocab_size={vocab_size}",
        "data.max_seq_length=128",
        f"data.cache_dir={cache}",
    ]
    if tokenizer is not None:
        overrides.append(f"data.tokenizer={tokenizer}")
    return run_prepare(load_config(PretrainConfig, None, overrides), progress=False)


def held_out(prepared: Path, count: int, seed: int = 1234) -> dict[str, Any]:
    """Up to `count` validation sequences with fixed masks: (B, T) ids, mask, (B, P) positions and labels."""
    from bert.config import DataConfig
    from bert.data.collator import build_collator
    from bert.data.prepare import load_prepared

    splits, _ = load_prepared(prepared)
    examples = [splits["validation"][i] for i in range(min(count, len(splits["validation"])))]
    collator = build_collator(prepared, DataConfig(), seed)
    batch = collator([{**e, "epoch": 0} for e in examples])
    return {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "positions": batch.masked_lm_positions,
        "labels": batch.masked_lm_labels,
        "masked": int((batch.masked_lm_labels != -100).sum()),
        "sequences": len(examples),
    }


def mlm_loss_on(model: Any, held: dict[str, Any], our_model: bool) -> float:
    """The mean cross-entropy over the held-out masked tokens (batches of 64; no dropout)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, held["sequences"], 64):
            part = slice(start, start + 64)
            ids, mask = held["input_ids"][part], held["attention_mask"][part]
            positions, labels = held["positions"][part], held["labels"][part]
            if our_model:
                logits = model(
                    ids, torch.zeros_like(ids), mask, masked_lm_positions=positions
                ).prediction_logits
            else:
                full = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).logits
                logits = full.gather(1, positions.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
            loss = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((labels != -100).sum())
    return total / max(count, 1)


def mini_config(vocab_size: int):
    from bert.config import PretrainConfig, load_config

    config = load_config(PretrainConfig, None, ["model=mini"]).model
    config.vocab_size = vocab_size
    return config


def initial_weights(vocab_size: int, out: Path) -> Path:
    """The shared starting point: our BertForPreTraining, saved in the Hugging Face layout."""
    import torch

    from bert.model import BertForPreTraining

    torch.manual_seed(0)
    folder = out / "init"
    BertForPreTraining(mini_config(vocab_size)).save_pretrained(folder)
    return folder


def run_ours(
    prepared: Path,
    init: Path,
    out: Path,
    seconds: float,
    every: float,
    batch_size: int,
    steps_per_s: float,
    nsp: bool = False,
    lr: float = LR,
) -> tuple[list[dict], list[dict]]:
    """`bert pretrain` for `seconds`, a checkpoint about every `every` seconds; returns the kept points
    (time, step, folder) and its metrics.jsonl. `nsp`: MLM + NSP (needs an NSP preparation), else MLM only."""
    from bert import checkpoint as ckpt

    save_every = max(1, int(every * steps_per_s))
    run = out / "ours"
    cmd = [
        sys.executable, "-m", "bert.cli", "pretrain",
        f"data.prepared_dir={prepared}", f"data.nsp={str(nsp).lower()}", "model=mini", f"train.init_from={init}",
        f"train.output_dir={run}", "train.max_steps=null", f"train.max_time={seconds}s",
        f"train.batch_size={batch_size}", f"train.save_every={save_every}", "train.keep_last=null",
        "train.eval_every=0", "train.eval_batches=1", "train.log_every=50", "train.overwrite=true",
        "train.resume=false", f"optimizer.lr={lr}", f"optimizer.betas=[{BETAS[0]}, {BETAS[1]}]",
        f"optimizer.weight_decay={WEIGHT_DECAY}", f"optimizer.eps={EPS}", f"optimizer.max_grad_norm={CLIP}",
        "optimizer.warmup_steps=0", f"optimizer.warmup_ratio={WARMUP}", "optimizer.schedule=linear",
        "logging.trackers=[]", "logging.progress_bar=false",
    ]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True)
    points = []
    for folder in ckpt.list_checkpoints(run):
        meta = ckpt.read_meta(folder)
        points.append(
            {"seconds": meta["counters"]["train_seconds"], "step": meta["step"], "folder": str(folder)}
        )
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return points, metrics


def run_reference(
    prepared: Path, init: Path, seconds: float, every: float, batch_size: int, lr: float = LR
) -> list[dict]:
    """transformers' BertForMaskedLM + DataCollatorForLanguageModeling in a plain loop for `seconds`."""
    import torch
    from transformers import BertForMaskedLM, BertTokenizerFast, DataCollatorForLanguageModeling

    from bert.config import OptimizerConfig
    from bert.data.prepare import load_prepared
    from bert.optim import param_groups, progress_multiplier

    splits, _ = load_prepared(prepared)
    tokenizer = BertTokenizerFast.from_pretrained(str(prepared / "tokenizer"))
    model = BertForMaskedLM.from_pretrained(str(init))  # the same initial weights (NSP head dropped)
    model.train()
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15)
    rows = [{"input_ids": ids} for ids in splits["train"]["input_ids"]]
    loader = torch.utils.data.DataLoader(
        rows,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collator,
        generator=torch.Generator().manual_seed(0),
    )
    groups = param_groups(model, WEIGHT_DECAY)
    for group in groups:
        group.pop("use_trust_ratio")
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=BETAS, eps=EPS, fused=True)
    schedule = OptimizerConfig(lr=lr, warmup_steps=0, warmup_ratio=WARMUP, schedule="linear")
    points, elapsed, next_keep, step = [], 0.0, every, 0
    while elapsed < seconds:
        for batch in loader:
            start = time.perf_counter()
            current_lr = lr * progress_multiplier(step, min(elapsed / seconds, 1.0), schedule)
            for group in optimizer.param_groups:
                group["lr"] = current_lr
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed += time.perf_counter() - start
            step += 1
            if elapsed >= next_keep or elapsed >= seconds:
                points.append({"seconds": elapsed, "step": step, "state": copy.deepcopy(model.state_dict())})
                next_keep += every
            if elapsed >= seconds:
                break
    return points


def time_to_reach(points: list[dict], target: float) -> float | None:
    """The first training time at which the loss curve reaches `target` (linear between points)."""
    previous = {"seconds": 0.0, "loss": math.inf}
    for point in points:
        if point["loss"] <= target:
            if math.isinf(previous["loss"]):
                return point["seconds"]
            share = (previous["loss"] - target) / (previous["loss"] - point["loss"])
            return previous["seconds"] + share * (point["seconds"] - previous["seconds"])
        previous = point
    return None


def data_path(prepared: Path, out: Path, batch_size: int, steps: int, pairs: int = 5) -> dict[str, Any]:
    """`bert pretrain`'s tokens/s over steps 4 to steps + 3 (logged every 3 steps; the first 3 left out)
    against `bert bench --data` on the same batches
    (its sampler and collator with the run's seed, 3 warm-up steps), alternating `pairs` times: this machine
    drifts by 10-30% over minutes, so only neighbouring runs compare. Both run at the precision that
    `bert pretrain`'s `mixed_precision=auto` picks for BERT-mini on this machine (bf16 with bf16 units)."""
    from bert.training import resolve_precision

    precision, _ = resolve_precision("auto", width=256)  # BERT-mini's hidden size
    dtype = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}[precision]
    ratios, runs = [], []
    for i in range(pairs):
        bench_json = out / f"bench_{i}.json"
        subprocess.run(
            [sys.executable, "-m", "bert.cli", "bench", "--model", "mini", "--batch-size", str(batch_size),
             "--data", str(prepared), "--seed", "42", "--steps", str(steps), "--warmup", "3", "--no-reference",
             "--dtype", dtype, "--json", str(bench_json)],
            cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        bench = json.loads(bench_json.read_text())["ours"]["tokens_per_s_overall"]
        run = out / f"data_path_{i}"
        # a fresh folder each time: a relaunch of the same command into the same folder resumes (as a
        # requeued cluster job must) and would train nothing
        shutil.rmtree(run, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "bert.cli", "pretrain", f"data.prepared_dir={prepared}", "data.nsp=false",
             "model=mini", f"train.output_dir={run}", f"train.max_steps={steps + 3}",
             f"train.mixed_precision={precision}",
             f"train.batch_size={batch_size}", "train.eval_every=0", "train.save_every=0", "train.eval_batches=1",
             "train.log_every=3", "train.overwrite=true", "train.resume=false", "logging.trackers=[]",
             "logging.progress_bar=false"],
            cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        timed = [m for m in logs if "train/step_seconds" in m][1:]  # as the bench: 3 warm-up steps left out
        seconds = sum(3 * m["train/step_seconds"] for m in timed)  # windows of 3 steps (log_every)
        pretrain = sum(3 * m["train/tokens_per_s"] * m["train/step_seconds"] for m in timed) / seconds
        runs.append({"bench_tokens_per_s": bench, "pretrain_tokens_per_s": pretrain, "precision": precision})
        ratios.append(pretrain / bench)
    return {"runs": runs, "ratios": ratios, "median_ratio": sorted(ratios)[len(ratios) // 2]}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=20.0, help="training time of each side (default 20)")
    parser.add_argument(
        "--every", type=float, default=None, help="seconds between kept points (default 1/10)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "corpus"))
    parser.add_argument("--held-out", type=int, default=512, help="held-out sequences scored (default 512)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "time_to_quality")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--skip-data-path", action="store_true", help="only the time-to-quality runs")
    parser.add_argument("--data-path-only", action="store_true", help="only the data-path measurement")
    parser.add_argument(
        "--pairs", type=int, default=5, help="data path: alternations of bench and pretrain (default 5)"
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    seconds = args.minutes * 60
    every = args.every or seconds / 10
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"load before: {os.getloadavg()}", flush=True)
    prepared = prepare(args.corpus, args.out / "prepared")
    meta = json.loads((prepared / "meta.json").read_text())
    results: dict[str, Any] = {"minutes": args.minutes, "batch_size": args.batch_size}
    if not args.data_path_only:
        results.update(time_to_quality(prepared, meta, args, seconds, every))
    if not args.skip_data_path:
        results["data_path"] = dp = data_path(prepared, args.out, args.batch_size, steps=60, pairs=args.pairs)
        for r in dp["runs"]:
            print(
                f"data path: bert pretrain {r['pretrain_tokens_per_s']:.0f} tokens/s, bert bench on the same "
                f"batches {r['bench_tokens_per_s']:.0f}: {r['pretrain_tokens_per_s'] / r['bench_tokens_per_s']:.1%}"
            )
        print(f"data path, median of {len(dp['ratios'])} pairs: {dp['median_ratio']:.1%}")
    print(f"load after: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


def time_to_quality(
    prepared: Path, meta: dict[str, Any], args: argparse.Namespace, seconds: float, every: float
) -> dict[str, Any]:
    """Both sides for `seconds` of training, scored on the held-out sequences; prints the curves."""
    from bert.export import export_checkpoint
    from bert.model import BertForPreTraining

    held = held_out(prepared, args.held_out)
    init = initial_weights(meta["vocab_size"], args.out)
    print(f"prepared {prepared}: {meta['counts']['train']['instances']} training sequences; held out "
          f"{held['sequences']} sequences, {held['masked']} masked tokens", flush=True)  # fmt: skip

    started = time.perf_counter()
    reference = run_reference(prepared, init, seconds, every, args.batch_size)
    print(f"reference: {reference[-1]['step']} steps in {reference[-1]['seconds']:.0f} s "
          f"({time.perf_counter() - started:.0f} s wall)", flush=True)  # fmt: skip
    from transformers import BertForMaskedLM

    ref_model = BertForMaskedLM.from_pretrained(str(init))
    for point in reference:
        ref_model.load_state_dict(point.pop("state"))
        point["loss"] = mlm_loss_on(ref_model, held, our_model=False)
    steps_per_s = reference[-1]["step"] / reference[-1]["seconds"] * 3  # a guess of ours, for save_every
    ours, our_logs = run_ours(prepared, init, args.out, seconds, every, args.batch_size, steps_per_s)
    for point in ours:
        exported = export_checkpoint(point["folder"], args.out / "eval_export")
        model = BertForPreTraining.from_pretrained(exported)
        point["loss"] = mlm_loss_on(model, held, our_model=True)
    initial = mlm_loss_on(BertForPreTraining.from_pretrained(init), held, our_model=True)

    target = reference[-1]["loss"]
    reached = time_to_reach(ours, target)
    print(f"\nheld-out MLM loss (initial {initial:.3f}) against training time")
    print(f"{'side':<10} {'seconds':>8} {'step':>6} {'loss':>8}")
    for side, points in (("reference", reference), ("ours", ours)):
        for p in points:
            print(f"{side:<10} {p['seconds']:>8.0f} {p['step']:>6} {p['loss']:>8.3f}")
    ratio = None if reached is None else reached / reference[-1]["seconds"]
    if reached is None:
        when = "never, within its budget"
    elif reached == ours[0]["seconds"]:  # below the target at the first kept point: an upper bound
        when = f"by its first kept point, {reached:.0f} s: at most {ratio:.3f}x the time"
    else:
        when = f"after {reached:.0f} s: {ratio:.3f}x the time"
    print(
        f"\nreference final loss {target:.3f} after {reference[-1]['seconds']:.0f} s; ours reaches it {when}"
    )
    print(f"ours after {ours[-1]['seconds']:.0f} s: loss {ours[-1]['loss']:.3f}", flush=True)
    return {"initial_loss": initial, "reference": reference, "ours": ours, "time_ratio": ratio,
            "target_loss": target}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
