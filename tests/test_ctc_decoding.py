"""Joint CTC/LLM decoding: prefix probabilities against brute force, and
the search on a tiny model."""

import itertools
import math
import tempfile

import pytest
import torch

from harmonifuse_sb.ctc_decoding import CTCPrefixScorer, normalize_text
from harmonifuse_sb.lobes import SpeechLM
from harmonifuse_sb.lobes.speech_lm import make_tiny_causal_lm

ALPHABET = "ab "
BLANK = len(ALPHABET)


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


def decode(ids):
    return "".join(TOKENS[i] for i in ids if i != EOS)


@pytest.mark.parametrize("valid", [5, 4])
def test_prefix_and_end_scores_match_brute_force(valid):
    torch.manual_seed(0)
    frames = 5
    logp = torch.randn(1, frames, len(ALPHABET) + 1).log_softmax(-1)
    scorer = CTCPrefixScorer(
        logp,
        torch.tensor([valid]),
        ALPHABET,
        decode,
        EOS,
        ctc_weight=1.0,
        top_k=len(TOKENS),
    )
    full, prefix = brute_force(logp[0, :valid], valid)
    flat = torch.zeros(1, len(TOKENS))  # LLM indifferent: scores are CTC's
    # Each prefix after its parent: the scorer extends states it scored.
    for ids in [(), (0,), (0, 3), (4,), (1,), (1, 2)]:
        scores = scorer(torch.tensor([ids], dtype=torch.long), flat)[0]
        text = normalize_text(decode(ids))
        base = math.log(prefix[text])
        # EOS: log P(output == text) - log psi(text)
        if text in full:
            assert float(scores[EOS]) == pytest.approx(
                math.log(full[text]) - base, abs=1e-4
            )
        for token in range(EOS):
            new = normalize_text(decode((*ids, token)))
            if not new.startswith(text) or new == text:
                continue
            if new not in prefix:  # longer than the frames allow
                assert float(scores[token]) == float("-inf")
                continue
            expected = math.log(prefix[new]) - base
            assert float(scores[token]) == pytest.approx(expected, abs=1e-4), (
                ids,
                token,
            )


def test_tokens_outside_the_alphabet_are_ruled_out():
    logp = torch.zeros(1, 3, len(ALPHABET) + 1).log_softmax(-1)
    tokens = ["a", "!", "<eos>"]
    scorer = CTCPrefixScorer(
        logp,
        torch.tensor([3]),
        ALPHABET,
        lambda ids: "".join(tokens[i] for i in ids if i != 2),
        2,
        ctc_weight=0.5,
        top_k=3,
    )
    scores = scorer(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 3))
    assert scores[0, 1] == float("-inf")
    assert torch.isfinite(scores[0, [0, 2]]).all()


def test_joint_search_follows_ctc_and_stops_on_silence():
    """A random tiny LLM alone writes some tokens; with CTC weight 1 the
    search writes what the CTC posteriors spell, and nothing for frames
    that are all blank."""
    folder = make_tiny_causal_lm(tempfile.mkdtemp(), vocab=["a", "b"])
    slm = SpeechLM(folder, freeze=True)
    tok = slm.tokenizer
    alphabet = "ab "
    target = "a b a"
    frames = 2 * len(target) + 2
    speech = torch.randn(2, 3, slm.causal_lm.config.hidden_size)
    logp = torch.full((2, frames, 4), -12.0)
    for t in range(frames):  # item 0 spells the target, item 1 is silent
        char = target[t // 2] if t // 2 < len(target) and t % 2 == 0 else None
        logp[0, t, alphabet.index(char) if char else 3] = 0.0
        logp[1, t, 3] = 0.0
    logp = logp.log_softmax(-1)
    for beams in (1, 3):
        scorer = CTCPrefixScorer(
            logp,
            torch.tensor([frames, frames]),
            alphabet,
            lambda ids: tok.decode(ids, skip_special_tokens=True),
            slm.eos_id,
            ctc_weight=1.0,
            top_k=len(tok),
            num_beams=beams,
        )
        from transformers import LogitsProcessorList

        ids = slm.generate(
            [slm.prompt_ids(["a"])[0]] * 2,
            speech,
            torch.tensor([3, 3]),
            max_new_tokens=8,
            num_beams=beams,
            logits_processor=LogitsProcessorList([scorer]),
        )
        texts = [normalize_text(t) for t in slm.decode(ids)]
        assert texts == [target, ""], (beams, texts)
