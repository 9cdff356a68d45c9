"""BLEU-1..4, ROUGE-L and CIDEr-D over tokenized captions, computed as pycocoevalcap computes them.

Each function takes, per image, one candidate's tokens and its references' tokens (``ptb_tokenize`` gives both).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

Tokens = Sequence[str]

# pycocoevalcap's BleuScorer keeps a zero match count from zeroing the product (tiny) and a zero guess count from
# dividing by zero (small); both move the score by far less than 1e-9.
_TINY = 1e-15
_SMALL = 1e-9
ROUGE_BETA = 1.2  # pycocoevalcap's Rouge: recall weighs 1.2**2 times precision in the F-measure
CIDER_SIGMA = 6.0  # pycocoevalcap's Cider: the length penalty's Gaussian width, in words


def ngrams(tokens: Tokens, n: int) -> Counter[tuple[str, ...]]:
    """Counts of every 1- to n-gram of ``tokens``."""
    counts: Counter[tuple[str, ...]] = Counter()
    for k in range(1, n + 1):
        counts.update(tuple(tokens[i : i + k]) for i in range(len(tokens) - k + 1))
    return counts


def bleu(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n as pycocoevalcap's ``Bleu`` gives it: clipped n-gram matches and guesses summed over all
    images before the precisions are taken; each image's reference length is the one closest to its candidate's
    (the shorter on a tie), and the brevity penalty compares the summed lengths ("closest")."""
    correct = [0] * n
    guesses = [0] * n
    candidate_length = reference_length = 0
    for candidate, refs in zip(candidates, references, strict=True):
        most: dict[tuple[str, ...], int] = {}  # each n-gram's count in the reference that has most of it
        for ref in refs:
            for gram, count in ngrams(ref, n).items():
                most[gram] = max(most.get(gram, 0), count)
        for gram, count in ngrams(candidate, n).items():
            correct[len(gram) - 1] += min(most.get(gram, 0), count)
        for k in range(n):
            guesses[k] += max(0, len(candidate) - k)
        candidate_length += len(candidate)
        reference_length += min((abs(len(ref) - len(candidate)), len(ref)) for ref in refs)[1]
    scores = []
    product = 1.0
    for k in range(n):
        product *= (correct[k] + _TINY) / (guesses[k] + _SMALL)
        scores.append(product ** (1 / (k + 1)))  # the geometric mean of the first k+1 precisions
    ratio = (candidate_length + _TINY) / (reference_length + _SMALL)
    if ratio < 1:
        scores = [score * math.exp(1 - 1 / ratio) for score in scores]
    return scores


def rouge_l(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> float:
    """ROUGE-L as pycocoevalcap's ``Rouge`` gives it: per image, the longest common subsequence's best precision
    and best recall over the references (each maximised on its own), combined as F with beta 1.2; then the mean."""
    total = 0.0
    for candidate, refs in zip(candidates, references, strict=True):
        # pycocoevalcap splits on single spaces, so an empty caption is one empty token, not none.
        candidate = list(candidate) or [""]
        precision = recall = 0.0
        for ref in refs:
            ref = list(ref) or [""]
            common = _lcs_length(candidate, ref)
            precision = max(precision, common / len(candidate))
            recall = max(recall, common / len(ref))
        if precision and recall:
            total += (1 + ROUGE_BETA**2) * precision * recall / (recall + ROUGE_BETA**2 * precision)
    return total / len(candidates)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """The length of the longest common subsequence of two token lists (one row of the table at a time)."""
    previous = [0] * (len(b) + 1)
    for token in a:
        row = [0]
        for j, other in enumerate(b):
            row.append(previous[j] + 1 if token == other else max(previous[j + 1], row[j]))
        previous = row
    return previous[-1]


def cider_d(
    candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]], n: int = 4, sigma: float = CIDER_SIGMA
) -> float:
    """CIDEr-D as pycocoevalcap's ``Cider`` gives it: TF-IDF vectors of 1..n-grams with document frequencies counted
    over the references of the images scored, each candidate n-gram's weight clipped at the reference's, cosine
    similarity times a Gaussian length penalty, averaged over n and over the references, times 10; then the mean."""
    documents: Counter[tuple[str, ...]] = Counter()  # in how many images' references each n-gram appears
    reference_counts = []
    for refs in references:
        counts = [ngrams(ref, n) for ref in refs]
        reference_counts.append(counts)
        documents.update(set().union(*counts))
    log_images = math.log(len(references))

    def vector(counts: Counter[tuple[str, ...]]) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
        weights: list[dict[tuple[str, ...], float]] = [{} for _ in range(n)]
        for gram, count in counts.items():
            # An n-gram absent from every reference counts as seen in one image (pycocoevalcap's max(1, df)).
            weights[len(gram) - 1][gram] = count * (log_images - math.log(max(1.0, documents[gram])))
        norms = [math.sqrt(sum(w * w for w in ws.values())) for ws in weights]
        # pycocoevalcap's "length" counts the bigrams (its n == 1 is the bigram index), one less than the words.
        length = sum(count for gram, count in counts.items() if len(gram) == 2)
        return weights, norms, length

    total = 0.0
    for candidate, refs in zip(candidates, reference_counts, strict=True):
        weights, norms, length = vector(ngrams(candidate, n))
        score = 0.0
        for ref in refs:
            ref_weights, ref_norms, ref_length = vector(ref)
            penalty = math.exp(-((length - ref_length) ** 2) / (2 * sigma**2))
            for k in range(n):
                # Clipping (CIDEr-D): a candidate n-gram counts at most as much as it weighs in the reference.
                ref_k = ref_weights[k]
                dot = sum(min(w, ref_k.get(g, 0.0)) * ref_k.get(g, 0.0) for g, w in weights[k].items())
                if norms[k] and ref_norms[k]:
                    dot /= norms[k] * ref_norms[k]
                score += dot * penalty
        total += score / n / len(refs) * 10.0
    return total / len(candidates)
