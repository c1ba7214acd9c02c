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


def prepare_tiny_llm(
    save_folder, train_manifest, extra_texts, llm_config, vocab_size=None
):
    """Builds the tokenizer from transcripts and a random Qwen2 LM.

    Skips the work if ``save_folder`` already holds a model built from the
    same inputs.

    Arguments
    ---------
    save_folder : str
        Folder to write (loads with ``from_pretrained``).
    train_manifest : str
        JSON manifest whose ``wrd`` fields give the vocabulary.
    extra_texts : list of str or list of str
        Texts that must be tokenisable too: task prompts, label words
        (nested lists are flattened).
    llm_config : dict
        Arguments of ``transformers.Qwen2Config`` (vocabulary size and
        special token ids are set from the tokenizer).
    vocab_size : int, optional
        Size of the BPE vocabulary; None: one token per training word.

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
    texts = read_manifest_texts(train_manifest) + extra_texts
    stamp = {
        "manifest": os.path.abspath(train_manifest),
        "manifest_mtime": os.path.getmtime(train_manifest),
        "extra_texts": list(extra_texts),
        "llm_config": dict(llm_config),
        "vocab_size": vocab_size,
    }
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
    os.makedirs(save_folder, exist_ok=True)
    Qwen2ForCausalLM(config).save_pretrained(save_folder)
    tokenizer.save_pretrained(save_folder)
    with open(stamp_path, "w", encoding="utf-8") as f:
        json.dump(stamp, f, indent=2)
    logger.info(f"Tiny LLM ({len(tokenizer)} tokens) written to {save_folder}.")
    return save_folder
