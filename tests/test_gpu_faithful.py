"""What a GPU would show, shown on the CPU: the default CUDA training step (padded SDPA, static shapes, no CPU
fast paths, fused AdamW or LAMB that skip on the device) never reads a value back to the host between two
agreement points, never mixes a CPU tensor into device work, compiles once, and preparing data under several
processes does not sit in a collective. Each test has a negative control that fails the same check on code
with the bug (tests/host_reads.py explains the tools)."""

from __future__ import annotations

import datetime
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.optim.optimizer as torch_optimizer

import bert.pretrain.run as run_module
from bert.bench import hf_mlm_labels
from bert.budget import Budget
from bert.data.collator import PretrainingCollator
from bert.data.masking import MaskingSpec
from bert.hooks import TrainHooks
from bert.model import BertForPreTraining
from bert.optim import Schedule, build_optimizer
from bert.pretrain.step import Pace, TrainingParts, Window, forward_functions, skips_on_device, train_step
from bert.training import StopSignal
from tests.host_reads import HostReads, OneDevice
from tests.pretrain_utils import pretrain_here, tiny_pretrain_config

pytestmark = pytest.mark.gpu_faithful

CUDA_CHOICES = (
    "train.fast_paths=off",  # what `auto` picks on CUDA
    "model.attn_implementation=sdpa",
    "train.static_shapes=on",
    "train.mixed_precision=no",
    "train.eval_every=0",
    "train.save_every=0",
)


def _collator(vocab: int = 99, max_len: int = 32, static: bool = True) -> PretrainingCollator:
    vocab_map = {f"w{i}": i for i in range(vocab)}
    spec = MaskingSpec.from_vocab(vocab_map, [0, 1, 2, 3], mask_id=3, whole_word=False)
    return PretrainingCollator(
        spec, pad_id=0, max_predictions_per_seq=5, seed=1, static_shapes=static, max_seq_length=max_len
    )


