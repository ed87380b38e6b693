"""`bert bench`: training-step throughput of our BertForPreTraining against transformers', side by side.

The sides (`--sides`): `ours` (with the fast paths `--fast-paths` selects, bert.model.fast), `plain` (ours
without any, the reference path of bert/model), `compiled` (ours under torch.compile) and `reference`
(`transformers.BertForPreTraining` with its default attention, its MLM loss on (B, T, V) logits with -100
labels, as its users compute it). All get the same config, the same initial weights (ours copied into the
reference through the state dict, the key names being identical), the same batches and the same optimizer
(torch's fused AdamW, which our training and the transformers Trainer (torch >= 2.8) use by default, or with
`--adamw default` torch's default implementation), and run alternately in one process: warm-up steps for
each, then a step of each side on the same batch, in turn. A step is forward + loss + backward + clipping the
gradient norm to 1 + AdamW step + zero_grad, in train mode (dropout on). Wall time is the figure (median
tokens/s over the steps); the CPU time of the process is printed beside it because, on a shared machine,
other jobs stretch wall time. Tokens/s counts REAL (non-pad) tokens. Model FLOP/s applies one count to every
side (`bert.model.flops`: the FLOPs a step needs), so its ratios are the speedups; on a known GPU the MFU is
that over the device's peak.

Batches: by default one batch imitating Google's pretraining data, reused every step: sentence pairs filling
the sequence 90% of the time and a random shorter target (short_seq_prob 0.1) otherwise, each pair falling
short of its target by a random amount as sentence boundaries and the NSP random-B truncation do (about 75%
real tokens); 15% of the real tokens masked (at most 20 per 128), P = the batch's largest count, unused slots
position 0 / label -100. With `--data PREPARED`, the batches `bert pretrain` would read first from that folder
(its sampler and collator, `--seed` as train.seed), one per step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bert.batch import IGNORE_INDEX


def realistic_batch(
    batch_size: int, seq_len: int, vocab_size: int, generator: torch.Generator, masked_lm_prob: float = 0.15
) -> dict[str, torch.Tensor]:
    """A pretraining batch with realistic lengths: see the module docstring. Ids avoid 0..4 (specials)."""

    def uniform() -> float:
        return float(torch.rand((), generator=generator))

    max_predictions = max(1, round(seq_len * masked_lm_prob * 20 / 19.2))  # 20 for 128, Google's setting
    rows = []
    for _ in range(batch_size):
        target = seq_len if uniform() >= 0.1 else 8 + int(uniform() * (seq_len - 8))
        length = max(5, math.ceil(target * (0.6 + 0.4 * uniform())))
        split = 1 + max(1, int((length - 3) * (0.2 + 0.6 * uniform())))  # [CLS] A [SEP] | B [SEP]
        ids = torch.randint(5, vocab_size, (length,), generator=generator)
        ids[0], ids[split], ids[-1] = 2, 3, 3
        types = torch.zeros(length, dtype=torch.long)
        types[split + 1 :] = 1
        candidates = [i for i in range(1, length) if i != split and i != length - 1]
        count = min(max_predictions, max(1, round(len(candidates) * masked_lm_prob)))
        pick = torch.randperm(len(candidates), generator=generator)[:count]
        positions = torch.tensor(sorted(candidates[i] for i in pick.tolist()))
        rows.append((ids, types, positions))
    pad_to = max(len(r[0]) for r in rows)
    pad_to = min(seq_len, -(-pad_to // 8) * 8)
    p = max(len(r[2]) for r in rows)
    batch = {
        "input_ids": torch.zeros(batch_size, pad_to, dtype=torch.long),
        "token_type_ids": torch.zeros(batch_size, pad_to, dtype=torch.long),
        "attention_mask": torch.zeros(batch_size, pad_to, dtype=torch.long),
        "masked_lm_positions": torch.zeros(batch_size, p, dtype=torch.long),
        "masked_lm_labels": torch.full((batch_size, p), IGNORE_INDEX, dtype=torch.long),
        "next_sentence_label": torch.randint(0, 2, (batch_size,), generator=generator),
    }
    for b, (ids, types, positions) in enumerate(rows):
        n = len(ids)
        batch["masked_lm_positions"][b, : len(positions)] = positions
        batch["masked_lm_labels"][b, : len(positions)] = ids[positions]
        ids = ids.clone()
        ids[positions] = 4  # [MASK]
        batch["input_ids"][b, :n] = ids
        batch["token_type_ids"][b, :n] = types
        batch["attention_mask"][b, :n] = 1
    return batch


def prepared_batches(folder: str | Path, batch_size: int, seed: int, count: int) -> list[Any]:
    """The first `count` training batches `bert pretrain` would read from a prepared folder (its sampler and
    collator, dynamic masks): the bench then times real data, as the training loop sees it."""
    from bert.config import DataConfig
    from bert.data.collator import build_collator
    from bert.data.prepare import load_prepared
    from bert.sampler import EpochDataset, ShardedBatchSampler

    splits, meta = load_prepared(folder)
    fields = {k: meta[k] for k in ("masked_lm_prob", "max_predictions_per_seq", "whole_word_mask")}
    collator = build_collator(folder, DataConfig(**fields), seed)
    sampler, dataset = (
        iter(ShardedBatchSampler(len(splits["train"]), batch_size, 1, 0, seed)),
        EpochDataset(splits["train"]),
    )
    return [collator([dataset[key] for key in next(sampler)]) for _ in range(count)]


def hf_mlm_labels(
    input_ids: torch.Tensor, masked_lm_positions: torch.Tensor, masked_lm_labels: torch.Tensor
) -> torch.Tensor:
    """(B, P) slot labels (-100 = unused) at (B, P) positions -> Hugging Face's (B, T) form: the label at the
    masked positions, -100 elsewhere."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)  # (B, T), on the batch's device
    # Unused slots hold position 0 ([CLS], never masked) and the label IGNORE_INDEX, so scattering every
    # slot writes IGNORE_INDEX where it already is: no boolean indexing, no host read, no CPU tensor.
    return labels.scatter_(1, masked_lm_positions, masked_lm_labels)


