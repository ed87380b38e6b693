"""Sentence-pair fine-tuning, by concern: data.py (tokenised splits, batches), loop.py (`bert finetune`,
one run per seed), report.py (metrics, predictions, the summary), evaluate.py (`bert evaluate`).

    from bert.finetune import finetune, evaluate_saved
"""

from bert.finetune.evaluate import evaluate_saved
from bert.finetune.loop import finetune

__all__ = ["evaluate_saved", "finetune"]
