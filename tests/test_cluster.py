"""Cluster paths on one machine: two "nodes" under torchrun (c10d on 127.0.0.1), the output folder they must
share, and the SLURM launcher run with stand-ins for srun, scontrol and the launcher."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pretrain_utils import REPO, tiny_overrides

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(cache: Path, outputs: tuple[Path, Path], *extra: str) -> list[subprocess.CompletedProcess]:
    """`torchrun --nnodes 2` twice on this machine, one process per "node", each with its own output folder."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    procs = []
    for node, output in enumerate(outputs):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
            "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
            "--rdzv_id", "two-nodes", str(REPO / "tests" / "pretrain_runner.py"), "--",
            *tiny_overrides(cache, output, *extra),
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def test_two_nodes_on_one_machine_train_to_the_end(tiny_data, tmp_path):
    run = tmp_path / "run"
    results = _two_nodes(tiny_data, (run, run), "train.max_steps=3")
    for done in results:
        assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es) on 2 node(s)" in results[0].stdout
    assert (run / "export" / "model.safetensors").exists()


def test_two_nodes_without_a_shared_output_folder_fail_in_one_line_before_training(tiny_data, tmp_path):
    results = _two_nodes(tiny_data, (tmp_path / "node0", tmp_path / "node1"), "train.max_steps=3")
    assert all(done.returncode != 0 for done in results)
    errors = [line for done in results for line in done.stderr.splitlines() if "is not shared" in line]
    assert errors and all(line.startswith("bert pretrain: error: train.output_dir") for line in errors)
    assert not (tmp_path / "node0" / "checkpoints").exists()  # nothing was trained


def _preempt(cache: Path, run: Path, module: str) -> subprocess.CompletedProcess:
    """Start 2 workers under `module` (a torchrun), then SIGTERM every process of the job, as a scheduler
    preempting it does; returns what the launcher exited with."""
    import signal
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    cmd = [
        sys.executable, "-m", module, "--nproc_per_node", "2", "--rdzv_backend", "c10d",
        "--rdzv_endpoint", f"127.0.0.1:{_free_port()}", str(REPO / "tests" / "pretrain_runner.py"), "--",
        *tiny_overrides(cache, run, "train.max_steps=100000", "train.save_every=0", "train.eval_every=0"),
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    for pid in _process_tree(proc.pid):  # the launcher and both workers, as SLURM signals a job step
        os.kill(pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc; torchrun starts its workers in sessions of their own, so a
    process-group signal would miss them)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            children = (task / "children").read_text().split() if (task / "children").exists() else []
            todo.extend(int(c) for c in children)
    return tree


def test_a_preempted_job_saves_and_the_launcher_exits_zero(tiny_data, tmp_path):
    from bert import checkpoint as ckpt

    run = tmp_path / "run"
    done = _preempt(tiny_data, run, "bert.launch")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stop signal: saved step" in done.stdout and ckpt.latest_checkpoint(run) is not None


def test_negative_control_plain_torchrun_reports_a_preempted_job_as_failed(tiny_data, tmp_path):
    done = _preempt(tiny_data, tmp_path / "run", "torch.distributed.run")
    assert done.returncode != 0


# ------------------------------------------------------------------------------------- the SLURM launcher

SRUN = """#!/usr/bin/env bash
# stand-in: record the arguments, then 'train' until asked to stop (or 20 s)
printf '%s\\n' "$@" > "$RECORD/srun.args"
echo "$BERT_STOP_FILE" > "$RECORD/stop_file"
for _ in $(seq "${LOOPS:-200}"); do
    if [ -e "$BERT_STOP_FILE" ]; then echo stopped > "$RECORD/srun.result"; exit 0; fi
    sleep 0.1
done
echo finished > "$RECORD/srun.result"
"""
SCONTROL = """#!/usr/bin/env bash
# stand-in: node names, and requeue requests recorded
if [ "$1" = show ]; then printf '%s\\n' ${HOSTS:-node-a node-b}; else echo "$*" >> "$RECORD/scontrol"; fi
"""


def _slurm_job(tmp_path: Path, signal_after: float | None, loops: int = 200) -> tuple[int, Path]:
    import signal
    import time

    bin_dir, record, venv = tmp_path / "bin", tmp_path / "record", tmp_path / "venv"
    for folder in (bin_dir, record, venv / "bin"):
        folder.mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record), "BERT_VENV": str(venv),
        "SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "4242", "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "node-[a-b]", "LOOPS": str(loops),
    }  # fmt: skip
    script = REPO / "scripts" / "slurm_pretrain.sh"
    args = ["configs/pretrain/bert_base_phase1.yaml", "data.corpus=[/a, /b]", "logging.run_name=phase 1"]
    proc = subprocess.Popen(["bash", str(script), *args], env=env, stdout=subprocess.PIPE, text=True)
    if signal_after is not None:
        deadline = time.time() + 10
        while not (record / "srun.args").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(signal_after)
        proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@600 sends before the time limit
    proc.communicate(timeout=60)
    return proc.returncode, record


