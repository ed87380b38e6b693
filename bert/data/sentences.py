"""Rule-based sentence splitting of prose: `split_sentences`.

A regular expression proposes boundaries after . ! ? and closing quotes before a capital letter, digit or
opening quote; a few rules reject those after abbreviations such as Mr. Dr. U.S. e.g., after initials such as
"Harry S. Truman", and inside decimals such as 3.5, which never have a space after the dot.

Why not a trained splitter (NLTK punkt, spaCy, a neural model): no extra dependency, no model download (the
machines running this may have no network), fast (about a million sentences a minute in pure Python),
deterministic, and for NSP the exact boundary matters little: Google's own pipeline packs whole sentences into
chunks of about 128 tokens, so an occasional merged or split sentence only moves a chunk edge.
"""

from __future__ import annotations

import re

_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "rev", "hon", "gen", "gov", "sen", "rep", "pres",
    "capt", "col", "lt", "sgt", "maj", "cmdr", "adm", "messrs", "mme", "mlle", "vs", "v", "e.g", "i.e", "cf",
    "al", "approx", "dept", "est", "fig", "figs", "no", "nos", "vol", "vols", "pp", "p", "ch", "sec", "art",
    "inc", "ltd", "co", "corp", "bros", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct",
    "nov", "dec", "mon", "tue", "wed", "thu", "fri", "sat", "sun", "mt", "ft", "ave", "blvd", "rd",
}  # fmt: skip
# After a dotted abbreviation such as "U.S." these words usually start a new sentence ("... in the U.S. The").
_SENTENCE_STARTERS = {
    "the", "a", "an", "it", "he", "she", "we", "they", "i", "this", "that", "these", "those", "but", "and",
    "in", "on", "at", "there", "his", "her", "their", "our", "its", "if", "when", "while", "as", "so", "yet",
}  # fmt: skip

# A candidate boundary: terminal punctuation (and closing quotes/brackets) followed by space and something
# that can open a sentence. The lookahead keeps "3.5", "e.g. this" and "U.S.-made" from ever being candidates.
_CANDIDATE = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s+[\"'\u201c\u2018(\[]*[A-Z0-9])")
_NEXT_WORD = re.compile(r"\s+[\"'\u201c\u2018(\[]*([A-Za-z]+)")
_WHITESPACE = re.compile(r"\s+")


def _is_boundary(text: str, start: int, end: int) -> bool:
    """Whether the punctuation text[start:end] really ends a sentence (only '.' needs checking)."""
    punct = text[start:end]
    if punct[0] != "." or len(punct.rstrip("\"'\u201d\u2019)]")) > 1:
        return True  # ! ? ... and "..": unambiguous enough
    word_start = text.rfind(" ", 0, start) + 1
    word = text[word_start:start].lstrip("\"'(\u201c\u2018[")
    if not word:
        return True
    lower = word.lower()
    if lower in _ABBREVIATIONS:
        return False
    if len(word) == 1 and word.isupper():
        return False  # an initial: "Harry S. Truman", "J. Smith"
    if "." in word and all(len(part) <= 2 for part in word.split(".")):
        # A dotted abbreviation (U.S, a.m, Ph.D): a boundary only when a usual sentence opener follows.
        match = _NEXT_WORD.match(text, end)
        return bool(match) and match.group(1).lower() in _SENTENCE_STARTERS
    return True


def split_sentences(text: str) -> list[str]:
    """Split a paragraph into sentences with the rules above; whitespace inside a sentence is collapsed."""
    text = _WHITESPACE.sub(" ", text).strip()
    if not text:
        return []
    sentences = []
    begin = 0
    for match in _CANDIDATE.finditer(text):
        if _is_boundary(text, match.start(), match.end()):
            sentences.append(text[begin : match.end()].strip())
            begin = match.end()
    tail = text[begin:].strip()
    if tail:
        sentences.append(tail)
    return [s for s in sentences if s]
