"""bert: BERT pretraining with MLM and NSP, sentence-pair fine-tuning, and run tracking.

The model classes are imported lazily so that `import bert` (and `bert --help`) stays fast:

    from bert import BertConfig, BertModel, BertForPreTraining, BertForSequenceClassification
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "BertConfig": "bert.model.config",
    "BertModel": "bert.model",
    "BertForPreTraining": "bert.model",
    "BertForSequenceClassification": "bert.model",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bert' has no attribute {name!r}")
