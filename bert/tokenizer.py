"""WordPiece tokenizers: train one with `tokenizers`, load an existing one, save it in the HF layout.

A trained tokenizer is BERT's: BertNormalizer (uncased: lower-case and strip accents; cased: neither),
BertPreTokenizer (split on whitespace and punctuation), a WordPiece model with "##" continuation pieces, the
WordPiece decoder, and a template that adds [CLS] A [SEP] (B [SEP]) with token type 0 through the first [SEP]
and 1 after. Special tokens come first: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4. A loaded tokenizer keeps its
own ids (e.g. [CLS]=101 in Google's vocabularies): code looks ids up with `special_ids`, never hard-codes them.

`save_tokenizer` writes tokenizer.json, vocab.txt, tokenizer_config.json (tokenizer_class BertTokenizerFast,
do_lower_case) and special_tokens_map.json, so `transformers.AutoTokenizer.from_pretrained(folder)` loads it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from bert.errors import UserError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
"""Special tokens of a trained tokenizer, in id order."""


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens of one tokenizer."""

    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    @property
    def all(self) -> list[int]:
        return [self.pad, self.unk, self.cls, self.sep, self.mask]


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
    """Look the special tokens up by name; fails with a clear message when one is missing."""
    ids = {}
    for token in SPECIAL_TOKENS:
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise UserError(
                f"the tokenizer has no {token} token; a BERT WordPiece vocabulary needs {SPECIAL_TOKENS}"
            )
        ids[token.strip("[]").lower()] = token_id
    return SpecialIds(**ids)


def _bert_pipeline(tokenizer: Tokenizer, lowercase: bool, strip_accents: bool | None = None) -> None:
    """BERT's normaliser (accents stripped with lower-casing unless `strip_accents` says otherwise), the
    whitespace-and-punctuation pre-tokenizer and the WordPiece decoder."""
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=True,
        strip_accents=lowercase if strip_accents is None else strip_accents,
        lowercase=lowercase,
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")


def _add_template(tokenizer: Tokenizer) -> None:
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )


