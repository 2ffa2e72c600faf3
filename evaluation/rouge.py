"""ROUGE-L F exactly as LongBench computes it, many times faster.

LongBench scores summaries with `Rouge().get_scores([pred], [ref], avg=True)["rouge-l"]["f"]` from the `rouge`
1.0.1 package, any exception counting as 0.0. That package computes a summary-level union LCS: for every
(reference sentence, hypothesis sentence) pair it fills an O(len*len) dict table and backtracks through it
recursively. This module returns the same float, bit for bit, from the same definitions:

* sentences are the non-empty parts of `text.split(".")`, whitespace collapsed; words are
  `sentence.split(" ")`, so a part made only of whitespace is the one word "";
* m and n count DISTINCT words (the package's `exclusive=True` sets);
* the LCS of each pair is the one the package's backtrack picks (diagonal on a match, else up when the cell
  above is strictly larger, else left), with x = reference sentence, y = hypothesis sentence; the words on it
  join one set shared by all pairs, and the overlap is the size of that set;
* f = 2 * (p * r) / (p + r + 1e-8), and an empty hypothesis or reference (no sentence) scores 0.0;
* the package backtracks recursively, so a pair whose backtrack is longer than the interpreter's remaining
  recursion budget raises RecursionError, which LongBench turns into 0.0 (see MAX_RECON_STEPS).

How it is fast (docs/scoring.md has the details): the LCS rows of one reference sentence against ALL
hypothesis sentences come from the bit-parallel LCS recurrence (Allison-Dix / Hyyrö) on one Python int holding
every hypothesis sentence side by side, with a zero guard bit between them to stop carries. Bit j-1 of row i
is set exactly when table[i][j] == table[i][j-1], which is all the backtrack needs: a run of left moves ends
at the highest bit below j that is a match or an increase, and a run of up moves always ends at the nearest
match in that column. So a backtrack costs a few big-int operations per LCS word instead of one Python call
per cell. Pairs that cannot add a new word to the set (and cannot hit the recursion quirk) are skipped.
"""

from collections.abc import Sequence

# The longest backtrack (number of moves) that LongBench's eval.py survives on CPython 3.11 with the default
# recursion limit of 1000: one more and `_recon` raises RecursionError, and the sample scores 0.0. Measured by
# running the official eval.py on a gov_report line whose single pair needs exactly k moves: k = 990 scores,
# k = 991 gives 0.0. (eval.py's stack below `_recon` is 9 frames: module, scorer, rouge_score, get_scores,
# _get_avg_scores, the metric lambda, rouge_l_summary_level, _union_lcs, _recon_lcs; the 990 moves take 991
# `_recon` frames, 1000 in all.)
MAX_RECON_STEPS = 990
# rouge_zh_score calls rouge_score, one frame deeper: one move less (measured the same way on a vcsum line:
# k = 989 scores, k = 990 gives 0.0).
MAX_RECON_STEPS_ZH = MAX_RECON_STEPS - 1


def sentence_words(text: str) -> list[list[str]]:
    """The package's sentences, each as its list of words."""
    return [part.split() or [""] for part in text.split(".") if part]


def rouge_l_f(hypothesis: str, reference: str, max_recon_steps: int = MAX_RECON_STEPS) -> float:
    """LongBench's rouge_score(hypothesis, reference), called with room for `max_recon_steps` backtrack
    moves."""
    hyp = sentence_words(hypothesis)
    ref = sentence_words(reference)
    if not hyp or not ref:
        return 0.0  # the package raises ValueError on an empty side
    overlap = union_lcs_size(ref, hyp, max_recon_steps)
    if overlap is None:
        return 0.0
    recall = overlap / len({word for words in ref for word in words})
    precision = overlap / len({word for words in hyp for word in words})
    return 2.0 * ((precision * recall) / (precision + recall + 1e-8))


