"""A real byte-level BPE `CLIPTokenizer` learned offline from a word list (no hub download).

The vocabulary is CLIP's layout: the 256 byte symbols, the same with the end-of-word mark `</w>`,
one symbol per learned merge, then the two special tokens. Merges are learned the standard way
(most frequent adjacent pair first), so every listed word becomes one token and any other text
still tokenizes through smaller pieces, down to single bytes.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

END = "</w>"
SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges until every distinct word is a single symbol; ties broken alphabetically."""
    byte_symbol = bytes_to_unicode()
    counts = Counter(w.lower() for w in words if w)
    pieces = {w: [byte_symbol[b] for b in w.encode("utf-8")] for w in counts}
    for symbols in pieces.values():
        symbols[-1] += END
    merges = []
    while True:
        pairs = Counter()
        for word, symbols in pieces.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += counts[word]
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for word, symbols in pieces.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            pieces[word] = merged


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    symbols = list(bytes_to_unicode().values())
    ordered = symbols + [s + END for s in symbols] + ["".join(m) for m in merges] + list(SPECIALS)
    vocab: dict[str, int] = {}
    for token in ordered:
        vocab.setdefault(token, len(vocab))
    return vocab


def build_tokenizer(words: list[str], max_length: int = 77) -> CLIPTokenizer:
    merges = learn_merges(words)
    return CLIPTokenizer(vocab=build_vocab(merges), merges=list(merges), model_max_length=max_length)


def save_tokenizer(tokenizer: CLIPTokenizer, words: list[str], folder) -> None:
    """save_pretrained plus vocab.json and merges.txt (transformers 5 writes only tokenizer.json),
    so the folder also loads with older transformers and other CLIP tokenizer readers."""
    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    merges = learn_merges(words)
    (folder / "vocab.json").write_text(json.dumps(build_vocab(merges), ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
