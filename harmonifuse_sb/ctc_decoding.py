"""Joint CTC/attention decoding: the LLM's search, scored by the CTC head.

The hybrid CTC/attention decoding of Watanabe et al. ("Hybrid CTC/Attention
Architecture for End-to-End Speech Recognition", IEEE JSTSP 2017), as ESPnet
and SpeechBrain's ``CTCPrefixScorer`` do it, adapted to an LLM whose tokens
are not the CTC head's labels: the LLM writes tokens (words or sub-words),
the CTC head reads characters (``HarmoniFuse(ctc_alphabet=...)``). At every
step of transformers' ``generate`` (greedy or beam search), the ``top_k``
most likely next tokens of each hypothesis are scored by

    (1 - ctc_weight) * log p_LLM(token | prefix)
        + ctc_weight * (log psi(prefix + chars(token)) - log psi(prefix))

where ``psi`` is the CTC prefix probability of a character string (the
probability that the CTC output *begins* with it), and the end of sentence
by the CTC probability of the whole string, ``log p_CTC(prefix)``. Summed
over a hypothesis, the CTC terms add up to its CTC log-probability, so the
search maximises the usual joint score. The other tokens are ruled out.

Why: the LLM alone may write fluent text that the audio does not hold (a
from-scratch LLM first learns the grammar and only later to read the
speech; on silence or noise it writes a sentence anyway); the CTC head
is acoustically grounded. On audio without speech, CTC gives the empty
string the highest probability, so the joint search ends at once: an empty
transcript.

Characters outside the CTC alphabet (after lower-casing and collapsing
white space) cannot be produced by CTC: tokens that write them are ruled
out, and so are tokens that add nothing CTC reads (a second space), which
would otherwise cost nothing and could fill a hypothesis.

Authors
 * HarmoniFuse-SB developers 2026
"""

import re

import torch
from transformers import LogitsProcessor

NEG_INF = float("-inf")


def normalize_text(text):
    """The character string CTC scores for a (partial) hypothesis: lower
    case, white space runs as one space, none at the start. A trailing
    space stays: it is the word boundary the next token continues.

    Example
    -------
    >>> normalize_text("  The  Cat  ")
    'the cat '
    """
    return re.sub(r"\s+", " ", text.lower()).lstrip()


