"""Length-aware decoding: a token cap per utterance and a repetition guard.

A fixed ``max_new_tokens`` lets a short utterance that loops under greedy
decoding gain a hundred insertions. Here each utterance gets a cap from its
duration, as SpeechBrain's speech-LLM ASR recipe bounds its output by the
audio's length (``max_decode_ratio``), with the fixed cap as the upper
bound::

    cap_i = min(max_new_tokens, ceil(tokens_per_second * seconds_i) + margin)

``tokens_per_second`` comes from the YAML or is measured on the training
transcripts (:func:`measure_tokens_per_second`: a high quantile, so that
fast speakers keep their words). The repetition guard ends a hypothesis
whose last tokens are one n-gram repeated ``max_repeats`` times in a row
(a decoding loop) and :func:`trim_loop` keeps one copy of it. Why not
transformers' ``no_repeat_ngram_size`` or ``repetition_penalty``: both act
on every step of every hypothesis, so they also change correct transcripts
(a word such as "the" recurs in any long sentence; a 3-gram such as "of the
same" may recur in a long one), and a model kept from repeating its loop
tends to emit other wrong tokens instead of stopping. The guard only acts
once a loop has happened, and then stops it.

Authors
 * HarmoniFuse-SB developers 2026
"""

import random

import torch
from transformers import LogitsProcessor

NEG_INF = float("-inf")


def token_caps(durations, tokens_per_second, margin, max_new_tokens):
    """The number of transcript tokens each utterance may get (EOS aside).

    Arguments
    ---------
    durations : torch.Tensor
        (B,) durations of the utterances in seconds.
    tokens_per_second : float
        Transcript tokens per second of audio (EOS not counted).
    margin : int
        Tokens added to every cap (the EOS, short utterances).
    max_new_tokens : int
        Upper bound of every cap.

    Returns
    -------
    torch.Tensor
        (B,) long caps, each in [1, max_new_tokens].

    Example
    -------
    >>> token_caps(torch.tensor([1.0, 2.5, 60.0]), 4.0, 6, 160)
    tensor([ 10,  16, 160])
    """
    caps = torch.ceil(durations.double().cpu() * tokens_per_second) + margin
    return caps.clamp(1, max_new_tokens).long()


def measure_tokens_per_second(
    texts, durations, tokenize, quantile=0.99, max_items=5000, seed=1234
):
    """Transcript tokens per second of audio, a high quantile over a corpus.

    The quantile of the per-utterance rates, not the mean: a cap at the mean
    rate would cut the transcripts of every faster speaker.

    Arguments
    ---------
    texts : list of str
        Transcripts.
    durations : list of float
        Their audio durations in seconds.
    tokenize : callable
        list of str -> list of token id lists (``SpeechLM.tokenize``).
    quantile : float
        Of the per-utterance rates, in (0, 1].
    max_items : int
        At most this many utterances, a seeded random draw (960 h of
        LibriSpeech holds 281,241).
    seed : int
        Seed of the draw.

    Returns
    -------
    float
        Tokens per second.

    Raises
    ------
    ValueError
        No utterance, lists of different lengths, or a duration <= 0.

    Example
    -------
    >>> words = lambda texts: [t.split() for t in texts]
    >>> measure_tokens_per_second(
    ...     ["a b", "a b c d", "a"], [1.0, 1.0, 1.0], words, quantile=1.0)
    4.0
    """
    if not texts or len(texts) != len(durations):
        raise ValueError(
            f"measure_tokens_per_second: {len(texts)} transcripts and "
            f"{len(durations)} durations; give one duration per transcript."
        )
    index = list(range(len(texts)))
    if len(index) > max_items:
        index = sorted(random.Random(seed).sample(index, max_items))
    bad = [i for i in index if not float(durations[i]) > 0]
    if bad:
        raise ValueError(
            f"measure_tokens_per_second: utterance {bad[0]} has duration "
            f"{durations[bad[0]]!r}; durations must be > 0 seconds."
        )
    lengths = [len(ids) for ids in tokenize([texts[i] for i in index])]
    rates = torch.tensor(
        [n / float(durations[i]) for n, i in zip(lengths, index)],
        dtype=torch.float64,
    )
    return float(torch.quantile(rates, quantile))


