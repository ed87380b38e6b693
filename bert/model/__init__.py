"""The BERT encoder and its heads.

Torch is imported lazily (module `__getattr__`), so that `import bert.config` (which imports
`bert.model.config`) stays light:

    from bert.model import BertConfig, BertModel, BertForPreTraining, BertForSequenceClassification
"""

from __future__ import annotations

from typing import Any

from bert.model.config import BertConfig

_LAZY = {
    "BertModel": "bert.model.modeling",
    "BertForPreTraining": "bert.model.modeling",
    "BertForSequenceClassification": "bert.model.modeling",
    "BertPreTrainedModel": "bert.model.modeling",
    "BaseModelOutput": "bert.model.outputs",
    "BertForPreTrainingOutput": "bert.model.outputs",
    "SequenceClassifierOutput": "bert.model.outputs",
    "training_flops_per_token": "bert.model.flops",
    "mfu": "bert.model.flops",
}

__all__ = ["BertConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bert.model' has no attribute {name!r}")