class CTCPrefixScorer(LogitsProcessor):
    """A transformers ``LogitsProcessor`` for joint CTC/LLM decoding.

    Arguments
    ---------
    ctc_logp : torch.Tensor
        CTC log-probabilities over ``alphabet`` + blank (last index), shape
        (B, T, C+1).
    ctc_lens : torch.Tensor
        Valid frames of each item, shape (B,).
    alphabet : str
        The CTC head's characters, in index order.
    decode : callable
        Maps a list of token ids to text (the tokenizer's ``decode``); a
        token's characters are what it adds to its prefix's text.
    eos_id : int
        The LLM's end-of-sequence token.
    ctc_weight : float
        Weight of the CTC score, in [0, 1].
    top_k : int
        Tokens per hypothesis and step that get a CTC score.
    num_beams : int
        Hypotheses per item (rows ``b * num_beams ... + num_beams - 1`` of
        ``input_ids`` belong to item ``b``, as in transformers).

    Example
    -------
    >>> alphabet = "ab "
    >>> # 4 frames that spell "ab" (blank = index 3)
    >>> logp = torch.full((1, 4, 4), -9.0)
    >>> for t, c in enumerate([0, 3, 1, 3]):
    ...     logp[0, t, c] = 0.0
    >>> scorer = CTCPrefixScorer(
    ...     logp.log_softmax(-1), torch.tensor([4]), alphabet,
    ...     decode=lambda ids: "".join(["a", "b", " a", ""][i] for i in ids),
    ...     eos_id=3, ctc_weight=1.0, top_k=4)
    >>> first = scorer(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 4))
    >>> int(first.argmax())  # "a"
    0
    >>> second = scorer(torch.tensor([[0]]), torch.zeros(1, 4))
    >>> int(second.argmax())  # "b"
    1
    >>> third = scorer(torch.tensor([[0, 1]]), torch.zeros(1, 4))
    >>> int(third.argmax())  # end of sentence
    3
    """

    def __init__(
        self,
        ctc_logp,
        ctc_lens,
        alphabet,
        decode,
        eos_id,
        ctc_weight=0.5,
        top_k=10,
        num_beams=1,
    ):
        if not 0.0 <= ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight={ctc_weight} is not in [0, 1].")
        self.ctc_weight = ctc_weight
        self.top_k = top_k
        self.num_beams = num_beams
        self.alphabet = alphabet
        self.index = {c: i for i, c in enumerate(alphabet)}
        self.blank = len(alphabet)
        self.decode = decode
        self.eos_id = eos_id
        batch, frames, _ = ctc_logp.shape
        # Past an item's last frame: blank with probability 1, so every
        # state carries its probability to the common last frame.
        valid = torch.arange(frames)[None, :] < ctc_lens.to("cpu")[:, None]
        logp = ctc_logp.detach().float().cpu()
        logp = torch.where(
            valid[..., None], logp, torch.full_like(logp, NEG_INF)
        )
        logp[..., self.blank] = torch.where(
            valid,
            logp[..., self.blank],
            torch.zeros_like(valid, dtype=torch.float),
        )
        self.logp = logp  # (B, T, C+1)
        # State of the empty prefix: r_n = -inf, r_b = cumulative blanks.
        empty_b = logp[..., self.blank].cumsum(dim=1)  # (B, T)
        self.states = {
            (b, ()): (
                torch.full((frames,), NEG_INF),
                empty_b[b],
                0.0,  # log psi(empty) = log 1
                "",
            )
            for b in range(batch)
        }

    def _chars(self, prefix_text, token_id, ids):
        """Characters a token adds to a prefix; None if CTC cannot write
        them.
        """
        if token_id == self.eos_id:
            return None
        text = normalize_text(self.decode(list(ids) + [token_id]))
        if not text.startswith(prefix_text):
            return None
        new = text[len(prefix_text) :]
        if any(c not in self.index for c in new):
            return None
        return new

    def __call__(self, input_ids, scores):
        """Re-scores the next-token scores of every hypothesis.

        Arguments
        ---------
        input_ids : torch.Tensor
            Tokens generated so far, shape (B * num_beams, L).
        scores : torch.Tensor
            Next-token scores (logits or log-probabilities), shape
            (B * num_beams, V).

        Returns
        -------
        torch.Tensor
            Joint scores, shape (B * num_beams, V); -inf outside each
            hypothesis's ``top_k``.
        """
        lm_logp = scores.float().log_softmax(dim=-1)
        out = torch.full_like(lm_logp, NEG_INF)
        top = lm_logp.topk(min(self.top_k, lm_logp.shape[-1]), dim=-1).indices
        rows, jobs = input_ids.tolist(), []
        for row, ids in enumerate(rows):
            item = row // self.num_beams
            key = (item, tuple(ids))
            if key not in self.states:  # a finished row (padding after EOS)
                out[row] = lm_logp[row]
                continue
            r_n, r_b, psi, text = self.states[key]
            for token in top[row].tolist():
                if token == self.eos_id:
                    end = torch.logaddexp(r_n[-1], r_b[-1]).item()
                    out[row, token] = self._joint(
                        lm_logp[row, token], end - psi
                    )
                    continue
                chars = self._chars(text, token, ids)
                if chars:  # None or "": nothing CTC can read
                    jobs.append((row, item, ids, token, chars))
        if jobs:
            self._extend(jobs, lm_logp, out)
        return out

    def _joint(self, lm, ctc):
        return (1 - self.ctc_weight) * float(lm) + self.ctc_weight * ctc

    def _extend(self, jobs, lm_logp, out):
        """CTC prefix scores of all (hypothesis, token) extensions at once.

        Forward recursion over time, vectorised over the extensions and
        their new characters: ``n[j]`` is the probability of having
        emitted the first j+1 new characters with the last frame on
        character j, ``b[j]`` the same ending in a blank.
        """
        n_jobs = len(jobs)
        width = max(len(chars) for *_, chars in jobs)
        frames = self.logp.shape[1]
        parents = [self.states[(item, tuple(ids))] for _, item, ids, *_ in jobs]
        parent_n = torch.stack([state[0] for state in parents])  # (N, T)
        parent_b = torch.stack([state[1] for state in parents])
        parent_psi = torch.tensor([state[2] for state in parents])
        n_chars = torch.tensor([len(chars) for *_, chars in jobs])
        labels, same = [], []
        for (*_, chars), (*_, text) in zip(jobs, parents):
            pad = width - len(chars)
            labels.append([self.index[c] for c in chars] + [self.blank] * pad)
            # Whether character j follows the same character (then a blank
            # must come between them)
            previous = (text[-1:] or None, *chars[:-1])
            same.append([c == p for c, p in zip(chars, previous)] + [0] * pad)
        labels = torch.tensor(labels)  # (N, J)
        same = torch.tensor(same, dtype=torch.bool)
        items = torch.tensor([item for _, item, *_ in jobs])
        # Only the needed log-probabilities, (N, T, J) and (N, T)
        x = self.logp[
            items[:, None, None],
            torch.arange(frames)[None, :, None],
            labels[:, None, :],
        ]
        x_blank = self.logp[items, :, self.blank]
        n = torch.full((n_jobs, width), NEG_INF)
        b = torch.full((n_jobs, width), NEG_INF)
        psi = torch.full((n_jobs, width), NEG_INF)
        history_n, history_b = [], []
        # The parent's mass before frame 0 exists only for the empty prefix.
        empty = torch.tensor([len(ids) == 0 for _, _, ids, *_ in jobs])
        start = torch.where(empty, 0.0, NEG_INF)
        for t in range(frames):
            if t == 0:
                prev_parent = start  # r_b(empty) before the first frame
                prev_parent_n = torch.full((n_jobs,), NEG_INF)
            else:
                prev_parent = parent_b[:, t - 1]
                prev_parent_n = parent_n[:, t - 1]
            # Mass entering character j at frame t: from the previous
            # state (the parent for j = 0) ending in a blank, or in a
            # different character.
            before_b = torch.cat([prev_parent[:, None], b[:, :-1]], dim=1)
            before_n = torch.cat([prev_parent_n[:, None], n[:, :-1]], dim=1)
            before_n = torch.where(same, NEG_INF, before_n)
            phi = torch.logaddexp(before_b, before_n)  # (N, J)
            enter = phi + x[:, t]
            psi = torch.logaddexp(psi, enter)
            new_b = torch.logaddexp(b, n) + x_blank[:, t, None]
            n = torch.logaddexp(n + x[:, t], enter)
            b = new_b
            history_n.append(n)
            history_b.append(b)
        last = (n_chars - 1)[:, None]
        psi_last = psi.gather(1, last)[:, 0]
        r_n = torch.stack(history_n, dim=1).gather(
            2, last[:, None, :].expand(-1, frames, -1)
        )[..., 0]
        r_b = torch.stack(history_b, dim=1).gather(
            2, last[:, None, :].expand(-1, frames, -1)
        )[..., 0]
        for i, (row, item, ids, token, chars) in enumerate(jobs):
            text = self.states[(item, tuple(ids))][3] + chars
            value = float(psi_last[i])
            self.states[(item, (*ids, token))] = (r_n[i], r_b[i], value, text)
            out[row, token] = self._joint(
                lm_logp[row, token], value - float(parent_psi[i])
            )
