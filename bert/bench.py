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


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Time the sides as described in the module docstring; print a table (and write JSON with --json)."""
    from bert.batch import PretrainingBatch
    from bert.config import PretrainConfig, load_config
    from bert.errors import UserError
    from bert.losses import pretraining_loss
    from bert.model import fast
    from bert.model.attention import varlen_backend
    from bert.model.flops import executed_flops_per_sequence, mfu, training_flops_per_token
    from bert.model.modeling import BertForPreTraining

    torch.set_num_threads(getattr(args, "threads", None) or os.cpu_count() or 1)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sides = _sides(args)
    config = load_config(PretrainConfig, None, [f"model={args.model}"]).model
    config.attn_implementation = args.attn
    if getattr(args, "data", None):  # the batches bert pretrain would read first, one a step
        batches = prepared_batches(args.data, args.batch_size, args.seed, args.warmup + args.steps)
        config.vocab_size = int(json.loads((Path(args.data) / "meta.json").read_text())["vocab_size"])
    else:  # one batch of realistic lengths, every step
        generator = torch.Generator().manual_seed(args.seed)
        batches = [
            PretrainingBatch(**realistic_batch(args.batch_size, args.seq_len, config.vocab_size, generator))
        ]
    batches = [b.to(device) for b in batches]
    batch = batches[0]
    timed_batches = [batches[(args.warmup + i) % len(batches)] for i in range(args.steps)]
    real_tokens = sum(b.num_real_tokens() for b in timed_batches) / len(timed_batches)  # per step
    autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    # The same optimizer for all: the fused AdamW (what training uses), or torch's default implementation.
    adamw = {"fused": True} if getattr(args, "adamw", "fused") == "fused" else {}

    def autocast():
        if autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=autocast_dtype)

    torch.manual_seed(args.seed)
    initial = BertForPreTraining(config).state_dict()
    fast_paths = fast.select(device, getattr(args, "fast_paths", "auto"))
    steps: dict[str, tuple[Any, torch.optim.Optimizer]] = {}
    for side in sides:
        if side == "reference":
            continue
        model = BertForPreTraining(config)
        model.load_state_dict(initial)
        paths = fast_paths if side == "ours" else fast.FastPaths.none()
        model = fast.enable(model.to(device).train(), paths)
        if side == "compiled":
            model.compile(backend=getattr(args, "compile_backend", "inductor"))
        steps[side] = (_our_step(model, autocast, paths.cross_entropy(), pretraining_loss), model)
    if "reference" in sides:
        try:
            import transformers
        except ImportError:
            raise UserError(
                "bert bench: the reference needs `transformers` (pip install bertsmith[hf])"
            ) from None
        hf_fields = {"attn_implementation", "pre_layer_norm", "architectures"}
        hf_config = transformers.BertConfig(
            **{k: v for k, v in config.to_dict().items() if k not in hf_fields}
        )
        ref = transformers.BertForPreTraining(hf_config)
        ref.load_state_dict(initial)
        ref = ref.to(device).train()

        def ref_step(batch: PretrainingBatch) -> torch.Tensor:
            hf_labels = hf_mlm_labels(batch.input_ids, batch.masked_lm_positions, batch.masked_lm_labels)
            with autocast():
                return ref(
                    input_ids=batch.input_ids,
                    token_type_ids=batch.token_type_ids,
                    attention_mask=batch.attention_mask,
                    labels=hf_labels,
                    next_sentence_label=batch.next_sentence_label,
                ).loss

        steps["reference"] = (ref_step, ref)
    optimizers = {
        side: torch.optim.AdamW(model.parameters(), lr=1e-4, **adamw) for side, (_, model) in steps.items()
    }

    step_peaks: dict[str, float] = {side: 0.0 for side in steps}

    def timed(side: str, batch: PretrainingBatch) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) of one step: forward, loss, backward, clipping the
        gradient norm to 1, AdamW. On CUDA also the step's own peak of memory above what was allocated
        before it (the sides run in turn, so the device's peak alone would be the largest side's)."""
        loss_of, _ = steps[side]
        optimizer = optimizers[side]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        loss_of(batch).backward()
        torch.nn.utils.clip_grad_norm_(steps[side][1].parameters(), 1.0)  # as training (and the Trainer) do
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            step_peaks[side] = max(step_peaks[side], torch.cuda.max_memory_allocated(device) - before)
        return time.perf_counter() - start, time.process_time() - cpu_start

    warmup_seconds: dict[str, float] = {side: 0.0 for side in steps}
    for i in range(args.warmup):
        for side in steps:
            warmup_seconds[side] += timed(side, batches[i % len(batches)])[0]
    times: dict[str, list[tuple[float, float]]] = {side: [] for side in steps}
    for step_batch in timed_batches:
        for side in steps:  # interleaved, so that load changes hit every side alike
            times[side].append(timed(side, step_batch))

    result: dict[str, Any] = {
        "model": args.model,
        "data": getattr(args, "data", None) or "realistic_batch",
        "attn": args.attn,
        "dtype": args.dtype,
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
        "adamw": "fused" if adamw else "default",
        "fast_paths": fast_paths.names(),
        "sides": list(steps),
        "load_average": os.getloadavg(),
    }
    # One FLOP count for every side (our model's, bert.model.flops): FLOP/s ratios are the speedups, and the
    # MFU is the share of the GPU's peak spent on the matmuls a step needs. T = real tokens per sequence.
    masked = statistics.mean(b.num_masked() for b in timed_batches)
    flops_per_token = training_flops_per_token(config, real_tokens / args.batch_size, masked / real_tokens)
    result["flops_per_token"] = flops_per_token
    step_tokens = [b.num_real_tokens() for b in timed_batches]
    # What each side executes per step: the padded paths run every padded token (transformers' MLM head at
    # every token, ours at the P slots); the unpadded ones (ours on the CPU, `unpadded`) run the real tokens.
    padded_t, slots = batch.input_ids.shape[1], batch.masked_lm_positions.shape[1]
    unpadded = args.attn == "unpadded" or (fast_paths.bucketed_attention and device.type == "cpu")
    executed_per_token = {
        side: (
            flops_per_token
            if side == "ours" and unpadded
            else executed_flops_per_sequence(config, padded_t, padded_t if side == "reference" else slots)
            * args.batch_size
            / real_tokens
        )
        for side in steps
    }
    if args.attn == "unpadded":
        probe_dtype = autocast_dtype or torch.float32
        probe = torch.empty(
            1, 1, config.hidden_size // config.num_attention_heads, device=device, dtype=probe_dtype
        )
        result["varlen_kernel"] = (
            "bucketed (CPU fast path)" if fast_paths.bucketed_attention else varlen_backend(probe)
        )
    for side, values in times.items():
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        tokens_per_s = statistics.median(n / w for n, (w, _) in zip(step_tokens, values))
        flops = tokens_per_s * flops_per_token
        result[side] = {
            "median_step_s": wall,
            "mean_step_s": statistics.mean(w for w, _ in values),
            # what a training loop would log: all tokens over all the time (tails included)
            "tokens_per_s_overall": sum(step_tokens) / sum(w for w, _ in values),
            "tokens_per_s": tokens_per_s,
            "median_cpu_s": cpu,
            "warmup_s": warmup_seconds[side],
            "model_flops_per_s": flops,
            "mfu": mfu(flops, device, args.dtype),  # useful FLOPs; None on the CPU or an unknown GPU
            "executed_flops_per_s": tokens_per_s * executed_per_token[side],
            "mfu_executed": mfu(tokens_per_s * executed_per_token[side], device, args.dtype),
        }
        if device.type == "cuda":
            model, optimizer = steps[side][1], optimizers[side]
            resident = sum(t.numel() * t.element_size() for t in _tensors(model, optimizer))
            result[side]["peak_memory_gb"] = (resident + step_peaks[side]) / 2**30
    if "reference" in result:
        for side in steps:
            if side != "reference":
                result[side]["speedup"] = result[side]["tokens_per_s"] / result["reference"]["tokens_per_s"]
                result[side]["cpu_time_ratio"] = (
                    result["reference"]["median_cpu_s"] / result[side]["median_cpu_s"]
                )
        if "ours" in result:
            result["speedup"] = result["ours"]["speedup"]
            result["cpu_time_ratio"] = result["ours"]["cpu_time_ratio"]
    _print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    return result


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