SIDES = ("ours", "plain", "compiled", "reference")
"""What `--sides` can time: ours with the fast paths `--fast-paths` selects, ours with none (the reference
path of bert/model), ours compiled (`torch.compile`, no fast paths), and transformers."""


AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Side:
    """One timed column: a model (ours in some form, or transformers') at one autocast dtype."""

    name: str  # ours, plain, compiled, reference
    dtype: str  # fp32, bf16, fp16
    label: str  # the name, or name@dtype when several dtypes run
    loss_of: Any  # batch -> scalar loss (forward and loss under the dtype's autocast)
    model: Any
    optimizer: Any
    times: list[tuple[float, float]] = field(default_factory=list)  # (wall, CPU) seconds of each step
    warmup_s: float = 0.0
    peak: float = 0.0  # CUDA: the step's own peak memory above what was allocated before it


def bench_dtypes(args: argparse.Namespace) -> list[str]:
    """`--dtype fp32` or a comma-separated list (`fp32,bf16`: every side at each, interleaved)."""
    from bert.errors import UserError

    dtypes = list(dict.fromkeys(d.strip() for d in str(args.dtype).split(",") if d.strip()))
    unknown = [d for d in dtypes if d not in AUTOCAST_DTYPES]
    if unknown or not dtypes:
        raise UserError(
            f"--dtype {args.dtype}: expected a comma-separated list of {', '.join(AUTOCAST_DTYPES)}"
        )
    return dtypes


def bench_batches(args: argparse.Namespace, config: Any, device: torch.device) -> list[Any]:
    """The batches of the warm-up and the timed steps, on the device: `--data`'s, or one realistic batch."""
    from bert.batch import PretrainingBatch

    if getattr(args, "data", None):  # the batches bert pretrain would read first, one a step
        batches = prepared_batches(args.data, args.batch_size, args.seed, args.warmup + args.steps)
    else:  # one batch of realistic lengths, every step
        generator = torch.Generator().manual_seed(args.seed)
        batches = [
            PretrainingBatch(**realistic_batch(args.batch_size, args.seq_len, config.vocab_size, generator))
        ]
    return [b.to(device) for b in batches]


