"""Tokenizer and tiny LLM built from training transcripts.

For from-scratch runs (the synthetic quick-start) the LLM is a small
Qwen2-architecture model with random weights and a byte-level BPE tokenizer
(one token per known word) built
from the training transcripts, the task prompts and the emotion labels. Both
are saved in the transformers format, so ``SpeechLM`` loads them exactly as it
loads a real LLM from the hub.

Authors
 * HarmoniFuse-SB developers 2026
"""

import hashlib
import json
import logging
import os

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"


def build_bpe_tokenizer(texts, vocab_size=None):
    """A byte-level BPE tokenizer trained on ``texts``.

    With ``vocab_size=None`` the BPE merges until every word of ``texts`` is
    one token (with GPT-2's leading-space marker); a smaller vocabulary gives
    sub-word units shared between words. An unseen word always tokenises into
    pieces: there is no ``<unk>``. The format is Qwen2's (byte-level BPE,
    ``<|endoftext|>`` as EOS and pad): transformers 5 loads any tokenizer saved
    next to a ``qwen2`` config as ``Qwen2Tokenizer``, which imposes byte-level
    pre-tokenisation, so a plain word-level vocabulary would not survive the
    round trip.

    Arguments
    ---------
    texts : list of str
        Training texts.
    vocab_size : int, optional
        Size of the vocabulary (256 bytes, the EOS token and the merges);
        None for no limit.

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        With ``<|endoftext|>`` as EOS and pad token.

    Example
    -------
    >>> tok = build_bpe_tokenizer(["the cat sat", "the dog"])
    >>> ids = tok("the dog sat", add_special_tokens=False)["input_ids"]
    >>> len(ids), tok.decode(ids)
    (3, 'the dog sat')
    >>> small = build_bpe_tokenizer(["the cat sat", "the dog"], vocab_size=260)
    >>> len(small("the dog sat", add_special_tokens=False)["input_ids"])
    8
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        # None: no limit, merge until every word is one token
        vocab_size=vocab_size or 1_000_000,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=EOS, pad_token=EOS
    )


def read_manifest_texts(manifest, key="wrd"):
    """Reads the transcripts of a SpeechBrain JSON manifest.

    Arguments
    ---------
    manifest : str
        Path of a JSON manifest.
    key : str
        Field holding the transcript.

    Returns
    -------
    list of str
    """
    with open(manifest, encoding="utf-8") as f:
        data = json.load(f)
    texts = []
    for utt_id, entry in data.items():
        if key not in entry:
            raise KeyError(
                f"{manifest}: entry '{utt_id}' has no '{key}' field."
            )
        texts.append(entry[key])
    return texts


def pretrain_causal_lm(
    model, tokenizer, texts, steps, batch_size=32, lr=1e-3, seed=0
):
    """Trains a causal LM on sentences (next-token prediction), in place.

    Each step draws ``batch_size`` sentences at random (seeded), appends the
    EOS token to each, and takes one AdamW step on the token cross-entropy
    (padding masked out). This gives a from-scratch setting what the paper's
    pre-trained LLM brings: a model that already knows the language of the
    transcripts before it ever sees speech.

    Arguments
    ---------
    model : transformers.PreTrainedModel
        A causal LM (e.g. ``Qwen2ForCausalLM``).
    tokenizer : transformers.PreTrainedTokenizerBase
        Its tokenizer, with an EOS and a pad token.
    texts : list of str
        The training sentences.
    steps : int
        Optimiser steps.
    batch_size : int
        Sentences per step.
    lr : float
        AdamW learning rate (constant).
    seed : int
        Seed of the sentence draws.

    Returns
    -------
    list of float
        The loss of every step.

    Example
    -------
    >>> import torch
    >>> from transformers import Qwen2Config, Qwen2ForCausalLM
    >>> tok = build_bpe_tokenizer(["the cat sat", "the dog ran"])
    >>> _ = torch.manual_seed(0)
    >>> lm = Qwen2ForCausalLM(Qwen2Config(
    ...     vocab_size=len(tok), hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
    ...     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    >>> losses = pretrain_causal_lm(lm, tok, ["the cat sat"], steps=30, lr=1e-2)
    >>> losses[-1] < losses[0] / 4
    True
    """
    import torch

    if not texts:
        raise ValueError("pretrain_causal_lm: no texts to train on.")
    encoded = [
        tokenizer(text, add_special_tokens=False)["input_ids"]
        + [tokenizer.eos_token_id]
        for text in texts
    ]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        picks = torch.randint(len(encoded), (batch_size,), generator=generator)
        seqs = [encoded[i] for i in picks.tolist()]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
        labels = torch.full((len(seqs), width), -100)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        # transformers shifts the labels inside: aligned with the inputs
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def prepare_tiny_llm(
    save_folder,
    train_manifest,
    extra_texts,
    llm_config,
    vocab_size=None,
    pretrain=None,
):
    """Builds the tokenizer from transcripts and a Qwen2 LM.

    The LM has random weights, or with ``pretrain`` is first trained as a
    language model on the transcripts (:func:`pretrain_causal_lm`), as a
    stand-in for a pre-trained LLM. Skips the work if ``save_folder``
    already holds a model built from the same inputs, so a folder outside
    the run's can be prepared once and shared by many runs (one at a time).

    Arguments
    ---------
    save_folder : str
        Folder to write (loads with ``from_pretrained``).
    train_manifest : str or list of str
        JSON manifest(s) whose ``wrd`` fields give the vocabulary (a list,
        as a task's training manifest may be, is read in order).
    extra_texts : list of str or list of str
        Texts that must be tokenisable too: task prompts, label words
        (nested lists are flattened).
    llm_config : dict
        Arguments of ``transformers.Qwen2Config`` (vocabulary size and
        special token ids are set from the tokenizer).
    vocab_size : int, optional
        Size of the BPE vocabulary; None: one token per training word.
    pretrain : dict, optional
        Arguments of :func:`pretrain_causal_lm` (``steps``, and optionally
        ``batch_size``, ``lr``, ``seed``); None: random weights.

    Returns
    -------
    str
        ``save_folder``.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    extra_texts = [
        text
        for item in extra_texts
        for text in ([item] if isinstance(item, str) else item)
    ]
    if isinstance(train_manifest, str):
        paths = [train_manifest]
    else:
        paths = list(train_manifest)
    train_texts = [text for path in paths for text in read_manifest_texts(path)]
    texts = train_texts + extra_texts
    # The stamp holds what the LLM is built from: the transcripts' content,
    # not the manifest's path or time (a path stamp re-trained the shared
    # LLM of a study run from another checkout of the same corpus, and a
    # re-trained LLM is not the same model).
    digest = hashlib.sha256("\n".join(train_texts).encode("utf-8"))
    stamp = {
        "transcripts_sha256": digest.hexdigest(),
        "extra_texts": list(extra_texts),
        "llm_config": dict(llm_config),
        "vocab_size": vocab_size,
    }
    if pretrain:  # stamps of random models stay as they were
        stamp["pretrain"] = dict(pretrain)
    stamp_path = os.path.join(save_folder, "harmonifuse_stamp.json")
    if os.path.exists(stamp_path):
        with open(stamp_path, encoding="utf-8") as f:
            if json.load(f) == stamp:
                logger.info(f"Tiny LLM in {save_folder} is up to date.")
                return save_folder
    tokenizer = build_bpe_tokenizer(texts, vocab_size)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        **llm_config,
    )
    model = Qwen2ForCausalLM(config)
    if pretrain:
        losses = pretrain_causal_lm(model, tokenizer, train_texts, **pretrain)
        logger.info(
            f"Tiny LLM pre-trained on the transcripts: loss {losses[0]:.3f} "
            f"at the first step, {losses[-1]:.3f} at step {len(losses)}."
        )
    os.makedirs(save_folder, exist_ok=True)
    model.save_pretrained(save_folder)
    tokenizer.save_pretrained(save_folder)
    with open(stamp_path, "w", encoding="utf-8") as f:
        json.dump(stamp, f, indent=2)
    logger.info(f"Tiny LLM ({len(tokenizer)} tokens) written to {save_folder}.")
    return save_folder