def _our_step(model: Any, autocast: Any, cross_entropy: Any, loss_fn: Any) -> Any:
    def step(batch: Any) -> torch.Tensor:
        with autocast():
            outputs = model(**batch.model_inputs())
            return loss_fn(outputs, batch, cross_entropy=cross_entropy).loss

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
    print(
        f"{'side':<12} {'step (median)':>14} {'real tokens/s':>14} {'CPU time/step':>14} "
        f"{'model TFLOP/s':>14} {'MFU':>6} {'exec. MFU':>9} {'vs reference':>13}"
    )
    for name in result["sides"]:
        r = result[name]
        mfu = "-" if r["mfu"] is None else f"{r['mfu']:.1%}"
        executed = "-" if r["mfu_executed"] is None else f"{r['mfu_executed']:.1%}"
        ratio = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        print(
            f"{name:<12} {r['median_step_s'] * 1000:>11.1f} ms {r['tokens_per_s']:>14.0f} "
            f"{r['median_cpu_s'] * 1000:>11.1f} ms {r['model_flops_per_s'] / 1e12:>14.3f} {mfu:>6} "
            f"{executed:>9} {ratio:>13}"
        )
    if "speedup" in result:
        print(f"speedup (ours / reference): {result['speedup']:.2f}x")
        # CPU seconds of this process: less sensitive to other jobs on a shared machine than wall time.
        print(f"CPU-time ratio (reference / ours): {result['cpu_time_ratio']:.2f}x")
    if "compiled" in result:
        print(f"compile + warm-up of 'compiled': {result['compiled']['warmup_s']:.1f} s")
