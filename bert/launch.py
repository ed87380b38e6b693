"""`python -m bert.launch`: torchrun for jobs that a scheduler stops with SIGTERM (preemption, scancel).

Plain torchrun forwards SIGTERM to its workers, raises, and exits 1 (the scheduler then marks a preempted job
FAILED), and kills the workers 30 s later, which can cut a large checkpoint short. Here the launcher ignores
SIGTERM and leaves it to the workers: a scheduler signals every process of the job, each worker finishes
its step, they save one checkpoint together and exit 0, and so does the launcher. Every torchrun flag works
as usual: `python -m bert.launch --nproc_per_node 8 -m bert.cli pretrain CONFIG.yaml`.
"""

from __future__ import annotations

import os
import signal
import sys

AGENT_SIGNALS = "SIGINT,SIGHUP,SIGQUIT"
"""What the launcher itself still acts on: torchrun's default list without SIGTERM."""


def main() -> None:
    import torch.distributed.run as torchrun

    # torchrun's agent installs handlers for the signals it is told (`--signals-to-handle`; older releases
    # read the environment variable only), and its default includes SIGTERM
    os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = AGENT_SIGNALS
    flags = ("--signals-to-handle", "--signals_to_handle")
    supported = any(flag in torchrun.get_args_parser()._option_string_actions for flag in flags)
    if supported and not any(arg.split("=")[0] in flags for arg in sys.argv[1:]):
        sys.argv[1:1] = ["--signals-to-handle", AGENT_SIGNALS]
    # Ignored here; the workers inherit "ignored" through exec, and bert.training.StopSignal installs its own
    # handler over it, so only they act on the signal.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torchrun.main()


if __name__ == "__main__":
    main()
