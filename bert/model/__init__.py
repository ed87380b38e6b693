"""The BERT encoder and its heads (filled by the model modules)."""

from bert.model.config import BertConfig

__all__ = ["BertConfig"]