def build_sides(
    args: argparse.Namespace,
    names: list[str],
    dtypes: list[str],
    config: Any,
    device: torch.device,
    paths: Any,
) -> list[Side]:
    """Every (side, dtype) with the same initial weights and a fresh AdamW (module docstring)."""
    from bert.model import fast
    from bert.model.modeling import BertForPreTraining

    torch.manual_seed(args.seed)
    initial = BertForPreTraining(config).state_dict()
    # The same optimizer for all: the fused AdamW (what training uses), or torch's default implementation.
    adamw = {"fused": True} if getattr(args, "adamw", "fused") == "fused" else {}
    sides = []
    for dtype in dtypes:
        for name in names:
            autocast = _autocast(device, AUTOCAST_DTYPES[dtype])
            if name == "reference":
                model = _reference_model(config, initial, device)
                loss_of = _reference_step(model, autocast)
            else:
                model = BertForPreTraining(config)
                model.load_state_dict(initial)
                chosen = paths if name == "ours" else fast.FastPaths.none()
                model = fast.enable(model.to(device).train(), chosen)
                if name == "compiled":
                    model.compile(backend=getattr(args, "compile_backend", "inductor"))
                loss_of = _our_step(model, autocast, chosen.pretraining_loss())
            label = name if len(dtypes) == 1 else f"{name}@{dtype}"
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **adamw)
            sides.append(Side(name, dtype, label, loss_of, model, optimizer))
    return sides


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    def context() -> Any:
        return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)

    return context


def _reference_model(config: Any, initial: dict[str, torch.Tensor], device: torch.device) -> Any:
    from bert.errors import UserError

    try:
        import transformers
    except ImportError:
        raise UserError(
            "bert bench: the reference needs `transformers` (pip install bertsmith[hf])"
        ) from None
    ref = transformers.BertForPreTraining(config.to_transformers())
    ref.load_state_dict(initial)
    return ref.to(device).train()


def _reference_step(ref: Any, autocast: Any) -> Any:
    def step(batch: Any) -> torch.Tensor:
        hf_labels = hf_mlm_labels(batch.input_ids, batch.masked_lm_positions, batch.masked_lm_labels)
        with autocast():
            return ref(
                input_ids=batch.input_ids,
                token_type_ids=batch.token_type_ids,
                attention_mask=batch.attention_mask,
                labels=hf_labels,
                next_sentence_label=batch.next_sentence_label,
            ).loss

    return step