class _Hypothesis:
    """Hypothesis sentences laid side by side in one bit-vector, each followed by a zero guard bit."""

    def __init__(self, sentences: Sequence[list[str]]) -> None:
        self.sentences = sentences
        self.offsets: list[int] = []
        self.word_sets = [set(words) for words in sentences]
        # Per sentence: word -> bits j where words[j] == word (for the backtrack).
        self.local_masks: list[dict[str, int]] = []
        # Across all sentences: word -> bits at offset + j (for the row recurrence).
        self.masks: dict[str, int] = {}
        offset = 0
        guards = 0
        for words in sentences:
            local = _position_masks(words)
            for word, bits in local.items():
                self.masks[word] = self.masks.get(word, 0) | (bits << offset)
            self.local_masks.append(local)
            self.offsets.append(offset)
            offset += len(words)
            guards |= 1 << offset
            offset += 1
        self.ones = ((1 << offset) - 1) ^ guards
        self.longest = max(len(words) for words in sentences)

    def rows(self, x: Sequence[str]) -> list[int]:
        """Bit-parallel LCS rows of x against every sentence: bit j-1 of a sentence's slice of rows[i] is set
        iff table[i][j] == table[i][j-1]."""
        row = self.ones
        rows = [row]
        for word in x:
            matches = row & self.masks.get(word, 0)
            if matches:
                # A carry out of a sentence lands in its guard bit and is cleared: sentences stay independent.
                row = ((row + matches) | (row ^ matches)) & self.ones
            rows.append(row)
        return rows


def union_lcs_size(ref: Sequence[list[str]], hyp: Sequence[list[str]], max_recon_steps: int) -> int | None:
    """Size of the union of backtracked LCS words over all pairs, or None where the package would recurse too
    deep."""
    hypothesis = _Hypothesis(hyp)
    union: set[str] = set()
    for x in ref:
        x_set = set(x)
        fresh = x_set - union
        # No fresh word and no pair long enough to recurse too deep: this sentence cannot change anything.
        if not fresh and len(x) + hypothesis.longest - 1 <= max_recon_steps:
            continue
        rows = hypothesis.rows(x)
        x_masks = _position_masks(x)
        for k, y in enumerate(hypothesis.sentences):
            y_set = hypothesis.word_sets[k]
            if len(x) + len(y) - 1 <= max_recon_steps and fresh.isdisjoint(y_set):
                continue  # every LCS word is already in the union, and the backtrack is short enough
            if x_set.isdisjoint(y_set):
                steps = len(y)  # an all-zero table: the backtrack walks left to column 0
            else:
                shift = hypothesis.offsets[k]
                steps = _backtrack(x, y, rows, shift, x_masks, hypothesis.local_masks[k], union)
            if steps > max_recon_steps:
                return None
    return len(union)


def _position_masks(words: Sequence[str]) -> dict[str, int]:
    """word -> bits i where words[i] == word."""
    masks: dict[str, int] = {}
    for i, word in enumerate(words):
        masks[word] = masks.get(word, 0) | (1 << i)
    return masks


def _backtrack(
    x: Sequence[str],
    y: Sequence[str],
    rows: Sequence[int],
    shift: int,
    x_masks: dict[str, int],
    y_masks: dict[str, int],
    union: set[str],
) -> int:
    """Follow the package's backtrack from (len(x), len(y)), add the matched words to `union`, and return the
    number of moves (the recursion depth it needs, less one).

    Row i of the LCS table of x and y is `rows[i] >> shift`, in its low len(y) bits (higher bits belong to
    other sentences and are masked off).
    """
    i, j = len(x), len(y)
    matched = 0
    while i and j:
        word = x[i - 1]
        below = (1 << j) - 1
        # Bits where table[i][col+1] > table[i][col]: there a left move would lose LCS length.
        increases = below & ~(rows[i] >> shift)
        stop = increases | (y_masks.get(word, 0) & below)
        if not stop:
            j = 0  # nothing stops the left run before column 0
            break
        j = stop.bit_length()  # left run: the highest column where a match or an increase stops it
        if y[j - 1] != word:
            # No match but an increase: the cell above is larger. Going up keeps table[i][j] constant while
            # table[i][j-1] stays smaller, so the run of up moves ends exactly at the nearest row above whose
            # word equals y[j-1] (one exists because table[i][j] >= 1 there).
            word = y[j - 1]
            i = (x_masks[word] & ((1 << (i - 1)) - 1)).bit_length()
        union.add(word)
        matched += 1
        i -= 1
        j -= 1
    return (len(x) - i) + (len(y) - j) - matched
