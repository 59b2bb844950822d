"""ROUGE-L (summarization) exactly as the `rouge` package 1.0.1 scores it, computed faster.

`rouge` 1.0.1 (`Rouge().get_scores`, key "rouge-l", stat "f") works at summary level:

* each text is split into sentences on "." (empty pieces dropped, whitespace inside collapsed);
* m, n = number of *distinct* words in the reference and in the hypothesis;
* for every (reference sentence, hypothesis sentence) pair it rebuilds one LCS by backtracking
  the DP table (match → diagonal; else up only if table[i-1][j] > table[i][j-1], else left), and
  takes the union U of the *words* of all those LCSs;
* R = |U|/m, P = |U|/n, F = 2·P·R / (P + R + 1e-8)   (a perfect match gives 0.999999995).

Two failure modes of the package decide real scores and are reproduced:

* a text with no sentence (empty, or only dots) raises, and the caller scores 0;
* the backtrack is recursive, one Python frame per step, so a pair whose backtrack path is longer
  than the interpreter's recursion limit allows raises `RecursionError`, and the caller scores 0.
  This hits long unpunctuated text (jieba-segmented Chinese has no "." at all). We count the
  frames exactly and fail when they exceed `max_frames`; the default `REFERENCE_MAX_FRAMES` = 989
  is what the released scorer has when it is called from a script's top level (recursion limit
  1000 minus 11 frames above the backtrack). A trainer calls it from deeper in the stack, so its
  real limit was somewhat lower. `max_frames=None` turns the failure off (plain ROUGE-L).

The DP runs in numpy, one reference sentence against all hypothesis sentences at once, so a
16K-token response costs milliseconds instead of seconds; the backtrack walks plain lists.
Inputs whose DP would exceed `MAX_CELLS` cells, or Chinese text over `MAX_SEGMENT_CHARS` characters
to segment, score 0 (bounded time; both far above real sizes).
"""

from __future__ import annotations

import numpy as np

from rewards.parsing import after_think, answer_area, normalize_gold, normalize_text

REFERENCE_MAX_FRAMES = 989
MAX_CELLS = 100_000_000
MAX_SEGMENT_CHARS = 400_000  # jieba input bound (~1-2 s); a 16K-token response is ~60K chars
_BLOCK_CELLS = 4_000_000  # DP table slice held in memory at once (int32: 16 MB)


class RougeFailure(Exception):
    """The `rouge` package would raise here; the reward is 0."""


def sentences(text: str) -> list[list[str]]:
    """Sentences as word lists, split like `rouge` 1.0.1 (a blank piece is the word "")."""
    return [" ".join(piece.split()).split(" ") for piece in text.split(".") if len(piece) > 0]


def _tables(ref_ids: np.ndarray, hyp_ids: np.ndarray, seg_ids: np.ndarray) -> np.ndarray:
    """LCS DP tables of one reference sentence against many hypothesis sentences side by side.

    `hyp_ids` holds the sentences' word ids, each preceded by a boundary column (id −1, which
    never matches) that plays the j = 0 column. Row i:
        c[j]   = T[i−1][j−1] + 1 if ref[i−1] == hyp[j] else T[i−1][j]
        T[i][j] = max(c[j], T[i][j−1])  = running max of c within the sentence,
    done with one cumulative max by lifting each sentence by seg·(n+2).
    """
    n, width = len(ref_ids), len(hyp_ids)
    table = np.zeros((n + 1, width), dtype=np.int32)
    lift = seg_ids.astype(np.int32) * np.int32(n + 2)
    present = set(np.unique(hyp_ids).tolist())
    for i in range(1, n + 1):
        prev = table[i - 1]
        if int(ref_ids[i - 1]) not in present:  # no match anywhere: the row repeats
            table[i] = prev
            continue
        diag = np.empty_like(prev)
        diag[0] = 0
        np.add(prev[:-1], 1, out=diag[1:])
        c = np.where(hyp_ids == ref_ids[i - 1], diag, prev)
        table[i] = np.maximum.accumulate(c + lift) - lift
    return table


