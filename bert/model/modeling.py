"""BertModel and its task models: BertForPreTraining (MLM + NSP) and BertForSequenceClassification.

The models return logits in output dataclasses; losses live in bert/losses.py. Padding, unpadding and masks
are decided once per forward in `bert.model.masking.build_layout`. The task models tell the encoder which
tokens their heads read ([CLS] and the masked positions for pretraining, [CLS] alone for classification):
the last layer computes only those (`BertModel.encode(output_positions=...)`), and on the unpadded path
nothing is ever re-padded.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from bert.errors import UserError
from bert.model import convert
from bert.model.config import BertConfig
from bert.model.dropout import Dropout
from bert.model.embeddings import BertEmbeddings
from bert.model.heads import BertPreTrainingHeads
from bert.model.layers import BertEncoder, BertPooler
from bert.model.masking import Layout, build_layout
from bert.model.outputs import BaseModelOutput, BertForPreTrainingOutput, SequenceClassifierOutput

logger = logging.getLogger(__name__)


class Encoded(NamedTuple):
    """What BertModel.encode returns."""

    hidden: torch.Tensor  # (B, T, H) padded or (N, H) unpadded; (B, K, H) with output_positions (B, K)
    layout: Layout
    attentions: tuple[torch.Tensor, ...] | None  # eager path with output_attentions only
    word_weight: torch.Tensor  # (V, H) word-embedding matrix for a tied decoder (an alias when tied)


class BertPreTrainedModel(nn.Module):
    """BERT initialisation and Hugging Face-layout loading and saving, shared by every model class."""

    base_model_prefix = "bert."  # where the encoder's keys live in this class's state dict

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config

    def init_weights(self) -> None:
        """BERT init: normal(0, initializer_range) weights, zero biases, LayerNorm weight 1 / bias 0."""
        std = self.config.initializer_range
        tied = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        for module in self.modules():
            if isinstance(module, nn.Linear):
                if id(module.weight) in tied:
                    continue  # the MLM decoder: its weight is the word-embedding matrix, its bias the head's
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                if module.padding_idx is not None:
                    nn.init.zeros_(module.weight[module.padding_idx])
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, ignore_mismatched_sizes: bool = False, **config_overrides: Any
    ):
        """Load a Hugging Face BERT folder or this project's (config.json + weights).

        `config_overrides` replace config fields, e.g. attn_implementation='unpadded' or num_labels=3.
        Weights the checkpoint lacks (e.g. the MLM/NSP heads of a bare BertModel checkpoint) keep their
        initialisation, with a warning naming them. A weight whose shape differs from the model's is an error,
        or, with `ignore_mismatched_sizes` (e.g. a classifier with another num_labels), initialised anew.
        """
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise UserError(f"{folder}: not a model folder (no config.json)")
        config = dataclasses.replace(BertConfig.from_pretrained(folder), **config_overrides)
        model = cls(config)
        state = convert.normalize_keys(convert.read_state_dict(folder), cls.base_model_prefix)
        own = model.state_dict()
        for key, value in list(state.items()):
            if key in own and own[key].shape != value.shape:
                if ignore_mismatched_sizes:
                    del state[key]
                    continue
                raise UserError(
                    f"{folder}: weight {key} has shape {tuple(value.shape)}, the model expects "
                    f"{tuple(own[key].shape)} (check config.json)"
                )
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (k in convert.TIED_ALIASES and convert.TIED_ALIASES[k] in state)]
        if missing:
            warnings.warn(
                f"{folder}: weights not in the checkpoint, newly initialised: {', '.join(missing)}",
                stacklevel=2,
            )
        # Weights of heads this class does not have (e.g. cls.* when loading a BertModel) are expected.
        unexpected = [
            k for k in unexpected if not (k.startswith(("cls.", "classifier.")) or k.endswith("position_ids"))
        ]
        if unexpected:
            logger.warning("%s: checkpoint weights not used: %s", folder, ", ".join(unexpected))
        return model

    def save_pretrained(self, folder: str | Path) -> None:
        """Write config.json + model.safetensors, a folder `transformers` loads with no missing keys."""
        folder = Path(folder)
        config = dataclasses.replace(self.config, architectures=[type(self).__name__])
        config.save_pretrained(folder)
        convert.write_state_dict(convert.state_dict_for_saving(self), folder)


class BertModel(BertPreTrainedModel):
    """The BERT encoder: embeddings, `num_hidden_layers` layers and the pooler."""

    base_model_prefix = ""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.init_weights()

    def encode(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        tie_word_weight: bool = False,
        output_positions: torch.Tensor | None = None,
    ) -> Encoded:
        """Hidden states in the layout of the attention path: (B, T, H) padded or (N, H) unpadded.

        `output_positions` (B, K): only these positions of the padded batch are wanted, and the result is
        (B, K, H) there (zeros at a pad position of an unpadded batch, as `UnpaddedLayout.gather`). The last
        layer then computes its output projection and feed-forward (on the unpadded CPU path also its queries
        and attention) at those tokens only (BertEncoder).
        `tie_word_weight`: also return the word-embedding matrix for a tied decoder (BertEmbeddings.forward).
        """
        b, t = input_ids.shape
        implementation = "eager" if output_attentions else self.config.attn_implementation
        layout = build_layout(attention_mask, b, t, implementation, input_ids.device)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        position_ids = torch.arange(t, device=input_ids.device).expand(b, t)  # (B, T), as Hugging Face
        # Unpadded layout: pick the real tokens BEFORE embedding them; padded layout: identity.
        hidden, word_weight = self.embeddings(
            layout.select(input_ids),
            layout.select(token_type_ids),
            layout.select(position_ids),
            tie_word_weight,
        )  # (B, T, H) or (N, H)
        if output_positions is None:
            hidden, attentions = self.encoder(hidden, layout, output_attentions)
            return Encoded(hidden, layout, attentions, word_weight)
        slot_rows = layout.rows(output_positions)  # (B, K) rows of the flattened hidden states, -1 at pads
        # Each token once (unused MLM slots and [CLS] are all position 0 of their row).
        rows, inverse = torch.unique(slot_rows.clamp(min=0), return_inverse=True)  # (M,), (B, K)
        hidden, attentions = self.encoder(hidden, layout, output_attentions, rows)  # (M, H)
        hidden = hidden.index_select(0, inverse.reshape(-1)).view(*inverse.shape, -1)  # (B, K, H)
        hidden = torch.where((slot_rows >= 0).unsqueeze(-1), hidden, hidden.new_zeros(()))
        return Encoded(hidden, layout, attentions, word_weight)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> BaseModelOutput:
        hidden, layout, attentions, _ = self.encode(
            input_ids, token_type_ids, attention_mask, output_attentions
        )
        return BaseModelOutput(
            last_hidden_state=layout.to_padded(hidden),  # (B, T, H)
            pooler_output=self.pooler(layout.cls(hidden)),  # (B, H)
            attentions=attentions,
        )


class BertForPreTraining(BertPreTrainedModel):
    """BERT with the MLM head (tied to the word embeddings) and the NSP head."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config, self.bert.embeddings.word_embeddings)
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        masked_lm_positions: torch.Tensor | None = None,
    ) -> BertForPreTrainingOutput:
        """masked_lm_positions (B, P): the MLM head runs only there -> (B, P, V); without it (B, T, V).

        Slots at position 0 are padding: [CLS] is never masked (Google's convention, which the collator
        follows: a row with fewer masked tokens than P fills its other slots with 0). The head skips them and
        their logits are 0; give them the label -100 so that the loss ignores them.
        """
        if masked_lm_positions is None:
            hidden, layout, _, word_weight = self.bert.encode(
                input_ids, token_type_ids, attention_mask, tie_word_weight=True
            )
            prediction_logits = self.cls.predictions(layout.to_padded(hidden), word_weight)  # (B, T, V)
            pooled = self.bert.pooler(layout.cls(hidden))  # (B, H)
        else:
            # The heads read [CLS] and the masked positions only: the last layer computes just those tokens,
            # and the MLM transform and the H x V matmul, the largest of the step, run on the used slots, not
            # on T positions.
            read = F.pad(masked_lm_positions, (1, 0))  # (B, 1 + P): [CLS] is position 0
            hidden, _, _, word_weight = self.bert.encode(
                input_ids, token_type_ids, attention_mask, tie_word_weight=True, output_positions=read
            )  # (B, 1 + P, H)
            used = masked_lm_positions != 0  # (B, P); position 0 pads the slots
            prediction_logits = self.cls.predictions.at_slots(hidden[:, 1:], used, word_weight)  # (B, P, V)
            pooled = self.bert.pooler(hidden[:, 0])  # (B, H)
        return BertForPreTrainingOutput(
            prediction_logits=prediction_logits,
            seq_relationship_logits=self.cls.seq_relationship(pooled),  # (B, 2)
        )


class BertForSequenceClassification(BertPreTrainedModel):
    """BERT with dropout + linear on the pooled [CLS]: num_labels classes, or regression when 1."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config)
        dropout = config.classifier_dropout
        self.dropout = Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        cls_position = input_ids.new_zeros(input_ids.shape[0], 1)  # (B, 1)
        hidden = self.bert.encode(
            input_ids, token_type_ids, attention_mask, output_positions=cls_position
        ).hidden  # (B, 1, H): only [CLS] is read, so the last layer computes only [CLS] (BertEncoder)
        pooled = self.bert.pooler(hidden[:, 0])  # (B, H)
        return SequenceClassifierOutput(logits=self.classifier(self.dropout(pooled)))  # (B, num_labels)