def _examples(lengths: list[int], seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = [1] + torch.randint(5, 99, (n - 2,), generator=g).tolist() + [2]
        out.append({"input_ids": ids, "token_type_ids": [0] * n, "next_sentence_label": i % 2, "id": i})
    return out


# ------------------------------------------------------------------------------------ the meta device


def _meta_parts(tmp_path, monkeypatch, optimizer: str, num_processes: int) -> TrainingParts:
    # torch's fused AdamW has meta kernels but checks devices in Python: let it run on meta as on CUDA
    supported = torch_optimizer._get_fused_kernels_supported_devices
    monkeypatch.setattr(
        torch_optimizer, "_get_fused_kernels_supported_devices", lambda: [*supported(), "meta"]
    )
    cfg = tiny_pretrain_config(tmp_path, tmp_path / "run", *CUDA_CHOICES, f"optimizer.name={optimizer}")
    cfg.model.vocab_size = 99
    with torch.device("meta"):
        model = BertForPreTraining(cfg.model).train()
    opt = build_optimizer(model, cfg.optimizer)
    accelerator = OneDevice("meta", num_processes)
    parts = TrainingParts(
        cfg, accelerator, model, opt, Schedule(cfg.optimizer, 6), None, StopSignal(), Budget(max_steps=6)
    )
    parts.forward_loss, parts.forward_stats = forward_functions(model, None, cfg.train)
    parts.pace = Pace(exact=num_processes == 1)
    parts.skip_on_device = skips_on_device(accelerator, opt)
    return parts


@pytest.mark.parametrize("optimizer", ["adamw", "lamb"])
@pytest.mark.parametrize("num_processes", [1, 2])
def test_the_default_cuda_step_runs_on_the_meta_device(tmp_path, monkeypatch, optimizer, num_processes):
    """On meta every host read and every CPU tensor in device work raises: the step has none."""
    parts = _meta_parts(tmp_path, monkeypatch, optimizer, num_processes)
    assert parts.skip_on_device
    collator = _collator()
    clock = iter(range(100))
    window = Window(parts)
    for step in range(3):
        batches = [collator(_examples([32, 17, 9, 25], seed=step)), collator(_examples([5, 30], seed=9))]
        result = train_step(parts, step, batches, TrainHooks(), lambda: float(next(clock)))
        window.add(result)
        assert result.shares.device.type == "meta" and result.skipped.device.type == "meta"
    # the agreement point is where the one read happens: on meta it raises, which shows reads are caught
    with pytest.raises((RuntimeError, NotImplementedError)):
        window.agree(lambda: 0.0, stop=False)


def test_negative_control_the_host_skip_fails_on_the_meta_device(tmp_path, monkeypatch):
    """The same step with the skip read on the host (what it did before, and still does for fp16)."""
    parts = _meta_parts(tmp_path, monkeypatch, "adamw", 1)
    parts.skip_on_device = False
    batch = _collator()(_examples([32, 17, 9, 25]))
    with pytest.raises(RuntimeError, match="meta"):
        train_step(parts, 0, [batch], TrainHooks(), lambda: 0.0)


def test_transformers_labels_for_the_bench_are_built_on_the_batch_device():
    """`bert bench` builds transformers' (B, T) labels on the batch's device, without boolean indexing
    (the earlier version made its row index on the CPU: every CUDA bench crashed in its first step)."""
    batch = _collator()(_examples([32, 17, 9, 25]))
    expected = hf_mlm_labels(batch.input_ids, batch.masked_lm_positions, batch.masked_lm_labels)
    assert (expected != -100).sum() == (batch.masked_lm_labels != -100).sum()
    meta = batch.to("meta")
    labels = hf_mlm_labels(meta.input_ids, meta.masked_lm_positions, meta.masked_lm_labels)
    assert labels.device.type == "meta" and labels.shape == batch.input_ids.shape


def test_negative_control_boolean_indexing_and_cpu_tensors_raise_on_meta():
    mask = torch.ones(4, 5, dtype=torch.bool, device="meta")
    values = torch.zeros(4, 5, device="meta")
    with pytest.raises(NotImplementedError):
        values[mask]
    with pytest.raises(RuntimeError):
        torch.arange(4).unsqueeze(1).expand(4, 5)[mask]  # a CPU index with a meta mask


# ------------------------------------------------------------------------------------- the host-read spy


class _Where(TrainHooks):
    """Labels the spy's counts with the optimizer step being fetched and run."""

    def __init__(self, spy: HostReads) -> None:
        self.spy = spy

    def on_batches(self, step: int, batches, rank: int) -> None:
        self.spy.where = step

    def during_eval(self, step: int, batch_index: int) -> None:
        self.spy.where = "eval"  # the final evaluation reads its sums once, after its last batch


def _reads_per_step(tiny_data, run_dir, *extra: str) -> tuple[dict, dict]:
    spy = HostReads()
    with spy:
        pretrain_here(
            tiny_data,
            run_dir,
            *CUDA_CHOICES,
            "train.max_steps=8",
            "train.log_every=4",
            *extra,
            clock=_Where(spy),
        )
    return {step: spy.counts[step] for step in range(1, 9)}, spy.names


@pytest.mark.e2e
def test_no_host_read_between_logging_points(tiny_data, tmp_path):
    counts, names = _reads_per_step(tiny_data, tmp_path / "run")
    between = {step: n for step, n in counts.items() if step % 4}
    assert between == dict.fromkeys(between, 0), {s: names.get(s) for s in between}
    # at a logging point: the window's read (one .tolist()) and nothing per micro-batch or per layer;
    # after the last step the final evaluation starts its loader (DataLoader draws a seed with .item())
    assert names[4] == ["tolist"] and names[8][0] == "tolist" and counts[8] <= 2, names


@pytest.mark.e2e
def test_no_host_read_between_logging_points_with_lamb_and_accumulation(tiny_data, tmp_path):
    counts, names = _reads_per_step(
        tiny_data, tmp_path / "run", "optimizer.name=lamb", "train.gradient_accumulation_steps=2"
    )
    assert all(counts[step] == 0 for step in (1, 2, 3, 5, 6, 7)), names


@pytest.mark.e2e
def test_negative_control_a_host_skip_reads_every_step(tiny_data, tmp_path, monkeypatch):
    """An optimizer without a device skip (or fp16) reads the flag each step: the spy sees it."""
    monkeypatch.setattr(run_module, "skips_on_device", lambda accelerator, optimizer: False)
    counts, _ = _reads_per_step(tiny_data, tmp_path / "run")
    assert all(counts[step] >= 1 for step in (1, 2, 3, 5, 6, 7)), counts


# -------------------------------------------------------------------------------------- compiled graphs


def _compiled_graphs(static: bool, attention: str = "sdpa") -> tuple[list[int], int]:
    """(graphs after each batch, recompiles) of the compiled forward + loss + backward over four batches of
    varying lengths (dynamo's counters, `eager` backend: tracing only)."""
    from torch._dynamo.utils import counters

    cfg = tiny_pretrain_config(
        "unused", "unused", "train.compile=true", "train.compile_backend=eager",
        f"model.attn_implementation={attention}",
    )  # fmt: skip
    cfg.model.vocab_size = 99
    torch.manual_seed(0)
    model = BertForPreTraining(cfg.model).train()
    forward_loss, _ = forward_functions(model, None, cfg.train)
    collator = _collator(static=static)
    torch._dynamo.reset()
    counters.clear()
    graphs = []
    for seed, lengths in enumerate([[32, 17, 9, 25], [12, 7, 30, 5], [8, 8, 6, 21], [31, 3, 14, 9]]):
        batch = collator(_examples(lengths, seed=seed))
        norms = torch.tensor([float(batch.num_masked()), 4.0])
        forward_loss(batch, norms[0], norms[1]).loss.backward()
        graphs.append(counters["stats"]["unique_graphs"])
    return graphs, sum(counters["recompiles"].values())


def test_a_compiled_step_over_varying_batches_compiles_once():
    graphs, recompiles = _compiled_graphs(static=True)
    assert graphs[-1] == 1 and recompiles == 0


def test_negative_control_varying_shapes_compile_again():
    graphs, recompiles = _compiled_graphs(static=False)
    assert graphs[-1] > 1 or recompiles > 0


def test_static_shapes_keep_the_masks_of_the_dynamic_batch():
    """Padding to fixed shapes changes no token, mask or label: only more padding and unused slots."""
    examples = _examples([32, 17, 9, 25])
    dynamic, static = _collator(static=False)(examples), _collator(static=True)(examples)
    t, p = dynamic.input_ids.shape[1], dynamic.masked_lm_positions.shape[1]
    assert static.input_ids.shape == (4, 32) and static.masked_lm_positions.shape == (4, 5)
    assert torch.equal(static.input_ids[:, :t], dynamic.input_ids)
    assert torch.equal(static.masked_lm_labels[:, :p], dynamic.masked_lm_labels)
    assert (static.masked_lm_labels[:, p:] == -100).all() and (static.attention_mask[:, t:] == 0).all()
    assert static.host_counts == dynamic.host_counts


# ---------------------------------------------------------------------- preparing under several processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slow_main(rank: int, port: int, use_barrier: bool, results) -> None:  # runs in a spawned process
    from bert.training import main_process_first

    class Accel:
        num_processes, is_main_process = 2, rank == 0

    os.environ.pop("RANK", None)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=2),
    )
    try:
        if use_barrier:  # what Accelerate's main_process_first does: the waiting rank sits in a collective
            if rank == 0:
                time.sleep(5)
            dist.barrier()
        else:
            with main_process_first(Accel(), "test/prepare"):
                if rank == 0:
                    time.sleep(5)  # a preparation longer than the process group's timeout
        results.put((rank, "ok"))
    except Exception as err:  # noqa: BLE001 - reported to the test
        results.put((rank, type(err).__name__))
    finally:
        dist.destroy_process_group()


