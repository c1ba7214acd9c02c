"""Joint CTC/LLM decoding: prefix probabilities against brute force, the
batched scorer against the per-hypothesis one it replaced, and the search
on a tiny model."""

import itertools
import math
import random
import tempfile

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from harmonifuse_sb.ctc_decoding import (
    CTCPrefixScorer,
    TokenCharacters,
    normalize_text,
)
from harmonifuse_sb.lobes import SpeechLM
from harmonifuse_sb.lobes.speech_lm import make_tiny_causal_lm
from harmonifuse_sb.tokenizer import build_bpe_tokenizer

ALPHABET = "ab "
BLANK = len(ALPHABET)
NEG_INF = float("-inf")


class ReferenceScorer(LogitsProcessor):
    """The scorer before the batched one (harmonifuse_sb 8f7ad87): one state
    per hypothesis on the host, each candidate's characters from the
    tokenizer's ``decode``, the forward recursion over all frames in
    Python. Slow but plainly right: the reference the batched scorer must
    reproduce.
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
        text = normalize_text(self.decode([*ids, token_id]))
        if not text.startswith(prefix_text):
            return None
        new = text[len(prefix_text) :]
        if any(c not in self.index for c in new):
            return None
        return new

    def __call__(self, input_ids, scores):
        """As ``CTCPrefixScorer.__call__``."""
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


def collapse(path):
    out, previous = [], None
    for label in path:
        if label != previous and label != BLANK:
            out.append(ALPHABET[label])
        previous = label
    return "".join(out)


def brute_force(logp, frames):
    """P(output = s) and P(output starts with s) for every output s."""
    full, prefix = {}, {}
    probs = logp.exp()
    for path in itertools.product(range(len(ALPHABET) + 1), repeat=frames):
        p = math.prod(float(probs[t, c]) for t, c in enumerate(path))
        text = collapse(path)
        full[text] = full.get(text, 0.0) + p
        for i in range(len(text) + 1):
            prefix[text[:i]] = prefix.get(text[:i], 0.0) + p
    return full, prefix


TOKENS = ["a", "b", " a", " b", "ab", "<eos>"]
EOS = len(TOKENS) - 1
TABLE = TokenCharacters([*TOKENS[:-1], ""], ALPHABET)


def decode(ids):
    return "".join(TOKENS[i] for i in ids if i != EOS)


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("valid", [5, 4])
def test_prefix_and_end_scores_match_brute_force(valid, cache):
    torch.manual_seed(0)
    frames = 5
    logp = torch.randn(1, frames, len(ALPHABET) + 1).log_softmax(-1)
    full, prefix = brute_force(logp[0, :valid], valid)
    flat = torch.zeros(1, len(TOKENS))  # LLM indifferent: scores are CTC's
    checked = 0
    for path in [(0, 3), (4,), (1, 2)]:
        # A scorer follows one search: each prefix after its parent.
        scorer = CTCPrefixScorer(
            logp,
            torch.tensor([valid]),
            TABLE,
            EOS,
            ctc_weight=1.0,
            top_k=len(TOKENS),
            cache=cache,
        )
        for end in range(len(path) + 1):
            ids = path[:end]
            scores = scorer(torch.tensor([ids], dtype=torch.long), flat)[0]
            text = normalize_text(decode(ids))
            base = math.log(prefix[text])
            # EOS: log P(output == text) - log psi(text)
            if text in full:
                assert float(scores[EOS]) == pytest.approx(
                    math.log(full[text]) - base, abs=1e-4
                )
                checked += 1
            for token in range(EOS):
                new = normalize_text(decode((*ids, token)))
                if not new.startswith(text) or new == text:
                    assert float(scores[token]) == NEG_INF
                    continue
                if new not in prefix:  # longer than the frames allow
                    assert float(scores[token]) == NEG_INF
                    continue
                expected = math.log(prefix[new]) - base
                assert float(scores[token]) == pytest.approx(
                    expected, abs=1e-4
                ), (ids, token)
                checked += 1
    assert checked >= 12


def run_both(logp, lens, tokens, num_beams, top_k, steps, seed, **kwargs):
    """Drives the reference and the batched scorer through the same random
    search (random LLM scores; each row continues a scored candidate of
    its item, now and then an unscored token) and returns the largest
    difference of their finite scores.
    """
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    eos = len(tokens)
    reference = ReferenceScorer(
        logp,
        lens,
        ALPHABET,
        lambda ids: "".join(tokens[i] for i in ids if i != eos),
        eos,
        ctc_weight=0.7,
        top_k=top_k,
        num_beams=num_beams,
    )
    batched = CTCPrefixScorer(
        logp,
        lens,
        TokenCharacters([*tokens, ""], ALPHABET),
        eos,
        ctc_weight=0.7,
        top_k=top_k,
        num_beams=num_beams,
        **kwargs,
    )
    rows = logp.shape[0] * num_beams
    ids = torch.zeros(rows, 0, dtype=torch.long)
    worst = 0.0
    for _ in range(steps):
        scores = torch.randn(rows, eos + 1, generator=generator)
        expected, got = reference(ids, scores), batched(ids, scores)
        assert torch.equal(expected.isinf(), got.isinf())
        finite = expected.isfinite()
        worst = max(worst, float((expected - got)[finite].abs().max()))
        picks = []
        for row in range(rows):
            first = row - row % num_beams
            item_rows = range(first, first + num_beams)
            scored = [
                (r, t)
                for r in item_rows
                for t in range(eos + 1)
                if expected[r, t].isfinite()
            ]
            if scored and rng.random() > 0.1:
                parent, token = rng.choice(scored)
            else:
                parent, token = rng.choice(item_rows), rng.randrange(eos + 1)
            picks.append([*ids[parent].tolist(), token])
        ids = torch.tensor(picks)
    return worst


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_scores_equal_the_reference(num_beams, cache):
    """Random posteriors and lengths, tokens of 1 to 3 characters with
    repeats, spaces and a character CTC cannot write: every score of
    every step as the per-hypothesis scorer gives it."""
    tokens = ["a", "b", " a", " b", "ab", "ba ", "bb", " ", "!", "aab"]
    worst = 0.0
    for seed in range(12):
        generator = torch.Generator().manual_seed(seed)
        logp = (
            3 * torch.randn(3, 9, BLANK + 1, generator=generator)
        ).log_softmax(-1)
        lens = torch.randint(1, 10, (3,), generator=generator)
        worst = max(
            worst,
            run_both(logp, lens, tokens, num_beams, 6, 6, seed, cache=cache),
        )
    assert worst < 1e-4


def test_token_characters_match_decoding_in_context():
    """The table (each token decoded once) gives what decoding the whole
    hypothesis gives, for word and sub-word BPE tokenizers."""
    texts = ["the cat's hat", "a dog ran", "THE  Cat sat", "x-ray"]
    alphabet = "abcdefghijklmnopqrstuvwxyz' "
    for vocab_size in (None, 270):
        tok = build_bpe_tokenizer(texts, vocab_size)
        table = TokenCharacters.from_tokenizer(tok, alphabet)
        reference = ReferenceScorer(
            torch.zeros(1, 1, len(alphabet) + 1),
            torch.tensor([1]),
            alphabet,
            lambda ids, tok=tok: tok.decode(ids, skip_special_tokens=True),
            tok.eos_token_id,
        )
        rng = random.Random(0)
        compared = 0
        for text in texts:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            for end in range(len(ids)):
                prefix = normalize_text(tok.decode(ids[:end]))
                form = int(prefix in ("",) or prefix.endswith(" "))
                for token in [ids[end], *rng.sample(range(len(tok)), 20)]:
                    chars = reference._chars(prefix, token, ids[:end])
                    length = int(table.lengths[token, form])
                    got = "".join(
                        alphabet[i] for i in table.labels[token, form, :length]
                    )
                    assert got == (chars or ""), (prefix, token, chars, got)
                    compared += 1
        assert compared > 100


def test_tokens_outside_the_alphabet_are_ruled_out():
    logp = torch.zeros(1, 3, len(ALPHABET) + 1).log_softmax(-1)
    scorer = CTCPrefixScorer(
        logp,
        torch.tensor([3]),
        TokenCharacters(["a", "!", ""], ALPHABET),
        2,
        ctc_weight=0.5,
        top_k=5,
    )
    # An LM head wider than the tokenizer (as Qwen2.5's): the extra ids
    # (in the top 5) write nothing CTC reads
    scores = scorer(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 5))
    assert scores[0, 1] == NEG_INF
    assert torch.isfinite(scores[0, [0, 2]]).all()
    assert (scores[0, 3:] == NEG_INF).all()


def test_bad_input_names_the_culprit():
    logp = torch.zeros(1, 3, len(ALPHABET) + 1).log_softmax(-1)
    with pytest.raises(ValueError, match="needs 3"):
        CTCPrefixScorer(
            logp, torch.tensor([3]), TokenCharacters(["a"], "ab"), 0
        )
    with pytest.raises(ValueError, match=r"ctc_weight=1.5"):
        CTCPrefixScorer(logp, torch.tensor([3]), TABLE, EOS, ctc_weight=1.5)
    scorer = CTCPrefixScorer(logp, torch.tensor([3]), TABLE, EOS, num_beams=2)
    with pytest.raises(ValueError, match="num_beams=2"):
        scorer(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 6))
    scorer(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 6))
    with pytest.raises(RuntimeError, match="new scorer"):
        scorer(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 6))


def tiny_search_setup():
    folder = make_tiny_causal_lm(tempfile.mkdtemp(), vocab=["a", "b"])
    slm = SpeechLM(folder, freeze=True)
    speech = torch.randn(2, 3, slm.causal_lm.config.hidden_size)
    return slm, speech


def search(slm, speech, scorer, beams):
    ids = slm.generate(
        [slm.prompt_ids(["a"])[0]] * 2,
        speech,
        torch.tensor([3, 3]),
        max_new_tokens=8,
        num_beams=beams,
        logits_processor=LogitsProcessorList([scorer]),
    )
    return [normalize_text(t) for t in slm.decode(ids)]


def test_joint_search_follows_ctc_and_stops_on_silence():
    """A random tiny LLM alone writes some tokens; with CTC weight 1 the
    search writes what the CTC posteriors spell, and nothing for frames
    that are all blank."""
    slm, speech = tiny_search_setup()
    table = TokenCharacters.from_tokenizer(slm.tokenizer, ALPHABET)
    target = "a b a"
    frames = 2 * len(target) + 2
    logp = torch.full((2, frames, 4), -12.0)
    for t in range(frames):  # item 0 spells the target, item 1 is silent
        char = target[t // 2] if t // 2 < len(target) and t % 2 == 0 else None
        logp[0, t, ALPHABET.index(char) if char else 3] = 0.0
        logp[1, t, 3] = 0.0
    logp = logp.log_softmax(-1)
    for beams in (1, 3):
        scorer = CTCPrefixScorer(
            logp,
            torch.tensor([frames, frames]),
            table,
            slm.eos_id,
            ctc_weight=1.0,
            top_k=len(slm.tokenizer),
            num_beams=beams,
        )
        assert search(slm, speech, scorer, beams) == [target, ""], beams


@pytest.mark.parametrize("beams", [1, 4])
def test_joint_search_writes_what_the_reference_writes(beams):
    """Random posteriors, a random LLM, weight 0.5: the searches driven by
    the two scorers choose the same transcripts."""
    slm, speech = tiny_search_setup()
    tok = slm.tokenizer
    table = TokenCharacters.from_tokenizer(tok, ALPHABET)
    texts = set()
    for seed in range(4):
        generator = torch.Generator().manual_seed(seed)
        logp = (2 * torch.randn(2, 10, 4, generator=generator)).log_softmax(-1)
        lens = torch.tensor([10, 7])
        args = dict(ctc_weight=0.5, top_k=len(tok), num_beams=beams)
        expected = search(
            slm,
            speech,
            ReferenceScorer(
                logp,
                lens,
                ALPHABET,
                lambda ids: tok.decode(ids, skip_special_tokens=True),
                slm.eos_id,
                **args,
            ),
            beams,
        )
        got = search(
            slm,
            speech,
            CTCPrefixScorer(logp, lens, table, slm.eos_id, **args),
            beams,
        )
        assert got == expected, (seed, got, expected)
        texts.update(got)
    assert len(texts) >= 3  # the searches did write different things