def timed_step(side: Side, batch: Any, device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one step: forward, loss, backward, clipping the
    gradient norm to 1, AdamW. On CUDA also the step's own peak of memory above what was allocated before
    it (the sides run in turn, so the device's peak alone would be the largest side's)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    side.loss_of(batch).backward()
    torch.nn.utils.clip_grad_norm_(side.model.parameters(), 1.0)  # as training (and the Trainer) do
    side.optimizer.step()
    side.optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        side.peak = max(side.peak, torch.cuda.max_memory_allocated(device) - before)
    return time.perf_counter() - start, time.process_time() - cpu_start


def time_sides(
    sides: list[Side], batches: list[Any], timed_batches: list[Any], warmup: int, device: Any
) -> None:
    """Warm every side up, then one step of each side on the same batch, in turn: load changes on the
    machine hit every side (and dtype) alike."""
    for i in range(warmup):
        for side in sides:
            side.warmup_s += timed_step(side, batches[i % len(batches)], device)[0]
    for step_batch in timed_batches:
        for side in sides:
            side.times.append(timed_step(side, step_batch, device))


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Time the sides as described in the module docstring; print a table (and write JSON with --json)."""
    from bert.config import PretrainConfig, load_config
    from bert.model import fast

    torch.set_num_threads(getattr(args, "threads", None) or os.cpu_count() or 1)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config = load_config(PretrainConfig, None, [f"model={args.model}"]).model
    config.attn_implementation = args.attn
    if getattr(args, "data", None):
        from bert.data.prepared import read_meta

        config.vocab_size = read_meta(args.data)["vocab_size"]
    batches = bench_batches(args, config, device)
    timed_batches = [batches[(args.warmup + i) % len(batches)] for i in range(args.steps)]
    fast_paths = fast.select(device, getattr(args, "fast_paths", "auto"))
    dtypes = bench_dtypes(args)
    sides = build_sides(args, _sides(args), dtypes, config, device, fast_paths)
    time_sides(sides, batches, timed_batches, args.warmup, device)
    result = summarise_bench(args, config, device, sides, dtypes, timed_batches, fast_paths)
    _print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    return result


def summarise_bench(
    args: argparse.Namespace,
    config: Any,
    device: torch.device,
    sides: list[Side],
    dtypes: list[str],
    timed_batches: list[Any],
    fast_paths: Any,
) -> dict[str, Any]:
    """The run's settings and, per side, its step time, tokens/s, FLOP/s and MFU, and the ratios: against
    transformers at the same dtype, and against the first dtype of the same side."""
    from bert.model.attention import varlen_backend
    from bert.model.flops import training_flops_per_token

    batch = timed_batches[0]
    real_tokens = sum(b.num_real_tokens() for b in timed_batches) / len(timed_batches)  # per step
    result: dict[str, Any] = {
        "model": args.model,
        "data": getattr(args, "data", None) or "realistic_batch",
        "attn": args.attn,
        "dtype": ",".join(dtypes),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "seq_len": int(batch.input_ids.shape[1]),
        "real_tokens": real_tokens,
        "real_fraction": statistics.mean(b.num_real_tokens() / b.input_ids.numel() for b in timed_batches),
        "masked_slots_P": int(batch.masked_lm_positions.shape[1]),
        "steps": args.steps,
        "adamw": "fused" if getattr(args, "adamw", "fused") == "fused" else "default",
        "fast_paths": fast_paths.names(),
        "sides": [s.label for s in sides],
        "load_average": os.getloadavg(),
    }
    # One FLOP count for every side (our model's, bert.model.flops): FLOP/s ratios are the speedups, and the
    # MFU is the share of the GPU's peak spent on the matmuls a step needs. T = real tokens per sequence.
    masked = statistics.mean(b.num_masked() for b in timed_batches)
    flops_per_token = training_flops_per_token(config, real_tokens / args.batch_size, masked / real_tokens)
    result["flops_per_token"] = flops_per_token
    if args.attn == "unpadded":
        probe = torch.empty(1, 1, config.hidden_size // config.num_attention_heads, device=device,
                            dtype=AUTOCAST_DTYPES[dtypes[-1]] or torch.float32)  # fmt: skip
        result["varlen_kernel"] = (
            "bucketed (CPU fast path)" if fast_paths.bucketed_attention else varlen_backend(probe)
        )
    for side in sides:
        result[side.label] = side_figures(
            args, config, device, side, timed_batches, flops_per_token, fast_paths
        )
    _ratios(result, sides, dtypes)
    return result


def side_figures(
    args: argparse.Namespace,
    config: Any,
    device: torch.device,
    side: Side,
    timed_batches: list[Any],
    flops_per_token: float,
    fast_paths: Any,
) -> dict[str, Any]:
    """One side's figures from its step times (wall time's median; CPU time beside it)."""
    from bert.model.flops import executed_flops_per_sequence, mfu

    batch = timed_batches[0]
    step_tokens = [b.num_real_tokens() for b in timed_batches]
    real_tokens = sum(step_tokens) / len(step_tokens)
    # What the side executes per step: the padded paths run every padded token (transformers' MLM head at
    # every token, ours at the P slots); the unpadded ones (ours on the CPU, `unpadded`) run the real tokens.
    padded_t, slots = batch.input_ids.shape[1], batch.masked_lm_positions.shape[1]
    unpadded = args.attn == "unpadded" or (fast_paths.bucketed_attention and device.type == "cpu")
    if side.name == "ours" and unpadded:
        executed_per_token = flops_per_token
    else:
        at = padded_t if side.name == "reference" else slots
        executed_per_token = executed_flops_per_sequence(config, padded_t, at) * args.batch_size / real_tokens
    values = side.times
    tokens_per_s = statistics.median(n / w for n, (w, _) in zip(step_tokens, values))
    flops = tokens_per_s * flops_per_token
    figures = {
        "dtype": side.dtype,
        "median_step_s": statistics.median(w for w, _ in values),
        "mean_step_s": statistics.mean(w for w, _ in values),
        # what a training loop would log: all tokens over all the time (tails included)
        "tokens_per_s_overall": sum(step_tokens) / sum(w for w, _ in values),
        "tokens_per_s": tokens_per_s,
        "median_cpu_s": statistics.median(c for _, c in values),
        "warmup_s": side.warmup_s,
        "model_flops_per_s": flops,
        "mfu": mfu(flops, device, side.dtype),  # useful FLOPs; None on the CPU or an unknown GPU
        "executed_flops_per_s": tokens_per_s * executed_per_token,
        "mfu_executed": mfu(tokens_per_s * executed_per_token, device, side.dtype),
    }
    if device.type == "cuda":
        resident = sum(t.numel() * t.element_size() for t in _tensors(side.model, side.optimizer))
        figures["peak_memory_gb"] = (resident + side.peak) / 2**30
    return figures


def _ratios(result: dict[str, Any], sides: list[Side], dtypes: list[str]) -> None:
    """Each side against transformers at its dtype (`speedup`, `cpu_time_ratio`), and against its own first
    dtype (`vs_first_dtype`); `result['speedup']` is ours against the reference at the first dtype."""
    by_key = {(s.name, s.dtype): s.label for s in sides}
    for side in sides:
        figures = result[side.label]
        reference = by_key.get(("reference", side.dtype))
        if reference is not None and side.name != "reference":
            figures["speedup"] = figures["tokens_per_s"] / result[reference]["tokens_per_s"]
            figures["cpu_time_ratio"] = result[reference]["median_cpu_s"] / figures["median_cpu_s"]
        first = by_key[(side.name, dtypes[0])]
        if side.dtype != dtypes[0]:
            figures["vs_first_dtype"] = figures["tokens_per_s"] / result[first]["tokens_per_s"]
    ours = by_key.get(("ours", dtypes[0]))
    if ours is not None and "speedup" in result[ours]:
        result["speedup"] = result[ours]["speedup"]
        result["cpu_time_ratio"] = result[ours]["cpu_time_ratio"]


def _tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The tensors a side keeps between steps: weights and optimizer state (each once)."""
    seen, out = set(), []
    for t in [*model.parameters(), *(v for s in optimizer.state.values() for v in s.values())]:
        if isinstance(t, torch.Tensor) and t.is_cuda and id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _sides(args: argparse.Namespace) -> list[str]:
    from bert.errors import UserError

    if getattr(args, "sides", None):
        sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    else:
        sides = ["ours"] if getattr(args, "no_reference", False) else ["ours", "reference"]
    unknown = [s for s in sides if s not in SIDES]
    if unknown or not sides:
        raise UserError(f"--sides {','.join(sides)}: expected a comma-separated list of {', '.join(SIDES)}")
    return list(dict.fromkeys(sides))


