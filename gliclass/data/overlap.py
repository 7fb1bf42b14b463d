"""Near-duplicate detection between training rows and the rows a model is evaluated on.

Two texts are near-duplicates when, after `normalize`, they are equal, or the shorter one (at least `min_chars`
normalised characters) is contained in the longer one. `normalize` undoes what separates copies of one sentence in
the public datasets: case, Penn Treebank escapes (`-lrb-`, ``` `` ```), clitic and punctuation spacing (`moore 's`,
`good .`) and HTML line breaks; it keeps letters and digits only. So subj's `moore 's -lrb- ... -rrb-` matches
sst2's `Moore's ( ... )`, and a uci_imdb_sentences sentence matches the imdb review that holds it.

`NearDuplicateIndex(reference_texts)` answers `index.matches(text)` in time linear in `len(text) / stride`: each
reference is indexed by `key`-character windows at every `stride`-th offset and at its first `stride` offsets, and a
query looks up its own windows the other way round, so any containment of `min_chars >= key + stride` characters
meets at least one shared window, which is then verified exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

PTB_ESCAPES = {
    "-lrb-": "(",
    "-rrb-": ")",
    "-lsb-": "[",
    "-rsb-": "]",
    "-lcb-": "{",
    "-rcb-": "}",
    "``": '"',
    "''": '"',
}
_PTB = re.compile("|".join(re.escape(k) for k in PTB_ESCAPES))
_HTML_BREAK = re.compile(r"<br\s*/?>")
_NOT_ALNUM = re.compile(r"[\W_]+", re.UNICODE)

MIN_OVERLAP_CHARS = 40


def normalize(text: str) -> str:
    """Lower-case letters and digits only, after PTB escapes and HTML breaks are undone (see the module doc)."""
    text = _HTML_BREAK.sub(" ", text.lower())
    text = _PTB.sub(lambda m: PTB_ESCAPES[m.group(0)], text)
    return _NOT_ALNUM.sub("", text)


class NearDuplicateIndex:
    """Reference texts (evaluation rows) that training rows are checked against; see the module doc."""

    def __init__(self, texts: Iterable[str], min_chars: int = MIN_OVERLAP_CHARS, key: int = 24) -> None:
        if key < 8 or min_chars < key + 1:
            raise ValueError(f"need key >= 8 and min_chars > key, got key={key}, min_chars={min_chars}")
        self.min_chars, self.key, self.stride = min_chars, key, min_chars - key + 1
        self.exact: set[str] = set()
        self.refs: list[str] = []
        self.along: dict[int, list[int]] = {}  # windows at every stride-th offset: a query inside a reference
        self.heads: dict[int, list[int]] = {}  # windows at the first `stride` offsets: a reference inside a query
        for text in texts:
            self.add(text)

    def add(self, text: str) -> None:
        norm = normalize(text)
        if not norm or norm in self.exact:
            return
        self.exact.add(norm)
        if len(norm) < self.min_chars:
            return
        ref, key = len(self.refs), self.key
        self.refs.append(norm)
        for start in range(0, len(norm) - key + 1, self.stride):
            self.along.setdefault(hash(norm[start : start + key]), []).append(ref)
        for start in range(min(self.stride, len(norm) - key + 1)):
            self.heads.setdefault(hash(norm[start : start + key]), []).append(ref)

    def __len__(self) -> int:
        return len(self.exact)

    def match(self, text: str) -> str | None:
        """The normalised reference that `text` duplicates or overlaps by containment, or None."""
        norm = normalize(text)
        if norm in self.exact:
            return norm
        if len(norm) < self.min_chars:
            return None
        key = self.key
        # the query inside a longer reference: one of its first `stride` windows is an indexed window of the ref
        for start in range(min(self.stride, len(norm) - key + 1)):
            for ref in self.along.get(hash(norm[start : start + key]), ()):
                if norm in self.refs[ref]:
                    return self.refs[ref]
        # a reference inside the longer query: a window of the query at a stride-th offset is a head of the ref
        for start in range(0, len(norm) - key + 1, self.stride):
            for ref in self.heads.get(hash(norm[start : start + key]), ()):
                if self.refs[ref] in norm:
                    return self.refs[ref]
        return None

    def matches(self, text: str) -> bool:
        return self.match(text) is not None
