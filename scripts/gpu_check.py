"""The GPU check: what only a GPU shows, measured in one run of a few minutes, written as JSON and text.

    python scripts/gpu_check.py --out DIR [--corpus PATH] [--device cpu]

Sections (each one runs even if another failed; its error is recorded):
1. environment: torch, CUDA, the device, flash-attn;
2. bench: `bert bench` in bf16, BERT-mini and BERT-base at batch 32 and 128, sequence 128, for every attention
   path (unpadded = flash-attn's varlen kernel when installed), ours against transformers, MFU of both sides;
   plus ours with the CPU fast paths switched on, so that whether they help on a GPU is measured;
3. parity: the unpadded (flash) path against padded SDPA, bf16, last hidden states at real tokens and the loss;
4. no host sync: a padded-SDPA training step (forward, loss, backward) under
   `torch.cuda.set_sync_debug_mode("error")`, which raises at any synchronising call;
5. pretraining: 200 bf16 steps of BERT-base on a slice of the corpus: tokens/s, peak memory, MFU, loss curve;
6. compile: a compiled against an eager training step (`bert bench --sides plain,compiled`).

`--device cpu` is the dry run: the same code on tiny sizes (BERT-tiny, 2 steps, fp32, torch.compile's
'eager' backend), to check the script on a machine without a GPU. scripts/gpu_check.sh installs what it needs
and calls this.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.txt")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: the dry run")
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "data" / "corpus"))
    parser.add_argument("--corpus-mb", type=float, default=4.0, help="megabytes of the corpus to pretrain on")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="default 200 (dry run: 4)")
    parser.add_argument(
        "--work",
        default=None,
        help="scratch folder for the pretraining run (default: a temp folder, removed)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dry = args.device == "cpu"
    plan = Plan(dry, args.pretrain_steps)
    report: dict[str, Any] = {"dry_run": dry, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    sections = [
        ("environment", lambda: environment(args.device)),
        ("bench", lambda: bench(plan, args.device)),
        ("parity", lambda: parity(plan, args.device)),
        ("no_host_sync", lambda: no_host_sync(plan, args.device)),
        ("pretraining", lambda: pretraining(plan, args, out)),
        ("compile", lambda: compiled(plan, args.device)),
    ]
    for name, section in sections:
        started = time.perf_counter()
        try:
            report[name] = section()
        except Exception as err:  # noqa: BLE001 - every section runs; its failure is part of the report
            report[name] = {
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()[-3000:],
            }
        report[name]["seconds"] = round(time.perf_counter() - started, 1)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(
            f"== {name}: {report[name]['seconds']} s" + (" (error)" if "error" in report[name] else ""),
            flush=True,
        )
        _free()
    text = summary(report)
    (out / "gpu_check.txt").write_text(text + "\n")
    print(text)
    return 0


class Plan:
    """The sizes of the run: the real check on a GPU, tiny ones for the CPU dry run."""

    def __init__(self, dry: bool, pretrain_steps: int | None) -> None:
        self.dry = dry
        self.models = ["tiny"] if dry else ["mini", "base"]
        self.batches = [4] if dry else [32, 128]
        self.seq_len = 32 if dry else 128
        self.steps, self.warmup = (2, 1) if dry else (10, 3)
        self.dtype = "fp32" if dry else "bf16"
        self.pretrain_model = "tiny" if dry else "base"
        self.pretrain_steps = pretrain_steps or (4 if dry else 200)
        self.pretrain_batch = 8 if dry else 128
        self.compile_backend = "eager" if dry else "inductor"
        self.compile_model, self.compile_batch = ("tiny", 4) if dry else ("base", 32)


def _free() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    except ImportError:
        pass


def environment(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
    }
    try:
        import flash_attn

        info["flash_attn"] = flash_attn.__version__
    except ImportError:
        info["flash_attn"] = None
    for name in ("transformers", "accelerate", "datasets", "tokenizers"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def _bench_args(model: str, batch: int, seq_len: int, attn: str, device: str, plan: Plan, **extra: Any):
    defaults = dict(
        model=model,
        batch_size=batch,
        seq_len=seq_len,
        attn=attn,
        steps=plan.steps,
        warmup=plan.warmup,
        dtype=plan.dtype,
        device=device,
        seed=0,
        json=None,
        no_reference=False,
        threads=None,
        adamw="fused",
        sides="ours,reference",
        fast_paths="off",
    )
    defaults.update(extra)
    return argparse.Namespace(**defaults)


def bench(plan: Plan, device: str) -> dict[str, Any]:
    """Every model x batch x attention path, ours (no fast paths: the GPU default) against transformers; and
    for the SDPA path, ours with every fast path on."""
    from bert.bench import run_bench

    rows = []
    for model in plan.models:
        for batch in plan.batches:
            for attn in ("sdpa", "eager", "unpadded"):
                for fast_paths in ("off", "on") if attn in ("sdpa", "unpadded") else ("off",):
                    args = _bench_args(model, batch, plan.seq_len, attn, device, plan, fast_paths=fast_paths)
                    if fast_paths == "on":
                        args.sides = "ours"
                    row = {"model": model, "batch": batch, "attn": attn, "fast_paths": fast_paths}
                    try:
                        result = run_bench(args)
                        for side in result["sides"]:
                            row[side] = {
                                k: result[side].get(k)
                                for k in (
                                    "median_step_s",
                                    "tokens_per_s",
                                    "mfu",
                                    "model_flops_per_s",
                                    "peak_memory_gb",
                                )
                            }
                        row["speedup"] = result.get("speedup")
                    except Exception as err:  # noqa: BLE001 - one failing row is a finding, not an end
                        row["error"] = f"{type(err).__name__}: {err}"
                    rows.append(row)
                    _free()
    return {"rows": rows}


def _realistic_inputs(model: str, batch_size: int, seq_len: int, device: str):
    import torch

    from bert.batch import PretrainingBatch
    from bert.bench import realistic_batch
    from bert.config import PretrainConfig, load_config

    config = load_config(PretrainConfig, None, [f"model={model}"]).model
    batch = realistic_batch(batch_size, seq_len, config.vocab_size, torch.Generator().manual_seed(0))
    return config, PretrainingBatch(**batch).to(device)


def parity(plan: Plan, device: str) -> dict[str, Any]:
    """The unpadded path (flash-attn on CUDA when installed) against padded SDPA, in bf16 (fp32 dry run)."""
    import torch

    from bert.losses import pretraining_loss
    from bert.model.attention import use_flash
    from bert.model.modeling import BertForPreTraining

    model_name = plan.models[-1]
    config, batch = _realistic_inputs(model_name, plan.batches[0], plan.seq_len, device)
    torch.manual_seed(0)
    weights = BertForPreTraining(config).state_dict()
    results = {}
    for attn in ("sdpa", "unpadded"):
        config.attn_implementation = attn
        model = BertForPreTraining(config)
        model.load_state_dict(weights)
        model = model.to(device).eval()
        dtype = torch.bfloat16 if plan.dtype == "bf16" else torch.float32
        with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=plan.dtype == "bf16"):
            hidden = model.bert(
                **{k: v for k, v in batch.model_inputs().items() if k != "masked_lm_positions"}
            )
            outputs = model(**batch.model_inputs())
            loss = pretraining_loss(outputs, batch).loss
            probe = torch.zeros(1, 1, 1, device=device, dtype=dtype)
        results[attn] = (hidden.last_hidden_state.float(), float(loss))
        flash = use_flash(probe) if attn == "unpadded" else None
    real = batch.attention_mask.bool()
    diff = (results["sdpa"][0][real] - results["unpadded"][0][real]).abs()
    tolerance = 0.05 if plan.dtype == "bf16" else 1e-4
    return {
        "model": model_name,
        "unpadded_kernel": "flash_attn_varlen_func" if flash else "reference fallback (re-padded SDPA)",
        "max_abs_diff_hidden": float(diff.max()),
        "mean_abs_diff_hidden": float(diff.mean()),
        "loss_sdpa": results["sdpa"][1],
        "loss_unpadded": results["unpadded"][1],
        "tolerance": tolerance,
        "within_tolerance": bool(diff.max() <= tolerance),
    }


def no_host_sync(plan: Plan, device: str) -> dict[str, Any]:
    """A padded-SDPA training step that must not synchronise with the host (CUDA only)."""
    import torch

    from bert.losses import pretraining_loss
    from bert.model.modeling import BertForPreTraining

    if device != "cuda":
        return {"skipped": "CUDA only: torch.cuda.set_sync_debug_mode needs a GPU"}
    config, batch = _realistic_inputs(plan.models[-1], plan.batches[0], plan.seq_len, device)
    config.attn_implementation = "sdpa"
    model = BertForPreTraining(config).to(device).train()
    masked, labelled = float(batch.num_masked()), float(batch.num_nsp_labels())  # host counts, read first

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = pretraining_loss(model(**batch.model_inputs()), batch, masked, labelled).loss
        loss.backward()

    step()  # warm-up: kernels chosen, memory allocated
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        ok, problem = True, None
    except RuntimeError as err:
        ok, problem = False, str(err)[:500]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return {"forward_backward_without_sync": ok, "error_raised": problem}


def _corpus_slice(corpus: Path, megabytes: float, target: Path) -> Path:
    """The first `megabytes` of the corpus's text files, copied whole, into `target`."""
    target.mkdir(parents=True, exist_ok=True)
    budget = int(megabytes * 2**20)
    for path in sorted(p for p in corpus.rglob("*") if p.is_file()):
        if budget <= 0:
            break
        shutil.copy2(path, target / path.name)
        budget -= path.stat().st_size
    return target


