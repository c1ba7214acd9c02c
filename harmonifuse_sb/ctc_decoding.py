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

How it stays cheap (a token is a whole word of up to ``W`` characters,
not one CTC label as in ESPnet's ``CTCPrefixScoreTH``):

- Each token's characters are looked up once per tokenizer
  (:class:`TokenCharacters`), in two forms: after a letter and after a
  space or at the start (where its leading space vanishes).
- The prefix probability of an extension splits at the frame ``s`` where
  its first character starts: ``psi(g + w) = sum_s phi_g(s) E_w(s)``,
  with ``phi_g`` the parent's forward probabilities (as in ESPnet) and
  ``E_w(s)`` the probability that the frames from ``s`` on begin with
  ``w``, a backward quantity that does not depend on the parent. So the
  scores of a step are one batched product over hypotheses x candidates
  x frames, and ``E`` of a token is computed once per utterance (on a
  CPU, where a cache pays; see ``cache``) however many beams and steps
  propose it.
- Only the hypotheses the search keeps get forward states (hypotheses x
  frames), extended from their parent's when the next step sees them.
- Everything stays on the CTC posteriors' device, in probability space
  (float64, each hypothesis scaled by its own maximum; a probability below
  about 1e-300 of it counts as 0), with no copy to the host.

Authors
 * HarmoniFuse-SB developers 2026
"""

import re
import weakref

import torch
from transformers import LogitsProcessor

NEG_INF = float("-inf")

# Tokenizer -> {alphabet: TokenCharacters}: computed once per tokenizer.
_TABLES = weakref.WeakKeyDictionary()


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


class TokenCharacters:
    """The CTC labels each token adds to a hypothesis, computed once.

    A token's text is what the tokenizer writes for it after other text
    (``pieces``), normalised as :func:`normalize_text` normalises a
    hypothesis. Form 0 follows a character that is not a space; form 1
    follows a space or starts the hypothesis, so its leading space
    vanishes. A form with a character outside ``alphabet``, or with none,
    has length 0: CTC cannot write it.

    Arguments
    ---------
    pieces : list of str
        The text of every token id, as it continues a text.
    alphabet : str
        The CTC head's characters, in index order (blank after them).

    Example
    -------
    >>> table = TokenCharacters(["a", " ab", "!", " "], "ab ")
    >>> table.lengths.tolist()  # (token, form)
    [[1, 1], [3, 2], [0, 0], [1, 0]]
    >>> table.labels[1].tolist()  # " ab" after a letter / after a space
    [[2, 0, 1], [0, 1, 3]]
    """

    def __init__(self, pieces, alphabet):
        self.alphabet = alphabet
        self.blank = len(alphabet)
        index = {c: i for i, c in enumerate(alphabet)}
        forms = []
        for piece in pieces:
            text = re.sub(r"\s+", " ", piece.lower())
            pair = []
            for chars in (text, text[1:] if text[:1] == " " else text):
                ok = chars and all(c in index for c in chars)
                pair.append([index[c] for c in chars] if ok else [])
            forms.append(pair)
        width = max([len(f) for pair in forms for f in pair] + [1])
        # Padding with the blank keeps every gather in range; lengths say
        # what is real.
        self.labels = torch.full((len(pieces), 2, width), self.blank)
        self.lengths = torch.zeros(len(pieces), 2, dtype=torch.long)
        for token, pair in enumerate(forms):
            for form, chars in enumerate(pair):
                self.labels[token, form, : len(chars)] = torch.tensor(
                    chars, dtype=torch.long
                )
                self.lengths[token, form] = len(chars)
        self._on_device = {}

    @classmethod
    def from_tokenizer(cls, tokenizer, alphabet):
        """The table of a transformers tokenizer, built on the first call
        for this tokenizer and alphabet and reused after.

        Each token is decoded after a reference text (the tokens of
        ``"a"``), so a tokenizer that drops the leading space of the first
        token (SentencePiece) still gives the space the token writes
        inside a hypothesis. Special tokens write nothing.

        Arguments
        ---------
        tokenizer : transformers.PreTrainedTokenizerBase
            The LLM's tokenizer.
        alphabet : str
            The CTC head's characters.

        Returns
        -------
        TokenCharacters

        Example
        -------
        >>> from harmonifuse_sb.tokenizer import build_bpe_tokenizer
        >>> tok = build_bpe_tokenizer(["the cat sat"])
        >>> table = TokenCharacters.from_tokenizer(tok, "abcdefghijklmnopqrstuvwxyz ")
        >>> table is TokenCharacters.from_tokenizer(tok, "abcdefghijklmnopqrstuvwxyz ")
        True
        >>> cat = tok(" cat", add_special_tokens=False)["input_ids"][0]
        >>> table.lengths[cat].tolist()
        [4, 3]
        """
        tables = _TABLES.setdefault(tokenizer, {})
        if alphabet not in tables:
            ref = tokenizer("a", add_special_tokens=False)["input_ids"]
            head = tokenizer.decode(ref, skip_special_tokens=True)
            texts = tokenizer.batch_decode(
                [ref + [token] for token in range(len(tokenizer))],
                skip_special_tokens=True,
            )
            pieces = [
                text[len(head) :] if text.startswith(head) else "\0"
                for text in texts
            ]
            tables[alphabet] = cls(pieces, alphabet)
        return tables[alphabet]

    def to(self, device, vocab_size):
        """``labels`` (V, 2, W) and ``lengths`` (V, 2) on ``device``, with
        ids up to ``vocab_size`` (an LM's output layer may be larger than
        its tokenizer: the extra ids write nothing). Cached per device.
        """
        key = (str(device), vocab_size)
        if key not in self._on_device:
            labels, lengths = self.labels, self.lengths
            extra = vocab_size - labels.shape[0]
            if extra > 0:
                labels = torch.cat(
                    [labels, labels.new_full((extra, *labels.shape[1:]), 0)]
                )
                lengths = torch.cat([lengths, lengths.new_zeros(extra, 2)])
            self._on_device[key] = (labels.to(device), lengths.to(device))
        return self._on_device[key]


def label_probs(probs, items, labels):
    """The probabilities of given labels at every frame, time first.

    Arguments
    ---------
    probs : torch.Tensor
        CTC probabilities (B, T, C+1).
    items : torch.Tensor
        The utterance of each sequence (N,).
    labels : torch.Tensor
        Labels of each sequence (N, W), or (N,) for one each.

    Returns
    -------
    torch.Tensor
        (T, N, W) or (T, N): contiguous, so that a frame is one block
        (one row select; indexing the three dimensions at once is several
        times slower on a CPU).

    Example
    -------
    >>> probs = torch.rand(2, 3, 4)
    >>> out = label_probs(probs, torch.tensor([1, 0]), torch.tensor([[2, 3]] * 2))
    >>> out.shape, bool(out[2, 0, 1] == probs[1, 2, 3])
    (torch.Size([3, 2, 2]), True)
    """
    batch, frames, classes = probs.shape
    by_frame = probs.transpose(0, 1).reshape(frames, batch * classes)
    index = items.view(-1, *[1] * (labels.dim() - 1)) * classes + labels
    picked = by_frame.index_select(1, index.reshape(-1))
    return picked.view(frames, *labels.shape)


def start_probs(probs, items, labels, lengths, first_frame=0):
    """``E(s)``: the probability that the frames from ``s`` on begin with
    ``labels``, the first of them starting at frame ``s``.

    Backward over the frames, vectorised over sequences and positions:
    ``n[j]`` is the probability, from character j at frame t, of reaching
    the last character; ``b[j]`` the same from a blank after character j.
    The last character counts when it starts, so its ``n`` is 1. The
    sequences are right-aligned, all ending in the last column, so that no
    column needs a per-sequence test (the columns before a short sequence
    are computed and never read).
    Arguments
    ---------
    probs : torch.Tensor
        CTC probabilities (B, T, C+1), blank last, padded frames blank.
    items : torch.Tensor
        The utterance of each sequence, (N,).
    labels : torch.Tensor
        Label sequences (N, W).
    lengths : torch.Tensor
        Their lengths (N,), at least 1.
    first_frame : int
        ``E`` is computed from this frame on (0 before it).

    Returns
    -------
    torch.Tensor
        (N, T).

    Example
    -------
    >>> probs = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]])  # "a" or blank
    >>> start_probs(probs, torch.tensor([0]), torch.tensor([[0]]),
    ...             torch.tensor([1])).tolist()
    [[0.5, 0.5]]
    """
    (count, width), frames = labels.shape, probs.shape[1]
    blank = probs.shape[2] - 1
    columns = torch.arange(width, device=labels.device)
    begin = width - lengths  # (N,) the column of each first character
    right = labels.gather(1, (columns - begin[:, None]).clamp(min=0))
    # A repeated character needs a blank between its copies.
    differs = (right[:, 1:] != right[:, :-1]).to(probs.dtype)  # (N, W-1)
    x_all = label_probs(probs, items, right)  # (T, N, W)
    blank_all = label_probs(probs, items, torch.full_like(items, blank))[
        ..., None
    ]
    # Two buffers for n, taking turns; the last column stays 1.
    n, n_next = probs.new_zeros(2, count, width)
    n[:, -1], n_next[:, -1] = 1.0, 1.0
    b = probs.new_zeros(count, width - 1)
    first = probs.new_zeros(frames, count)
    for t in range(frames - 1, first_frame - 1, -1):
        stay = x_all[t] * n
        torch.gather(stay, 1, begin[:, None], out=first[t, :, None])
        if t == first_frame:
            break
        # From a blank after character j, or entering character j + 1
        from_blank = b * blank_all[t]
        enter = stay[:, 1:]
        torch.addcmul(
            stay[:, :-1] + from_blank, differs, enter, out=n_next[:, :-1]
        )
        n, n_next = n_next, n
        b = from_blank.add_(enter)
    return first.T.contiguous()


def extend_states(probs, items, r_n, r_b, labels, lengths, parent_last, start):
    """Forward probabilities of each hypothesis extended by its labels.

    ``r[:, t]`` is the state before frame t (``r[:, 0]`` before any
    frame), as in ESPnet's prefix scorer: ``r_n`` ends on the last label,
    ``r_b`` in a blank.

    Arguments
    ---------
    probs : torch.Tensor
        CTC probabilities (B, T, C+1).
    items : torch.Tensor
        The utterance of each hypothesis (R,).
    r_n, r_b : torch.Tensor
        The parents' states (R, T+1).
    labels : torch.Tensor
        Labels added (R, W).
    lengths : torch.Tensor
        Their lengths (R,), at least 1.
    parent_last : torch.Tensor
        The parent's last label, -1 for the empty prefix (R,).
    start : int
        A frame before which no extension can end (each token adds a
        character, so a hypothesis of k tokens needs k frames).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``r_n``, ``r_b`` of the extensions (R, T+1).
    """
    (rows, width), frames = labels.shape, probs.shape[1]
    x = label_probs(probs, items, labels)  # (T, R, W)
    x_blank = label_probs(
        probs, items, torch.full_like(items, probs.shape[2] - 1)
    )
    previous = torch.cat([parent_last[:, None], labels[:, :-1]], dim=1)
    differs = (labels != previous).to(probs.dtype)
    parent_n, parent_b = r_n.T.contiguous(), r_b.T.contiguous()  # (T+1, R)
    n = probs.new_zeros(rows, width)
    b = probs.new_zeros(rows, width)
    history_n = [n] * (start + 1)
    history_b = [b] * (start + 1)
    for t in range(start, frames):
        # Mass entering label j at frame t: from label j-1 (the parent's
        # last for j = 0) or a blank after it.
        into_b = torch.cat([parent_b[t, :, None], b[:, :-1]], dim=1)
        into_n = torch.cat([parent_n[t, :, None], n[:, :-1]], dim=1)
        enter = torch.addcmul(into_b, differs, into_n).mul_(x[t])
        b = (b + n).mul_(x_blank[t, :, None])
        n = torch.addcmul(enter, n, x[t])
        history_n.append(n)
        history_b.append(b)
    last = (lengths - 1)[None, :, None].expand(frames + 1, rows, 1)
    new_n = torch.stack(history_n).gather(2, last)[..., 0].T
    new_b = torch.stack(history_b).gather(2, last)[..., 0].T
    return new_n.contiguous(), new_b.contiguous()


class CTCPrefixScorer(LogitsProcessor):
    """A transformers ``LogitsProcessor`` for joint CTC/LLM decoding,
    batched over hypotheses and candidates on the CTC posteriors' device.

    The scorer follows the search from ``input_ids`` alone: each row's
    parent is the row of the previous step that it continues, and its last
    token one of that row's candidates; a row that continues none (a
    finished row padded with EOS, or one that took a ruled-out token)
    gets the LLM's scores unchanged.

    Arguments
    ---------
    ctc_logp : torch.Tensor
        CTC log-probabilities over the alphabet + blank (last index), shape
        (B, T, C+1).
    ctc_lens : torch.Tensor
        Valid frames of each item, shape (B,).
    characters : TokenCharacters
        Each token's labels (``TokenCharacters.from_tokenizer``).
    eos_id : int
        The LLM's end-of-sequence token.
    ctc_weight : float
        Weight of the CTC score, in [0, 1].
    top_k : int
        Tokens per hypothesis and step that get a CTC score.
    num_beams : int
        Hypotheses per item (rows ``b * num_beams ... + num_beams - 1`` of
        ``input_ids`` belong to item ``b``, as in transformers).
    cache : bool, optional
        Whether ``E`` of each (utterance, token form) is kept once
        computed, so that a step computes it only for the forms no earlier
        step proposed (most of them: the beams of an utterance propose the
        same words again and again). Sizing that work reads one number
        from the device per step, which costs nothing on a CPU; without
        the cache each step computes ``E`` of all its candidates, with
        fixed shapes and no read. None: on a CPU when the cache (B x 2V x
        T float64) fits in ``max_cache_bytes``.
    max_cache_bytes : int
        Largest cache that ``cache=None`` allows.

    Example
    -------
    >>> # 4 frames that spell "ab" (blank = index 3); tokens a, b, " a", EOS
    >>> logp = torch.full((1, 4, 4), -9.0)
    >>> for t, c in enumerate([0, 3, 1, 3]):
    ...     logp[0, t, c] = 0.0
    >>> table = TokenCharacters(["a", "b", " a", ""], "ab ")
    >>> scorer = CTCPrefixScorer(logp.log_softmax(-1), torch.tensor([4]),
    ...     table, eos_id=3, ctc_weight=1.0, top_k=4)
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
        characters,
        eos_id,
        ctc_weight=0.5,
        top_k=10,
        num_beams=1,
        cache=None,
        max_cache_bytes=2**28,
    ):
        if not 0.0 <= ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight={ctc_weight} is not in [0, 1].")
        batch, frames, classes = ctc_logp.shape
        if classes != characters.blank + 1:
            raise ValueError(
                f"The CTC posteriors have {classes} classes, the alphabet "
                f"{characters.alphabet!r} needs {characters.blank + 1} "
                "(its characters and the blank): build TokenCharacters with "
                "the CTC head's alphabet."
            )
        self.ctc_weight = ctc_weight
        self.top_k = top_k
        self.num_beams = num_beams
        self.characters = characters
        self.eos_id = eos_id
        device = ctc_logp.device
        # Past an item's last frame: blank with probability 1, so every
        # state carries its probability to the common last frame.
        valid = (
            torch.arange(frames, device=device)[None, :]
            < ctc_lens.to(device)[:, None]
        )
        probs = ctc_logp.detach().double().exp() * valid[..., None]
        probs[..., -1] = torch.where(valid, probs[..., -1], 1.0)
        self.probs = probs  # (B, T, C+1)
        self.rows_item = torch.arange(batch, device=device).repeat_interleave(
            num_beams
        )
        if cache is None:
            size = 8 * batch * 2 * len(characters.labels) * frames
            cache = device.type == "cpu" and size <= max_cache_bytes
        self.cache = cache
        self.known = None  # (B * 2V,): whether E of a form is cached
        self.ids = None  # input_ids of the previous call

    def _start_probs_of(self, chars, n_chars, forms, scored, labels, lengths):
        """``E`` (R, K, T') of the candidates (R, K), from frame
        ``tokens_done`` on (a hypothesis of n tokens fills n frames at
        least, so no candidate starts earlier): from the cache, or
        computed for them all.
        """
        rows, k, width = chars.shape
        frames, first = self.probs.shape[1], self.tokens_done
        if not self.cache:
            flat = start_probs(
                self.probs,
                self.rows_item[:, None].expand(rows, k).reshape(-1),
                chars.reshape(rows * k, width),
                n_chars.clamp(min=1).reshape(-1),
                first,
            )
            return flat.view(rows, k, frames)[..., first:]
        count = 2 * labels.shape[0]  # token forms
        if self.known is None:
            self.known = torch.zeros(
                self.probs.shape[0] * count,
                dtype=torch.bool,
                device=self.probs.device,
            )
            self.stored = self.probs.new_zeros(len(self.known), frames)
        keys = self.rows_item[:, None] * count + forms  # (R, K)
        new = torch.unique(keys[scored & ~self.known[keys]])
        if len(new):  # the one read from the device
            form = new % count
            self.stored[new] = start_probs(
                self.probs,
                new // count,
                labels.view(count, -1)[form],
                lengths.view(-1)[form].clamp(min=1),
                first,
            )
            self.known[new] = True
        return self.stored[:, first:][keys]

    def _start(self, rows, device):
        """States of the empty prefix for every row: only blanks so far."""
        blanks = self.probs[self.rows_item, :, -1].cumprod(dim=1)
        self.r_b = torch.cat([blanks.new_ones(rows, 1), blanks], dim=1)
        self.r_n = torch.zeros_like(self.r_b)
        self.offset = self.r_b.new_zeros(rows)  # log of the scale
        self.psi = self.r_b.new_zeros(rows)  # log psi(empty) = 0
        self.last = torch.full((rows,), -1, device=device)
        self.alive = torch.ones(rows, dtype=torch.bool, device=device)
        self.tokens_done = 0

    def _follow(self, input_ids, labels, lengths):
        """Moves every row to the state of the candidate it took."""
        rows, length = input_ids.shape
        if self.ids.shape[1] != length - 1 or self.ids.shape[0] != rows:
            raise RuntimeError(
                "CTCPrefixScorer: input_ids do not continue the previous "
                "call's; build a new scorer for each generate call."
            )
        beams, k = self.num_beams, self.candidates.shape[1]
        current = input_ids.view(rows // beams, beams, 1, length)[..., :-1]
        before = self.ids.view(rows // beams, 1, beams, length - 1)
        same = (current == before).all(dim=-1)  # (B, beams, beams)
        # Rows with the same tokens hold the same state, but their scores
        # (hence candidates) may differ: take one that scored the token.
        token = input_ids[:, -1]
        hit = (
            self.candidates.view(-1, 1, beams, k) == token.view(-1, beams, 1, 1)
        ) & self.scored.view(-1, 1, beams, k)
        hit = hit & same[..., None]  # (B, beams, beams, K)
        found = hit.any(-1)
        local = torch.where(found.any(-1, keepdim=True), found, same)
        local = local.int().argmax(-1)  # (B, beams)
        offset = torch.arange(0, rows, beams, device=input_ids.device)
        parent = (local + offset[:, None]).reshape(-1)
        hit = hit.view(rows, beams, k)[torch.arange(rows), local.reshape(-1)]
        which = hit.int().argmax(-1)
        alive = hit.any(-1)
        form = self.forms[parent, which]
        chars = labels[token, form]  # (R, W)
        n_chars = lengths[token, form].clamp(min=1)
        self.tokens_done += 1
        r_n, r_b = extend_states(
            self.probs,
            self.rows_item,
            self.r_n[parent],
            self.r_b[parent],
            chars,
            n_chars,
            self.last[parent],
            start=self.tokens_done - 1,
        )
        # Each row scaled by its own maximum: probabilities that differ by
        # e^700 stay representable.
        scale = (r_n + r_b).amax(dim=1).clamp(min=1e-300)
        self.r_n, self.r_b = r_n / scale[:, None], r_b / scale[:, None]
        self.offset = self.offset[parent] + scale.log()
        self.psi = self.psi_candidates[parent, which]
        self.last = chars.gather(1, (n_chars - 1)[:, None])[:, 0]
        self.alive = alive

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
        rows, vocab = scores.shape
        device = self.probs.device
        if rows != self.rows_item.shape[0]:
            raise ValueError(
                f"CTCPrefixScorer: {rows} hypotheses, but the CTC batch "
                f"has {self.probs.shape[0]} items x num_beams="
                f"{self.num_beams}: give the scorer generate's num_beams."
            )
        labels, lengths = self.characters.to(device, vocab)
        if self.ids is None:
            self._start(rows, device)
        else:
            self._follow(input_ids.to(device), labels, lengths)
        self.ids = input_ids.to(device)

        lm_logp = scores.float().log_softmax(dim=-1).to(device)
        k = min(self.top_k, vocab)
        # The order of the candidates does not matter: unsorted is faster
        top = lm_logp.topk(k, dim=-1, sorted=False).indices  # (R, K)
        # After a space or at the start, a token's leading space vanishes
        space = self.characters.alphabet.find(" ")
        form = ((self.last == -1) | (self.last == space)).long()
        form = form[:, None].expand(rows, k)
        chars = labels[top, form]  # (R, K, W)
        n_chars = lengths[top, form]
        scored = (n_chars > 0) & self.alive[:, None]
        is_eos = top == self.eos_id

        start = self._start_probs_of(
            chars, n_chars, top * 2 + form, scored, labels, lengths
        )  # (R, K, T')
        # psi(g + w) = sum_s (r_b(s) + [w_1 != last(g)] r_n(s)) E_w(s)
        frames = slice(self.tokens_done, self.probs.shape[1])
        parent = torch.stack([self.r_b[:, frames], self.r_n[:, frames]], -1)
        via = torch.bmm(start, parent)  # (R, K, 2)
        differs = chars[..., 0] != self.last[:, None]
        psi = (via[..., 0] + differs * via[..., 1]).log() + self.offset[:, None]
        end = (self.r_n[:, -1] + self.r_b[:, -1]).log() + self.offset
        ctc = torch.where(is_eos, end[:, None], psi) - self.psi[:, None]
        lm_top = lm_logp.gather(1, top).double()
        joint = (1 - self.ctc_weight) * lm_top + self.ctc_weight * ctc
        keep = (scored | is_eos) & self.alive[:, None]
        joint = torch.where(keep, joint, NEG_INF).float()
        out = torch.full_like(lm_logp, NEG_INF).scatter(1, top, joint)
        out = torch.where(self.alive[:, None], out, lm_logp)

        self.candidates, self.forms = top, form
        self.scored = scored & ~is_eos
        self.psi_candidates = psi
        return out.to(scores.device)