def _backtrack(table: list[list[int]], ref: list[str], hyp: list[str]) -> tuple[set[str], int]:
    """The LCS words the package's recursive backtrack collects, and its frame count."""
    i, j, frames, words = len(ref), len(hyp), 1, set()
    while i > 0 and j > 0:
        if ref[i - 1] == hyp[j - 1]:
            words.add(ref[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
        frames += 1
    return words, frames


class _Hypothesis:
    """A hypothesis split and encoded once, scored against any number of references.

    All sentences sit side by side in one id array, each preceded by a boundary column (−1).
    """

    def __init__(self, text: str) -> None:
        self.sents = sentences(text)
        self.vocab: dict[str, int] = {}
        ids: list[int] = []
        for sent in self.sents:
            ids.append(-1)
            ids.extend(self.vocab.setdefault(w, len(self.vocab)) for w in sent)
        self.ids = np.array(ids, dtype=np.int32)
        self.lengths = np.array([len(s) for s in self.sents], dtype=np.int64)
        self.col_ends = np.cumsum(self.lengths + 1)  # exclusive end column of each sentence
        self.starts = self.col_ends - (self.lengths + 1)
        self.sets = [set(s) for s in self.sents]
        self.n_words = int(self.lengths.sum())
        self.n_distinct = len(self.vocab)


def _union_lcs(ref_sents: list[list[str]], hyp: _Hypothesis, max_frames: int | None) -> set[str]:
    union: set[str] = set()
    count = len(hyp.sents)
    for ref in ref_sents:
        ref_ids = np.array([hyp.vocab.get(w, -2) for w in ref], dtype=np.int32)
        ref_set = set(ref)
        n = len(ref)
        per_block = max(1, _BLOCK_CELLS // (n + 1))
        first = 0
        while first < count:
            # Whole sentences, as many as fit in one block (at least one).
            base = int(hyp.starts[first])
            last = max(int(np.searchsorted(hyp.col_ends, base + per_block, side="right")), first + 1)
            block = range(first, last)
            stop = int(hyp.col_ends[last - 1])
            seg = np.repeat(np.arange(last - first, dtype=np.int32), hyp.lengths[first:last] + 1)
            table = _tables(ref_ids, hyp.ids[base:stop], seg)
            lengths = hyp.lengths[first:last]
            ends = hyp.starts[first:last] - base + lengths  # column of each sentence's last word
            lcs_lens = table[n, ends]
            # An all-zero table backtracks straight left: m + 1 frames, no words.
            if max_frames is not None and np.any((lcs_lens == 0) & (lengths + 1 > max_frames)):
                raise RougeFailure("backtrack too deep")
            for s in np.flatnonzero(lcs_lens).tolist():
                k, m = block[s], int(lengths[s])
                may_overflow = max_frames is not None and n + m + 1 > max_frames
                if may_overflow or not (ref_set & hyp.sets[k]) <= union:
                    col = int(ends[s]) - m
                    words, frames = _backtrack(table[:, col : col + m + 1].tolist(), ref, hyp.sents[k])
                    if max_frames is not None and frames > max_frames:
                        raise RougeFailure("backtrack too deep")
                    union |= words
            first = last
    return union


def _rouge_l(hyp: _Hypothesis, reference: str, max_frames: int | None) -> float:
    ref_sents = sentences(reference)
    if not hyp.sents or not ref_sents:
        raise RougeFailure("empty hypothesis or reference")
    ref_words = sum(len(s) for s in ref_sents)
    if ref_words * (hyp.n_words + len(hyp.sents)) > MAX_CELLS:
        raise RougeFailure("input too large")
    m = len({w for s in ref_sents for w in s})
    llcs = len(_union_lcs(ref_sents, hyp, max_frames))
    r_lcs = llcs / m
    p_lcs = llcs / hyp.n_distinct
    return 2.0 * ((p_lcs * r_lcs) / (p_lcs + r_lcs + 1e-8))


def rouge_l_f(hypothesis: str, reference: str, max_frames: int | None = REFERENCE_MAX_FRAMES) -> float:
    """Summary-level ROUGE-L F of `rouge` 1.0.1; raises `RougeFailure` where the package raises."""
    return _rouge_l(_Hypothesis(hypothesis), reference, max_frames)


def max_rouge_l(references: list[str], hypothesis: str, max_frames: int | None = REFERENCE_MAX_FRAMES) -> float:
    """max over references of ROUGE-L F; 0 if any pair fails (the package scores all in one call)."""
    hyp = _Hypothesis(hypothesis)
    try:
        return max(_rouge_l(hyp, ref, max_frames) for ref in references)
    except RougeFailure:
        return 0.0


def _segment(text: str) -> str:
    import jieba  # loads its dictionary on first use (~1 s); only Chinese rows pay for it

    return " ".join(jieba.cut(text, cut_all=False))


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def summary_score(
    gold: list[str],
    response: str,
    language: str | None,
    *,
    on_answer: bool = False,
    max_frames: int | None = REFERENCE_MAX_FRAMES,
) -> float:
    """Max ROUGE-L F of the response against the gold summaries (LongBench-Pro "Summary").

    Both sides are lower-cased with whitespace collapsed. By default the *whole* response is the
    hypothesis, thinking included, as in the released scorer; `on_answer=True` scores only the
    answer area after `</think>`. jieba segments both sides only when `language` is exactly
    "Chinese" ("auto": when the references contain CJK characters).
    """
    references = normalize_gold(gold)
    hypothesis = normalize_text(answer_area(after_think(response)) if on_answer else response)
    if not references or not hypothesis:
        return 0.0
    if language == "auto":
        language = "Chinese" if any(_has_cjk(r) for r in references) else "English"
    if language == "Chinese":
        if len(hypothesis) > MAX_SEGMENT_CHARS:
            return 0.0
        references = [_segment(r) for r in references]
        hypothesis = _segment(hypothesis)
    return max_rouge_l(references, hypothesis, max_frames)