def test_the_slurm_script_passes_overrides_untouched_and_requeues_before_the_time_limit(tmp_path):
    code, record = _slurm_job(tmp_path, signal_after=0.5)
    assert code == 0
    args = (record / "srun.args").read_text().splitlines()
    assert args[-3:] == [
        "configs/pretrain/bert_base_phase1.yaml",
        "data.corpus=[/a, /b]",
        "logging.run_name=phase 1",
    ]
    assert args[args.index("--rdzv_endpoint") + 1] == "node-a:24242"  # the port from the job id
    assert args[args.index("--nnodes") + 1] == "2" and "bert.launch" in args
    assert (record / "srun.result").read_text().strip() == "stopped"  # the workers were asked to stop
    assert (record / "scontrol").read_text().split() == ["requeue", "4242"]
    assert not Path((record / "stop_file").read_text().strip()).exists()  # cleaned for the next allocation


def test_the_slurm_script_does_not_requeue_a_finished_run_and_logs_where_slurm_can_write(tmp_path):
    code, record = _slurm_job(tmp_path, signal_after=None, loops=5)
    assert code == 0 and (record / "srun.result").read_text().strip() == "finished"
    assert not (record / "scontrol").exists()
    lines = (REPO / "scripts" / "slurm_pretrain.sh").read_text().splitlines()
    output = next(line for line in lines if line.startswith("#SBATCH --output="))
    assert "/" not in output  # SLURM opens the log before the script runs: no folder it would have to make


def test_a_time_limit_signal_saves_a_checkpoint_requeues_and_exits_zero(tiny_data, tmp_path):
    """The whole path with one real node: the SLURM script, srun (a stand-in that runs its command), the
    launcher and a tiny run; USR1 as before the time limit -> a checkpoint, `scontrol requeue`, exit 0."""
    import signal
    import time

    from bert import checkpoint as ckpt

    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    (bin_dir / "srun").write_text('#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (bin_dir / "scontrol").write_text(SCONTROL)
    for name in ("srun", "scontrol"):
        (bin_dir / name).chmod(0o755)
    run = tmp_path / "run"
    env = {
        **os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record),
        "BERT_VENV": str(Path(sys.executable).parent.parent), "SLURM_SUBMIT_DIR": str(REPO),
        "SLURM_JOB_ID": str(_free_port()), "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "localhost",
        "GPUS_PER_NODE": "1", "OMP_NUM_THREADS": "1", "BERT_STOP_FILE": str(tmp_path / "stop"),
        "HOSTS": "127.0.0.1", "MASTER_PORT": str(_free_port()),
    }  # fmt: skip
    env.pop("RANK", None)
    overrides = tiny_overrides(
        tiny_data, run, "train.max_steps=100000", "train.save_every=0", "train.eval_every=0"
    )
    script = REPO / "scripts" / "slurm_pretrain.sh"
    config = tmp_path / "tiny.yaml"  # the defaults, as the other tiny runs (and their prepared data) use
    config.write_text("{}\n")
    proc = subprocess.Popen(
        ["bash", str(script), str(config), *overrides],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "stop signal: saved step" in out and ckpt.latest_checkpoint(run) is not None
    assert (record / "scontrol").read_text().split()[0] == "requeue"
