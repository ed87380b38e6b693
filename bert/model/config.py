"""`BertConfig`: the model's shape, with Hugging Face field names.

This dataclass is both the `model:` section of a run config (loaded from YAML, see `bert.config`) and the
`config.json` of a saved model, which `transformers.BertConfig` reads unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# Fields transformers writes in a BERT config.json that this project does not model (their values never
# change for an encoder); written so that config.json reads as transformers itself would write it.
_HF_EXTRA = {
    "model_type": "bert",
    "is_decoder": False,
    "add_cross_attention": False,
    "use_cache": True,
    "tie_word_embeddings": True,
    "bos_token_id": None,
    "eos_token_id": None,
    "dtype": "float32",
}
SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "pre_layer_norm",
)
"""The fields that decide what a model's weights are (their shapes, and for pre_layer_norm how they are
used): a resumed checkpoint and `train.init_from` weights must agree on them (positions may grow)."""
PRE_LN_MODEL_TYPE = "bertsmith-preln"
"""The `model_type` of a pre-LayerNorm model's config.json. transformers' BERT is post-LN and would load a
pre-LN checkpoint silently as post-LN (every weight fits); under this name AutoConfig and AutoModel refuse it
and the BERT classes warn of the type, while this project's loaders read it."""
MODEL_TYPES = ("bert", PRE_LN_MODEL_TYPE)
_OLDEST_TRANSFORMERS = "4.40.0"  # the oldest transformers the exports are written for (pyproject's hf extra)
# `transformers` treats an `attn_implementation` key in config.json as an order (and rejects 'unpadded'), so
# config.json stores our attention path under this name instead; `from_dict` reads both.
_ATTN_KEY = "bert_attn_implementation"


@dataclass
class BertConfig:
    """Shape and regularisation of a BERT encoder (Hugging Face names)."""

    vocab_size: int = 30522
    """Number of WordPiece tokens in the vocabulary; must match the tokenizer."""
    hidden_size: int = 768
    """Width H of every token's hidden state."""
    num_hidden_layers: int = 12
    """Number L of encoder layers."""
    num_attention_heads: int = 12
    """Number A of attention heads; hidden_size must be divisible by it."""
    intermediate_size: int = 3072
    """Width of the feed-forward layer, 4H in BERT."""
    hidden_act: str = "gelu"
    """Activation of the feed-forward layer and the MLM transform: gelu (exact erf) or gelu_new (tanh)."""
    hidden_dropout_prob: float = 0.1
    """Dropout on embeddings and on the output of every sub-layer."""
    attention_probs_dropout_prob: float = 0.1
    """Dropout on the attention probabilities."""
    max_position_embeddings: int = 512
    """Longest sequence the position embeddings cover."""
    type_vocab_size: int = 2
    """Number of segment ids (token_type_ids): 2 for sentence A and B."""
    initializer_range: float = 0.02
    """Standard deviation of the normal initialisation of weights."""
    layer_norm_eps: float = 1e-12
    """Epsilon of every LayerNorm."""
    pad_token_id: int = 0
    """Id of [PAD]."""
    position_embedding_type: str = "absolute"
    """Only 'absolute' (learned) positions are supported."""
    attn_implementation: Literal["eager", "sdpa", "unpadded"] = "sdpa"
    """Attention path: eager (explicit scores, can return probabilities), sdpa (PyTorch fused kernel),
    unpadded (pad tokens removed, variable-length attention on real tokens only)."""
    pre_layer_norm: bool = False
    """Pre-LayerNorm layers (LayerNorm before each sub-layer) instead of BERT's post-LayerNorm."""
    classifier_dropout: float | None = None
    """Dropout before the sequence-classification head; None uses hidden_dropout_prob."""
    num_labels: int = 2
    """Outputs of the sequence-classification head (1 means regression)."""
    problem_type: str | None = None
    """'regression' or 'single_label_classification' for the classification head; None infers it."""
    architectures: list[str] = field(default_factory=lambda: ["BertForPreTraining"])
    """Class names written to config.json for `transformers`."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_attention_heads", "intermediate_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be at least 1, got {getattr(self, name)!r}")
        for name in ("max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be at least 1, got {getattr(self, name)!r}")
        if self.num_hidden_layers < 0:
            raise ValueError(f"model.num_hidden_layers must be >= 0, got {self.num_hidden_layers!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"model.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"model.pad_token_id must be in [0, vocab_size), got {self.pad_token_id!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by "
                f"model.num_attention_heads ({self.num_attention_heads})"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BertConfig:
        """Build from a dict such as a Hugging Face config.json; keys we do not model are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if _ATTN_KEY in data:
            kwargs["attn_implementation"] = data[_ATTN_KEY]
        if kwargs.get("attn_implementation") not in (None, "eager", "sdpa", "unpadded"):
            kwargs.pop("attn_implementation")
        if "id2label" in data and "num_labels" not in data:
            kwargs["num_labels"] = len(data["id2label"])
        return cls(**kwargs)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json in the layout `transformers.BertConfig.from_pretrained` reads."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        data = {**_HF_EXTRA, **self.to_dict(), "transformers_version": transformers_version()}
        if self.pre_layer_norm:
            data["model_type"] = PRE_LN_MODEL_TYPE
        data[_ATTN_KEY] = data.pop("attn_implementation")
        data["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
        data["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        (path / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

    def to_transformers(self) -> Any:
        """The same shape as a `transformers.BertConfig` (needs transformers); refused for a pre-LN model,
        which transformers' BERT cannot express."""
        import transformers

        if self.pre_layer_norm:
            raise ValueError("transformers' BERT is post-LayerNorm: a pre-LN config has no equivalent")
        ours = {"attn_implementation", "pre_layer_norm", "architectures"}
        return transformers.BertConfig(**{k: v for k, v in self.to_dict().items() if k not in ours})

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> BertConfig:
        return cls.from_dict(read_config_json(directory))


def read_config_json(folder: str | Path) -> dict[str, Any]:
    """A model folder's config.json, checked to describe a BERT (this project's or transformers'); every
    problem is one line (UserError): no file, not JSON, another architecture."""
    from bert.errors import UserError

    path = Path(folder) / "config.json"
    if not path.is_file():
        raise UserError(f"{folder}: not a model folder (no config.json)")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path}: not valid JSON") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    model_type = data.get("model_type", "bert")  # configs of the oldest BERT conversions have none
    if model_type not in MODEL_TYPES:
        raise UserError(
            f"{folder}: a {model_type!r} model, not a BERT ({' or '.join(MODEL_TYPES)}); its weights "
            "would not fit this encoder"
        )
    return data


def transformers_version() -> str:
    """The installed transformers' version (what config.json records), else the oldest one supported."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers")
    except PackageNotFoundError:
        return _OLDEST_TRANSFORMERS
