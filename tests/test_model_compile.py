"""The reference padded path is one graph for torch.compile: forward + loss trace with zero graph breaks,
which also means no host synchronisation (no .item(), .tolist(), nonzero, bool(tensor), data-dependent
shape). Tracing only: inductor's code generation is slow on 2 cores and is not needed to show this."""

from __future__ import annotations

import pytest
import torch

from bert.batch import PretrainingBatch
from bert.losses import pretraining_loss
from bert.model.modeling import BertForPreTraining, BertForSequenceClassification
from tests.model_helpers import make_batch, masked_positions, tiny_config


def _pretraining_batch() -> PretrainingBatch:
    lengths = [16, 10, 4, 0]
    positions, used = masked_positions(lengths, 3)
    labels = torch.where(used, torch.randint(5, 99, used.shape), -100)
    return PretrainingBatch(
        **make_batch(lengths, 16, 99),
        masked_lm_positions=positions,
        masked_lm_labels=labels,
        next_sentence_label=torch.tensor([1, 0, 1, -100]),
    )


@pytest.mark.parametrize("path", ["sdpa", "eager"])
@pytest.mark.parametrize("pre_ln", [False, True])
def test_pretraining_forward_and_loss_trace_without_graph_breaks(path, pre_ln):
    torch.manual_seed(0)
    config = tiny_config(
        attn_implementation=path,
        pre_layer_norm=pre_ln,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    model = BertForPreTraining(config).train()
    batch = _pretraining_batch()

    def step(batch: PretrainingBatch) -> torch.Tensor:
        # The global counts come from the host (the training step reads them off the collator's batch).
        return pretraining_loss(model(**batch.model_inputs()), batch, 7.0, 3.0).loss

    torch._dynamo.reset()
    explained = torch._dynamo.explain(step)(batch)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_classification_forward_traces_without_graph_breaks():
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config(attn_implementation="sdpa", num_labels=3)).train()
    batch = make_batch([16, 3, 9], 16, 99)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda b: model(**b).logits.sum())(batch)
    assert explained.graph_break_count == 0, explained.break_reasons


def test_a_negative_control_breaks_the_graph():
    """The check can fail: a host read (what the fast paths do) is one graph break."""
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda x: x * int(x.sum().item()))(torch.ones(3))
    assert explained.graph_break_count >= 1
