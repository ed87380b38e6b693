"""Sentence-pair fine-tuning, by concern: data.py (tokenised splits, batches), run.py (the set-up: accelerator,
model, one seed's parts, the settings' fingerprint), loop.py (`bert finetune`: the seeds, the epochs, the
steps), report.py (metrics, predictions, the summary), evaluate.py (`bert evaluate`).

    from bert.finetune import finetune, evaluate_saved
"""

from bert.finetune.evaluate import evaluate_saved
from bert.finetune.loop import finetune

__all__ = ["evaluate_saved", "finetune"]