def train_tokenizer(
    texts: Iterable[str] | Iterable[list[str]],
    vocab_size: int = 30522,
    lowercase: bool = True,
    min_frequency: int = 2,
    alphabet: Iterable[str] | None = None,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a BERT WordPiece tokenizer from an iterator of texts (or of batches of texts).

    `alphabet` (the characters of the corpus, e.g. collected while reading it) makes training deterministic:
    `tokenizers` numbers "##x" continuation pieces in hash-map order, and ties between equally frequent merges
    are then broken differently from run to run. Registering every "##x" up front fixes their ids, and with
    them the whole vocabulary. When `texts` is a list the alphabet is taken from it.
    """
    if alphabet is None and isinstance(texts, list):
        alphabet = {c for text in texts for c in (text if isinstance(text, str) else "".join(text))}
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    _bert_pipeline(tokenizer, lowercase)
    continuations: list[str] = []
    if alphabet is not None:
        normalized: set[str] = set()
        for char in set(alphabet):
            normalized.update(tokenizer.normalizer.normalize_str(char))
        continuations = sorted("##" + c for c in normalized if not c.isspace())
    trainer = trainers.WordPieceTrainer(
        vocab_size=max(vocab_size, len(SPECIAL_TOKENS) + len(continuations)),
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS + continuations,
        continuing_subword_prefix="##",
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(_without_overlong_words(texts), trainer=trainer)
    # Rebuild from the vocabulary so that only the five real special tokens are "added tokens" (the "##x"
    # entries above must stay ordinary pieces, never matched literally in text).
    vocab = tokenizer.get_vocab()
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    _bert_pipeline(tokenizer, lowercase)
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    _add_template(tokenizer)
    return tokenizer


MAX_WORD_CHARS = 100
"""BERT's WordPiece maps a word longer than this to [UNK] (`max_input_chars_per_word`)."""
_OVERLONG = re.compile(rf"\S{{{MAX_WORD_CHARS + 1},}}")


def _without_overlong_words(texts: Iterable[Any]) -> Iterator[Any]:
    """The texts (or batches of texts) without runs of more than MAX_WORD_CHARS non-space characters.

    Why: the WordPiece trainer's work grows with the square of the longest word, so one megabyte without a
    space (a base64 blob, a minified file) ran for more than ten minutes; BERT encodes such a word as [UNK]
    anyway, so leaving it out of the vocabulary statistics costs nothing."""

    def clean(text: str) -> str:
        return _OVERLONG.sub(" ", text) if len(text) > MAX_WORD_CHARS else text

    for item in texts:
        yield clean(item) if isinstance(item, str) else [clean(t) for t in item]


def _read_setting(folder: Path, name: str) -> bool | None:
    """A boolean of tokenizer_config.json beside a vocab.txt (do_lower_case, strip_accents), or None."""
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            value = json.loads(config.read_text()).get(name)
        except json.JSONDecodeError:
            return None
        return bool(value) if value is not None else None
    return None


def load_tokenizer(path: str | Path, lowercase: bool | None = None) -> Tokenizer:
    """Load tokenizer.json, vocab.txt, or a folder holding either (a Hugging Face model folder or ours).

    For a bare vocab.txt the BERT pipeline is rebuilt; `lowercase` comes from the argument, else from a
    tokenizer_config.json beside it (do_lower_case, and strip_accents), else True (Google's uncased models
    are the common case). The one tokenizer loader of the project (pretraining data and fine-tuning).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: tokenizer not found (data.tokenizer)")
    folder = path if path.is_dir() else path.parent
    json_file = path if path.is_file() and path.suffix == ".json" else folder / "tokenizer.json"
    if path.is_dir() or path.suffix == ".json":
        if json_file.is_file():
            try:
                tokenizer = Tokenizer.from_file(str(json_file))
            except Exception as err:  # tokenizers raises a bare Exception for a malformed file
                raise UserError(f"{json_file}: not a tokenizers file ({err})") from None
            # A saved tokenizer.json may pad and truncate to a fixed length (sentence-transformers folders
            # pad every text to 128 [PAD]s): a text's tokens must be its own; callers that want either
            # (pair_tokenizer) set it themselves.
            tokenizer.no_padding()
            tokenizer.no_truncation()
            special_ids(tokenizer)
            return tokenizer
    vocab_file = path if path.is_file() else folder / "vocab.txt"
    if not vocab_file.is_file():
        raise UserError(f"{path}: no tokenizer.json or vocab.txt found")
    vocab = {}
    with open(vocab_file, encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            token = line.rstrip("\n")
            if token:
                vocab.setdefault(token, index)
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    if lowercase is None:
        lowercase = _read_setting(folder, "do_lower_case")
    _bert_pipeline(
        tokenizer, True if lowercase is None else lowercase, _read_setting(folder, "strip_accents")
    )
    special_ids(tokenizer)
    _add_template(tokenizer)
    return tokenizer


def tokenizer_folder(model_path: str | Path) -> Path:
    """The folder holding a model's tokenizer: the model folder itself, or its `tokenizer/` sub-folder."""
    for folder in (Path(model_path), Path(model_path) / "tokenizer"):
        if (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file():
            return folder
    raise UserError(f"{model_path}: no tokenizer in the model folder (tokenizer.json or vocab.txt)")


def pair_tokenizer(tokenizer: Tokenizer, max_length: int) -> Tokenizer:
    """Set `tokenizer` up for sentence pairs: `[CLS] a [SEP] b [SEP]`, segment ids 0/1, no padding (batches
    pad themselves), truncated longest-first to `max_length` tokens (the special tokens counted)."""
    ids = special_ids(tokenizer)
    # Always the BERT pair template: a saved tokenizer may not carry one, and ids are looked up, not assumed.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids.cls), ("[SEP]", ids.sep)],
    )
    tokenizer.no_padding()  # a saved tokenizer.json may pad to a fixed length
    tokenizer.enable_truncation(max_length, strategy="longest_first")
    return tokenizer


def is_lowercase(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer's normaliser lower-cases (True when it cannot tell)."""
    normalizer = tokenizer.normalizer
    return bool(getattr(normalizer, "lowercase", True)) if normalizer is not None else False


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
"""A tokenizer's files in the Hugging Face layout (`save_tokenizer` writes them; a model folder carries them)."""


def save_tokenizer(tokenizer: Tokenizer, folder: str | Path, model_max_length: int = 512) -> Path:
    """Write the Hugging Face layout into `folder` (created) and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    vocab = tokenizer.get_vocab()
    by_id = sorted(vocab.items(), key=lambda item: item[1])
    with open(folder / "vocab.txt", "w", encoding="utf-8") as handle:
        for token, _ in by_id:
            handle.write(token + "\n")
    names = dict(zip(["pad_token", "unk_token", "cls_token", "sep_token", "mask_token"], SPECIAL_TOKENS))
    lowercase = is_lowercase(tokenizer)
    config = {
        "tokenizer_class": "BertTokenizerFast",
        "do_lower_case": lowercase,
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        **names,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(names, indent=2) + "\n")
    return folder


def batched(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    """Group texts into lists, the form `train_from_iterator` consumes fastest."""
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
