"""`bert pretrain`, in three parts: loop.py (`pretrain` and the loop, top to bottom), step.py (one optimizer
step, the evaluation), run.py (set-up, state, saving, logging, teardown).

    from bert.pretrain import pretrain
"""

from bert.pretrain.loop import pretrain

__all__ = ["pretrain"]
