"""What the pretraining and fine-tuning loops share: the Accelerator, the model's speed set-up, the stop
signal, sums over processes, and printing on the main process only.

- `make_accelerator`: Accelerate on the CPU, one GPU, or DDP over many; sharded strategies (FSDP, DeepSpeed)
  are refused with one line, since checkpoints are written by this project (bert/checkpoint.py) for
  replicated models. A launch that asked for more processes than started (`accelerate launch --cpu
  --num_processes 2` runs one) is one warning.
- `resolve_precision`: what `mixed_precision=auto` means here (the launcher's value, else bf16 on a GPU
  that has it or a CPU with bf16 units, AMX or AVX-512 BF16, else fp32), said in one line by the loops.
- `prepare_model`: the fast paths of bert.model.fast for the device and config; `use_static_shapes`.
- `main_process_first`: the main process does a long job (preparing the data) while the others wait on the
  launcher's key-value store, not in a collective that the process group's timeout would kill.
- `StopSignal`: SIGTERM/SIGINT set a flag that the loops all-reduce, so every process stops at the same step.
- `release_freed_memory`: hand the C heap's freed pages back to the OS (glibc's `malloc_trim`);
  `peak_rss_gb`: this process's peak resident memory, as the dashboards show it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from bert.errors import UserError


def print0(accelerator: Any, message: str) -> None:
    """Print on the main process only."""
    if accelerator.is_main_process:
        print(message, flush=True)


CPU_BF16_MIN_WIDTH = 256
"""The narrowest model (hidden size) for which `auto` picks bf16 on a CPU with bf16 units. Below it the
casts autocast adds cost more than the smaller matmuls save: the demo's H128 model trains slower in bf16,
BERT-mini (H256) faster (BENCHMARKS.md, 2026-12-06, has the figures)."""


def resolve_precision(
    configured: str, cuda: bool | None = None, cpu_bf16: bool | None = None, width: int | None = None
) -> tuple[str, str]:
    """(precision, why) for `train.mixed_precision`: an explicit value wins; 'auto' takes the launcher's
    (`accelerate launch` exports its config's as ACCELERATE_MIXED_PRECISION), else bf16 on a GPU that
    supports it, or on a CPU with bf16 units (`cpu_bf16_units`) for a model of hidden size `width` of at
    least CPU_BF16_MIN_WIDTH; else 'no' (fp32)."""
    if configured != "auto":
        return configured, "train.mixed_precision"
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "").strip().lower()
    if launcher in ("no", "fp16", "bf16"):
        return launcher, "the launcher's setting"
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: this GPU has bf16"
        return "no", "auto: this GPU has no bf16"
    units = cpu_bf16_units() if cpu_bf16 is None else ("bf16 units" if cpu_bf16 else None)
    if not units:
        return "no", "auto: this CPU has no bf16 units"
    if width is not None and width < CPU_BF16_MIN_WIDTH:
        return "no", f"auto: bf16 is slower than fp32 on the CPU below hidden size {CPU_BF16_MIN_WIDTH}"
    return "bf16", f"auto: this CPU has {units}"


def cpu_bf16_units() -> str | None:
    """The CPU's native bf16 matmul units ('AMX' or 'AVX-512 BF16'), or None. Without them bf16 is
    emulated and slower than fp32; with them a wide enough BERT step runs faster (BENCHMARKS.md)."""
    probes = (("AMX", "_is_amx_tile_supported"), ("AVX-512 BF16", "_is_avx512_bf16_supported"))
    for name, probe in probes:
        check = getattr(torch.cpu, probe, None)  # private in torch 2.x; a missing probe counts as no
        try:
            if check is not None and check():
                return name
        except RuntimeError:
            continue
    return None


def _forget_other_precision(precision: str) -> None:
    """Accelerate keeps one process-wide state and refuses another precision in the same process. One
    process may run several jobs whose `auto` precisions differ (`bert glue` on models of different widths,
    the Python API): outside a launched multi-process job, the earlier job's state is dropped first."""
    from accelerate.state import AcceleratorState, GradientState

    saved = AcceleratorState._shared_state.get("_mixed_precision")
    launched = torch.distributed.is_available() and torch.distributed.is_initialized()
    if saved is not None and saved != precision and not launched:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def precision_line(precision: str, why: str, device: torch.device) -> str:
    """The one line a run prints about its arithmetic."""
    names = {"no": "fp32", "bf16": "bf16 autocast (fp32 weights)", "fp16": "fp16 autocast with loss scaling"}
    text = f"precision: {names.get(precision, precision)} ({why})"
    if device.type == "cuda" and precision == "no":
        text += "; TF32 matmuls"
    return text


def make_accelerator(
    mixed_precision: str,
    project_dir: str | Path,
    log_with: list[str] | None = None,
    gradient_accumulation_steps: int = 1,
    split_batches: bool = False,
    model_width: int | None = None,
) -> Any:
    """An Accelerator for this project's loops (module docstring); `mixed_precision` may be 'auto'
    (`resolve_precision`, for a model of hidden size `model_width`), and the resolved value is
    `accelerator.mixed_precision`."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedType

    precision, why = resolve_precision(mixed_precision, width=model_width)
    _forget_other_precision(precision)
    if torch.cuda.is_available():
        # fp32 matmuls (fp32 runs, and the fp32 islands of autocast) on the tensor cores: TF32 keeps fp32's
        # range with a 10-bit mantissa, what NVIDIA's and MosaicBERT's BERT recipes train with.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        log_with=log_with or None,
        project_dir=str(project_dir),
        dataloader_config=DataLoaderConfiguration(split_batches=split_batches),
        # without a GPU, Accelerate only detects torchrun's processes (gloo) when told it runs on the CPU
        cpu=not torch.cuda.is_available(),
    )
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise UserError(
            f"distributed type {accelerator.distributed_type.value} is not supported: checkpoints are written "
            "for replicated (DDP) models; BERT-large trains in DDP on one 16 GB GPU per process"
        )
    warning = launch_mismatch(accelerator.num_processes)
    if warning and accelerator.is_main_process:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    accelerator.precision_line = precision_line(precision, why, accelerator.device)
    return accelerator


def launch_mismatch(num_processes: int, parent_cmdline: list[str] | None = None) -> str | None:
    """A warning when the launcher asked for another number of processes than started, where visible:
    WORLD_SIZE, or `--num_processes N` on the command line of `accelerate launch` (our parent)."""
    world = os.environ.get("WORLD_SIZE")
    if world and world.isdigit() and int(world) != num_processes:
        return f"WORLD_SIZE={world} but {num_processes} process(es) joined"
    if parent_cmdline is None:
        try:
            raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
            parent_cmdline = raw.decode(errors="replace").split("\0")
        except OSError:
            return None
    if not any(part.endswith("accelerate") or "accelerate" in part.split("/")[-1] for part in parent_cmdline):
        return None
    for flag in ("--num_processes", "--num-processes"):
        if flag in parent_cmdline:
            index = parent_cmdline.index(flag) + 1
            asked = parent_cmdline[index] if index < len(parent_cmdline) else ""
            if asked.isdigit() and int(asked) != num_processes:
                hint = ""
                if "--cpu" in parent_cmdline:
                    hint = (
                        f"; `accelerate launch --cpu` starts one process: for {asked} CPU processes run "
                        f"`torchrun --nproc_per_node {asked} -m bert.cli ...`"
                    )
                return f"the launcher asked for {asked} processes, {num_processes} started{hint}"
    return None


def prepare_model(
    model: torch.nn.Module, device: torch.device, train_cfg: Any, compile_in_place: bool = True
) -> tuple[Any, Any]:
    """Swap in the fast paths that `bert.model.fast.select` picks, or compile; returns (model, paths).

    `compile_in_place=False`: the caller compiles a larger region itself (pretraining compiles its forward
    and loss together, bert.pretrain.step.forward_functions)."""
    from bert.model import fast

    paths = fast.select(device, train_cfg.fast_paths, compile=train_cfg.compile)
    fast.enable(model, paths)
    if train_cfg.compile and compile_in_place:
        model.compile(backend=train_cfg.compile_backend)  # in place: state dict keys unchanged
    return model, paths


def use_static_shapes(device: torch.device, train_cfg: Any) -> bool:
    """`train.static_shapes`: auto pads to fixed shapes on CUDA and under compile (one graph, CUDA graphs
    possible); on the CPU without compile the padding would only cost."""
    mode = getattr(train_cfg, "static_shapes", "auto")
    if mode != "auto":
        return mode == "on"
    return device.type == "cuda" or bool(train_cfg.compile)


_LIBC = None  # the C library, loaded on first use; False where it has no malloc_trim


def release_freed_memory() -> None:
    """Return the pages of freed C-heap memory to the OS (glibc only; elsewhere nothing happens).

    Why: a CPU training step frees its activations, and glibc keeps the freed memory in its heap. With
    batches of changing shapes the heap fragments and grows over an epoch: measured on MiniLM fine-tuning of
    RTE-shaped pairs (128 tokens), the process peaked at 3.2 GB while its live tensors were under 1 GB a
    step. Trimming costs page faults at the next allocations (BENCHMARKS.md has the trade-off)."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def _proc_status_gb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in GiB; None where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return None


def rss_gb() -> float:
    """The resident memory of this process now, in GiB (VmRSS; 0 where /proc is missing)."""
    return _proc_status_gb("VmRSS") or 0.0


def peak_rss_gb() -> float:
    """The peak resident memory of this process in GiB: the kernel's high-water mark (VmHWM) on Linux.

    Why not `getrusage(RUSAGE_SELF).ru_maxrss`: on Linux it survives fork and exec, so a run started by a large
    process (a benchmark script holding models, a notebook) reports the parent's peak as its own. Elsewhere
    ru_maxrss is the fallback (kilobytes on Linux, bytes on macOS)."""
    peak = _proc_status_gb("VmHWM")
    if peak is not None:
        return peak
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


def all_reduce_sum(accelerator: Any, values: list[float]) -> list[float]:
    """Sum a few numbers over processes in one collective (float64 on the accelerator's device)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        tensor = accelerator.reduce(tensor, reduction="sum")
    return tensor.tolist()


_WAIT_FOREVER = datetime.timedelta(days=30)
_FIRST_CALLS = 0


@contextlib.contextmanager
def main_process_first(accelerator: Any, key: str) -> Iterator[None]:
    """Run the block on the main process first, then on the others (which may then reuse its result).

    Why not Accelerate's `main_process_first`: its waiting processes sit in a barrier, a collective, and
    NCCL's default timeout (10 minutes) kills the job while the main process prepares a real corpus. Here
    they block on the launcher's TCP key-value store (torch.distributed's default store) until the main
    process sets `key`, with no collective pending. If the main process fails, the others stop with one
    line instead of waiting for a signal that never comes."""
    import torch.distributed as dist

    if accelerator.num_processes == 1 or not dist.is_initialized():
        yield
        return
    global _FIRST_CALLS
    _FIRST_CALLS += 1  # every process makes the same calls in the same order: a fresh key for each
    key = f"{key}#{_FIRST_CALLS}"
    store = dist.distributed_c10d._get_default_store()
    if accelerator.is_main_process:
        try:
            yield
        except BaseException:
            store.set(key, "failed")
            raise
        store.set(key, "done")
        return
    store.wait([key], _WAIT_FOREVER)
    if store.get(key) != b"done":
        raise UserError(f"the main process failed at '{key}' (its own error is above); stopping")
    yield


def check_shared_folder(accelerator: Any, folder: Path) -> None:
    """Every process must see what the main process writes in `folder` (the run folder: checkpoints are
    written by the main process and read by all): a one-line error on every process before any training,
    instead of a missing file at the first checkpoint."""
    if accelerator.num_processes == 1:
        return
    import socket

    from bert import fs

    probe = Path(folder) / f".shared-{broadcast_token(accelerator, fs.unique_token())}"
    if accelerator.is_main_process:
        Path(folder).mkdir(parents=True, exist_ok=True)
        probe.write_text(socket.gethostname())
    accelerator.wait_for_everyone()
    blind = all_reduce_sum(accelerator, [0.0 if probe.exists() else 1.0])[0]
    if accelerator.is_main_process:
        probe.unlink()
    if blind:
        raise UserError(
            f"train.output_dir {folder} is not shared: {int(blind)} of {accelerator.num_processes} processes do "
            "not see the main process's files there; on several nodes put it on a filesystem every node mounts"
        )


def broadcast_token(accelerator: Any, token: str) -> str:
    """The main process's `token`, on every process."""
    if accelerator.num_processes == 1:
        return token
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([token])[0]


STOP_FILE_ENV = "BERT_STOP_FILE"
"""A path; when a file appears there, the run saves and exits 0 as on SIGTERM. scripts/slurm_pretrain.sh
uses it to stop the workers on every node before a time limit without signalling the launcher."""


class StopSignal:
    """SIGTERM/SIGINT, or the file named by $BERT_STOP_FILE appearing, set `requested` (the handler does
    nothing else); a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self._flag = False
        self.stop_file = os.environ.get(STOP_FILE_ENV) or None
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a notebook worker): no handler
                pass

    @property
    def requested(self) -> bool:
        if not self._flag and self.stop_file is not None and os.path.exists(self.stop_file):
            self._flag = True
        return self._flag

    def _handle(self, signum: int, frame: Any) -> None:
        if self._flag and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._flag = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