def loop_length(ids, max_ngram, max_repeats):
    """Length of the n-gram that the end of ``ids`` repeats, if any.

    Arguments
    ---------
    ids : list of int
        A token sequence.
    max_ngram : int
        Longest n-gram looked for.
    max_repeats : int
        Copies in a row that make a loop.

    Returns
    -------
    int
        The shortest n such that the last ``n * max_repeats`` tokens are one
        n-gram repeated, or 0.

    Example
    -------
    >>> loop_length([5, 1, 2, 1, 2, 1, 2], 4, 3)
    2
    >>> loop_length([5, 1, 2, 1, 2], 4, 3)
    0
    """
    for n in range(1, max_ngram + 1):
        tail = ids[len(ids) - n * max_repeats :]
        if len(tail) == n * max_repeats and tail == tail[-n:] * max_repeats:
            return n
    return 0


def trim_loop(ids, max_ngram, max_repeats):
    """Keeps one copy of a loop at the end of ``ids`` (the guard's stop).

    Arguments
    ---------
    ids : list of int
        A decoded token sequence, without EOS.
    max_ngram : int
        Longest n-gram looked for.
    max_repeats : int
        Copies in a row that make a loop.

    Returns
    -------
    list of int

    Example
    -------
    >>> trim_loop([5, 1, 2, 1, 2, 1, 2], 4, 3)
    [5, 1, 2]
    >>> trim_loop([5, 1, 2], 4, 3)
    [5, 1, 2]
    """
    n = loop_length(ids, max_ngram, max_repeats)
    return ids[: len(ids) - n * (max_repeats - 1)] if n else ids


class LengthLoopGuard(LogitsProcessor):
    """Forces EOS for a hypothesis at its utterance's cap or in a loop.

    A transformers ``LogitsProcessor``: ``generate`` stops the batch at the
    longest cap (its ``max_new_tokens``); this ends each row at its own. With
    ``inputs_embeds``, ``input_ids`` holds the generated tokens only.

    Arguments
    ---------
    caps : torch.Tensor
        (B,) transcript tokens allowed per utterance (:func:`token_caps`);
        the next one must be EOS.
    eos_id : int
        The token that ends a transcript.
    num_beams : int
        Hypotheses per utterance (rows ``b * num_beams ...`` are item b's).
    max_ngram : int
        Longest looping n-gram looked for (0: no repetition guard).
    max_repeats : int
        Copies in a row that make a loop.

    Example
    -------
    >>> guard = LengthLoopGuard(torch.tensor([2, 9]), eos_id=0, max_ngram=2,
    ...                         max_repeats=3)
    >>> scores = torch.tensor([[0.0, 0, 0, 2, 0]]).repeat(2, 1)
    >>> guard(torch.tensor([[3, 4], [4, 3]]), scores).argmax(-1)  # cap 2
    tensor([0, 3])
    >>> guard(torch.tensor([[3, 4, 3], [4, 4, 4]]), scores).argmax(-1)  # loop
    tensor([0, 0])
    """

    def __init__(self, caps, eos_id, num_beams=1, max_ngram=0, max_repeats=4):
        if max_ngram and max_repeats < 2:
            raise ValueError(
                f"LengthLoopGuard: max_repeats must be >= 2, got "
                f"{max_repeats} (a loop is a repeated n-gram)."
            )
        self.caps = caps.long().repeat_interleave(num_beams)  # (B * beams,)
        self.eos_id = eos_id
        self.max_ngram = max_ngram
        self.max_repeats = max_repeats

    def __call__(self, input_ids, scores):
        """Re-scores the next-token scores of every hypothesis.

        Arguments
        ---------
        input_ids : torch.Tensor
            Tokens generated so far, (B * num_beams, L).
        scores : torch.Tensor
            Next-token scores, (B * num_beams, V).

        Returns
        -------
        torch.Tensor
            ``scores``, with only EOS allowed in the rows that must end.
        """
        rows, length = input_ids.shape
        stop = self.caps.to(input_ids.device) <= length  # (rows,)
        for n in range(1, self.max_ngram + 1):
            if n * self.max_repeats > length:
                break
            tail = input_ids[:, length - n * self.max_repeats :]
            tail = tail.view(rows, self.max_repeats, n)
            stop |= (tail == tail[:, -1:]).all(dim=2).all(dim=1)
        if stop.any():
            scores = scores.clone()
            scores[stop] = NEG_INF
            scores[stop, self.eos_id] = 0.0
        return scores