def _run_two(use_barrier: bool) -> dict:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_slow_main, args=(r, port, use_barrier, results)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    return dict(results.get(timeout=5) for _ in range(2))


@pytest.mark.e2e
def test_waiting_for_the_main_process_outlives_the_process_group_timeout():
    assert _run_two(use_barrier=False) == {0: "ok", 1: "ok"}


@pytest.mark.e2e
def test_negative_control_a_barrier_times_out_while_the_main_process_prepares():
    assert _run_two(use_barrier=True)[1] != "ok"


# ------------------------------------------------------------------------------------- the unpadded path


def test_the_unpadded_layout_from_host_lengths_equals_the_one_read_from_the_mask():
    from bert.model.masks import unpadded_layout

    mask = torch.zeros(4, 8, dtype=torch.long)
    lengths = [7, 3, 0, 5]  # a fully padded row attends everywhere (rule 3): it counts as 8 tokens
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    read = unpadded_layout(mask, 4, 8, torch.device("cpu"))
    host = unpadded_layout(mask, 4, 8, torch.device("cpu"), lengths=lengths)
    for name in ("indices", "cu_seqlens", "flat_to_row", "key_mask"):
        assert torch.equal(getattr(read, name), getattr(host, name)), name
    # from host lengths the bound is T (the same number every batch, what a compiled layer wants); the
    # fully padded row counts as T tokens in both
    assert read.max_seqlen == 8 and host.max_seqlen == 8 and int(host.cu_seqlens[-1]) == 7 + 3 + 8 + 5


def test_the_unpadded_cuda_path_runs_torch_flash_on_the_meta_device(tmp_path, monkeypatch):
    """bf16 on 'CUDA' (meta stands in): the unpadded path takes torch's own varlen flash kernel, with the
    collator's host lengths, and the whole step (dropout, backward, optimizer) reads nothing back."""
    from bert.model.attention import varlen_backend

    parts = _meta_parts(tmp_path, monkeypatch, "adamw", 1)
    parts.model.config.attn_implementation = "unpadded"
    for module in parts.model.modules():
        if hasattr(module, "implementation"):
            module.implementation = "unpadded"
    parts.model.to(torch.bfloat16)
    calls = []
    flash = torch.ops.aten._flash_attention_forward
    monkeypatch.setattr(
        torch.ops.aten, "_flash_attention_forward", lambda *a, **k: calls.append(a[7]) or flash(*a, **k)
    )
    assert varlen_backend(torch.empty(3, 2, 16, device="meta", dtype=torch.bfloat16)) == "torch_flash"
    assert varlen_backend(torch.empty(3, 2, 16)) == "padded_sdpa"  # CPU fp32: the re-padding fallback
    batch = _collator()(_examples([32, 17, 9, 25]))
    train_step(parts, 0, [batch], TrainHooks(), lambda: 0.0)
    layers = parts.model.config.num_hidden_layers
    assert calls == [parts.model.config.attention_probs_dropout_prob] * layers  # dropout in the kernel


def test_compiled_unpadded_layers_compile_once_for_every_token_count():
    """The unpadded path compiles each encoder layer with the token count dynamic: new batches (new N, new
    lengths) add no graph after the first."""
    graphs, _ = _compiled_graphs(static=True, attention="unpadded")
    assert graphs[0] >= 1 and graphs[-1] == graphs[0], graphs