def _our_step(model: Any, autocast: Any, loss_fn: Any) -> Any:
    def step(batch: Any) -> torch.Tensor:
        with autocast():
            outputs = model(**batch.model_inputs())
            return loss_fn(outputs, batch).loss

    return step


def _print_table(result: dict[str, Any]) -> None:
    print(
        f"model={result['model']} attn={result['attn']} dtype={result['dtype']} device={result['device']} "
        f"threads={result['threads']} batch={result['batch_size']}x{result['seq_len']} "
        f"real tokens={result['real_tokens']:.0f} ({result['real_fraction']:.0%}) P={result['masked_slots_P']} "
        f"adamw={result['adamw']} load={result['load_average'][0]:.2f}"
    )
    if "ours" in result["sides"]:
        print(f"fast paths of 'ours': {', '.join(result['fast_paths']) or 'none'}")
    if "varlen_kernel" in result:
        print(f"unpadded attention kernel: {result['varlen_kernel']}")
    several = "," in result["dtype"]
    print(
        f"{'side':<16} {'step (median)':>14} {'real tokens/s':>14} {'CPU time/step':>14} "
        f"{'model TFLOP/s':>14} {'MFU':>6} {'exec. MFU':>9} {'vs reference':>13}"
        + (f" {'vs ' + result['dtype'].split(',')[0]:>9}" if several else "")
    )
    for name in result["sides"]:
        r = result[name]
        mfu = "-" if r["mfu"] is None else f"{r['mfu']:.1%}"
        executed = "-" if r["mfu_executed"] is None else f"{r['mfu_executed']:.1%}"
        ratio = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        print(
            f"{name:<16} {r['median_step_s'] * 1000:>11.1f} ms {r['tokens_per_s']:>14.0f} "
            f"{r['median_cpu_s'] * 1000:>11.1f} ms {r['model_flops_per_s'] / 1e12:>14.3f} {mfu:>6} "
            f"{executed:>9} {ratio:>13}"
            + (f" {r['vs_first_dtype']:>8.2f}x" if "vs_first_dtype" in r else (" " * 10 if several else ""))
        )
    if "speedup" in result:
        print(f"speedup (ours / reference): {result['speedup']:.2f}x")
        # CPU seconds of this process: less sensitive to other jobs on a shared machine than wall time.
        print(f"CPU-time ratio (reference / ours): {result['cpu_time_ratio']:.2f}x")
    for name in result["sides"]:
        if name.startswith("compiled"):
            print(f"compile + warm-up of '{name}': {result[name]['warmup_s']:.1f} s")
