"""BertModel and its task models: BertForPreTraining (MLM + NSP) and BertForSequenceClassification.

The reference BERT, read top to bottom: attention_mask -> layout (masks.py, once per batch) -> embeddings ->
encoder layers -> the heads, which read [CLS] and, for pretraining, the masked positions only. The models
return logits in output dataclasses; losses live in bert/losses.py. Faster variants of some modules (for
the CPU) replace them in place, at one seam: bert.model.fast.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from bert.model import convert
from bert.model.config import BertConfig
from bert.model.embeddings import BertEmbeddings
from bert.model.heads import BertPreTrainingHeads
from bert.model.layers import BertEncoder, BertPooler
from bert.model.masks import AttentionMasks, Layout
from bert.model.outputs import BaseModelOutput, BertForPreTrainingOutput, SequenceClassifierOutput

logger = logging.getLogger(__name__)


class Encoded(NamedTuple):
    """What BertModel.encode returns."""

    hidden: torch.Tensor  # (B, T, H) padded or (N, H) unpadded; (B, K, H) with output_positions (B, K)
    layout: Layout  # layout.attentions: per-layer probabilities, with output_attentions


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
        cls,
        folder: str | Path,
        ignore_mismatched_sizes: bool = False,
        output_loading_info: bool = False,
        **config_overrides: Any,
    ):
        """Load a Hugging Face BERT folder or this project's (config.json + weights).

        `config_overrides` replace config fields, e.g. attn_implementation='unpadded' or num_labels=3.
        Weights the checkpoint lacks (e.g. the MLM/NSP heads of a bare BertModel checkpoint) keep their
        initialisation. A weight whose shape differs from the model's is an error, or, with
        `ignore_mismatched_sizes` (e.g. a classifier with another num_labels), initialised anew.
        With `output_loading_info` (as in transformers), returns (model, convert.LoadReport) and warns of
        nothing; otherwise missing weights are named in a warning.
        """
        folder = Path(folder)
        config = dataclasses.replace(BertConfig.from_pretrained(folder), **config_overrides)
        model = cls(config)
        state = convert.normalize_keys(convert.read_state_dict(folder), cls.base_model_prefix)
        report = convert.load_weights(model, state, str(folder), ignore_mismatched_sizes)
        if output_loading_info:
            return model, report
        if report.missing:
            warnings.warn(
                f"{folder}: weights not in the checkpoint, newly initialised: {', '.join(report.missing)}",
                stacklevel=2,
            )
        if report.unexpected:
            logger.warning("%s: checkpoint weights not used: %s", folder, ", ".join(report.unexpected))
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
        self.masks = AttentionMasks(config.attn_implementation)  # no parameters
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.init_weights()

    def encode(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_positions: torch.Tensor | None = None,
        output_attentions: bool = False,
        seq_lengths: Sequence[int] | None = None,
    ) -> Encoded:
        """The last layer's hidden states in the layout of the attention path: (B, T, H) or (N, H).

        `output_positions` (B, K): only these positions of the padded batch are wanted; the result is then
        (B, K, H) (zeros at a pad position of an unpadded batch). `output_attentions`: the eager kernel,
        each layer's (B, A, T, T) probabilities in the returned layout's `attentions`. `seq_lengths`: each
        row's real tokens, counted on the host (the unpadded path then builds its layout without a read).
        """
        b, t = input_ids.shape
        layout = self.masks(
            attention_mask, b, t, input_ids.device, probabilities=output_attentions, lengths=seq_lengths
        )
        if output_attentions:
            layout.attentions = []
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        position_ids = torch.arange(t, device=input_ids.device).expand(b, t)  # (B, T), as Hugging Face
        # An unpadded layout picks the real tokens BEFORE they are embedded; a padded one keeps them all.
        hidden = self.embeddings(
            layout.select(input_ids), layout.select(token_type_ids), layout.select(position_ids)
        )  # (B, T, H) or (N, H)
        return Encoded(self.encoder(hidden, layout, output_positions), layout)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> BaseModelOutput:
        hidden, layout = self.encode(
            input_ids, token_type_ids, attention_mask, output_attentions=output_attentions
        )
        sequence = layout.to_padded(hidden)  # (B, T, H)
        return BaseModelOutput(
            last_hidden_state=sequence,
            pooler_output=self.pooler(sequence[:, 0]),  # (B, H)
            attentions=tuple(layout.attentions) if output_attentions else None,
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
        seq_lengths: Sequence[int] | None = None,
    ) -> BertForPreTrainingOutput:
        """masked_lm_positions (B, P): the MLM head runs only there -> logits (B, P, V); without, (B, T, V).
        `seq_lengths` (optional): each row's real tokens, known on the host (BertModel.encode).

        Slots at position 0 are padding: [CLS] is never masked (Google's convention, which the collator
        follows: a row with fewer masked tokens than P fills its other slots with 0). Their logits are 0;
        give them the label -100 so that the loss ignores them.
        """
        if masked_lm_positions is None:
            sequence = self.bert(input_ids, token_type_ids, attention_mask).last_hidden_state  # (B, T, H)
            cls_hidden, mlm_hidden, used = sequence[:, 0], sequence, None
        else:
            read = F.pad(masked_lm_positions, (1, 0))  # (B, 1 + P): [CLS] is position 0
            hidden = self.bert.encode(
                input_ids, token_type_ids, attention_mask, output_positions=read, seq_lengths=seq_lengths
            ).hidden
            cls_hidden, mlm_hidden = hidden[:, 0], hidden[:, 1:]  # (B, H), (B, P, H)
            used = masked_lm_positions != 0  # (B, P); position 0 pads the slots
        return BertForPreTrainingOutput(
            prediction_logits=self.cls.predictions(mlm_hidden, used),  # (B, P, V) or (B, T, V)
            seq_relationship_logits=self.cls.seq_relationship(self.bert.pooler(cls_hidden)),  # (B, 2)
        )


class BertForSequenceClassification(BertPreTrainedModel):
    """BERT with dropout + linear on the pooled [CLS]: num_labels classes, or regression when 1."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config)
        dropout = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        cls_position = input_ids.new_zeros(input_ids.shape[0], 1)  # (B, 1): only [CLS] is read
        hidden = self.bert.encode(input_ids, token_type_ids, attention_mask, cls_position).hidden  # (B, 1, H)
        pooled = self.bert.pooler(hidden[:, 0])  # (B, H)
        return SequenceClassifierOutput(logits=self.classifier(self.dropout(pooled)))  # (B, num_labels)