def pretraining(plan: Plan, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """`bert pretrain` for `plan.pretrain_steps` bf16 steps on a slice of the corpus."""
    import tempfile

    from bert.config import PretrainConfig, load_config
    from bert.pretrain import pretrain

    corpus = Path(args.corpus)
    # Not under --out: the run's checkpoint (1.3 GB for BERT-base) is no result to bring back.
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    shutil.rmtree(work, ignore_errors=True)
    if corpus.is_dir():
        inputs = str(_corpus_slice(corpus, args.corpus_mb, work / "corpus"))
        source = f"{corpus} (first {args.corpus_mb} MB of files)"
    else:
        inputs, source = "synthetic", "synthetic (no corpus at --corpus)"
    overrides = [
        f"model={plan.pretrain_model}",
        f"data.corpus=[{inputs}]",
        f"data.cache_dir={work / 'prepared'}",
        f"data.vocab_size={2000 if plan.dry else 30522}",
        f"data.max_seq_length={plan.seq_len}",
        f"train.output_dir={work / 'run'}",
        f"train.max_steps={plan.pretrain_steps}",
        f"train.batch_size={plan.pretrain_batch}",
        f"train.mixed_precision={'no' if plan.dry else 'bf16'}",
        "train.eval_every=0",
        "train.eval_batches=10",
        "train.save_every=0",
        "train.log_every=10" if not plan.dry else "train.log_every=1",
        "optimizer.lr=2e-4",
        "optimizer.warmup_steps=20",
        "logging.trackers=[]",
        "logging.progress_interval=15",
    ]
    started = time.perf_counter()
    try:
        result = pretrain(load_config(PretrainConfig, None, overrides))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - started
    train_logs = [h for h in result["history"] if "train/loss" in h]
    later = train_logs[len(train_logs) // 2 :] or train_logs  # after the start-up steps
    mean = lambda key: sum(h[key] for h in later if key in h) / max(1, sum(key in h for h in later))  # noqa: E731
    return {
        "corpus": source,
        "model": plan.pretrain_model,
        "steps": result["step"],
        "batch_size": plan.pretrain_batch,
        "seconds_with_prepare": round(seconds, 1),
        "tokens_per_s_second_half": mean("train/tokens_per_s"),
        "mfu_second_half": mean("train/mfu") if any("train/mfu" in h for h in later) else None,
        "peak_memory_gb": max(
            (h["train/peak_memory_gb"] for h in train_logs if "train/peak_memory_gb" in h), default=None
        ),
        "loss_curve": [[h["step"], round(h["train/loss"], 4)] for h in train_logs],
        "eval": {k: v for k, v in (result.get("metrics") or {}).items() if k.startswith("eval/")},
    }


def compiled(plan: Plan, device: str) -> dict[str, Any]:
    """torch.compile against eager for one training step (our reference path, SDPA)."""
    from bert.bench import run_bench

    args = _bench_args(plan.compile_model, plan.compile_batch, plan.seq_len, "sdpa", device, plan)
    args.sides = "plain,compiled"
    args.compile_backend = plan.compile_backend  # the dry run traces with 'eager' (no code generation)
    result = run_bench(args)
    return {
        "model": plan.compile_model,
        "batch": plan.compile_batch,
        "backend": plan.compile_backend,
        "eager_step_s": result["plain"]["median_step_s"],
        "compiled_step_s": result["compiled"]["median_step_s"],
        "compile_and_warmup_s": result["compiled"]["warmup_s"],
        "speedup": result["plain"]["median_step_s"] / result["compiled"]["median_step_s"],
    }


def summary(report: dict[str, Any]) -> str:
    """A short text of the figures that matter."""
    lines = [f"GPU check ({'CPU dry run' if report['dry_run'] else 'GPU'}) started {report['started']}"]
    env = report.get("environment", {})
    lines.append(
        f"device {env.get('device')}, torch {env.get('torch')}, CUDA {env.get('cuda')}, "
        f"flash-attn {env.get('flash_attn') or 'not installed'}"
    )
    lines.append("bench (tokens/s; MFU; ours vs transformers):")
    for row in report.get("bench", {}).get("rows", []):
        head = f"  {row['model']:<5} b{row['batch']:<4} {row['attn']:<9} fast paths {row['fast_paths']:<3}"
        if "error" in row:
            lines.append(f"{head} error: {row['error'][:120]}")
            continue
        ours, ref = row.get("ours", {}), row.get("reference", {})
        mfu = lambda r: "-" if r.get("mfu") is None else f"{r['mfu']:.1%}"  # noqa: E731
        text = f"{head} ours {ours.get('tokens_per_s', 0):>10.0f} ({mfu(ours)})"
        if ref:
            text += f"  reference {ref.get('tokens_per_s', 0):>10.0f} ({mfu(ref)})  {row.get('speedup') or 0:.2f}x"
        lines.append(text)
    for name in ("parity", "no_host_sync", "pretraining", "compile"):
        section = {k: v for k, v in report.get(name, {}).items() if k not in ("traceback", "loss_curve")}
        lines.append(f"{name}: {json.dumps(section, default=str)}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
