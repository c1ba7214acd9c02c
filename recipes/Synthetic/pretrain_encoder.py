#!/usr/bin/env python3
"""Pre-trains the speech encoder of the synthetic ablation setting.

In the paper the speech encoder is a pre-trained, frozen WavLM whose layers
hold different information: lower layers keep more of the acoustics
(speaker, prosody), upper ones more of the phonetic content. This recipe
gives the CPU setting an encoder of that kind: a Conformer
(``ConformerSpeechEncoder``) trained once with a character CTC loss on its
*top* layer only, on the ASR training transcripts of the synthetic corpus.
No emotion label is used (WavLM's pre-training sees none either): the CTC
objective pulls the top layers towards the words and away from the speaker
and the prosody, which the lower layers, closer to the filterbanks, keep.
Every ablation variant then loads it frozen
(``ConformerSpeechEncoder(source=..., freeze=True)``).

    python -m recipes.Synthetic.pretrain_encoder
        hparams/pretrain_encoder_synthetic.yaml [--key=value ...]

The corpus must exist (``python train.py hparams/ablation_synthetic.yaml``
prepares it and calls this recipe through ``pretrain_encoder``). The folder
written (``encoder_folder``) holds ``encoder.ckpt``,
``encoder_hyperparams.json`` and ``pretrain_log.json`` (losses, validation
CER, wall time, and the arguments it was trained with). Running it again
with the same arguments (YAML, overrides, training manifest content) does
nothing.

Authors
 * HarmoniFuse-SB developers 2026
"""

import collections
import hashlib
import json
import logging
import math
import os
import sys
import time

import torch
from hyperpyyaml import load_hyperpyyaml, resolve_references

logger = logging.getLogger(__name__)

LOG_FILE = "pretrain_log.json"
# Bump when the training procedure changes for the same arguments.
VERSION = 1


def _load_hparams(hparams_file, overrides):
    """The YAML resolved with its overrides, and its loaded hparams."""
    with open(hparams_file, encoding="utf-8") as fin:
        resolved = resolve_references(fin, overrides).getvalue()
    return resolved, load_hyperpyyaml(resolved)


def _stamp(resolved, hparams):
    """What the encoder depends on: the YAML and its training data."""
    manifest = hparams["train_manifest"]
    if not os.path.isfile(manifest):
        raise FileNotFoundError(
            f"pretrain_encoder: no training manifest {manifest}. Prepare "
            "the corpus first (python train.py hparams/ablation_synthetic"
            ".yaml does it, then calls this recipe)."
        )
    # The content, not the mtime: a corpus prepared again with the same
    # training set (e.g. after a change of the SER counts) keeps the encoder.
    with open(manifest, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return {
        "version": VERSION,
        "hparams": resolved,
        "train_manifest_sha256": digest,
    }


def is_up_to_date(folder, stamp):
    """Whether ``folder`` holds an encoder pre-trained with ``stamp``."""
    try:
        with open(os.path.join(folder, LOG_FILE), encoding="utf-8") as f:
            return json.load(f)["stamp"] == stamp
    except (OSError, ValueError, KeyError):
        return False


def _texts_to_targets(texts, alphabet):
    """Character indices (0 is the CTC blank) and lengths of transcripts."""
    index = {c: i + 1 for i, c in enumerate(alphabet)}
    targets = []
    for text in texts:
        unknown = sorted(set(text) - set(index))
        if unknown:
            raise ValueError(
                f"pretrain_encoder: transcript {text!r} has characters "
                f"{unknown} outside ctc_alphabet {alphabet!r}."
            )
        targets.append(torch.tensor([index[c] for c in text]))
    lengths = torch.tensor([len(t) for t in targets])
    return torch.nn.utils.rnn.pad_sequence(targets, batch_first=True), lengths


def _make_loader(hparams, manifest, shuffle, seed):
    """A loader of padded (wav, rel_len, transcript) batches."""
    from speechbrain.dataio.batch import PaddedBatch

    from harmonifuse_sb.dataio import add_pipelines, load_manifest
    from harmonifuse_sb.tasks import Transcription

    data = load_manifest(manifest, "asr", hparams["data_root"], 0.1)
    # The transcript pipeline of an ASR task (its prompt plays no part).
    add_pipelines(data, Transcription("transcribe the speech"))
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        data,
        batch_size=hparams["batch_size"],
        shuffle=shuffle,
        generator=generator,
        collate_fn=PaddedBatch,
        drop_last=shuffle,
    )


def _lr_factor(step, warmup, total):
    """Linear warm-up, then linear decay to 0 at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def character_error_rate(encoder, head, loader, alphabet):
    """Greedy CTC character error rate (%) of the top layer on a loader."""
    from speechbrain.decoders import ctc_greedy_decode
    from speechbrain.utils.edit_distance import accumulatable_wer_stats

    stats = collections.Counter()
    encoder.eval()
    with torch.no_grad():
        for batch in loader:
            wavs, lens = batch.sig
            hidden, out_lens = encoder(wavs, lens)
            logp = head(hidden[-1]).log_softmax(-1)
            hyps = ctc_greedy_decode(logp, out_lens, blank_id=0)
            hyps = [
                list(" ".join("".join(alphabet[i - 1] for i in h).split()))
                for h in hyps
            ]
            refs = [list(text) for text in batch.wrd_norm]
            stats = accumulatable_wer_stats(refs, hyps, stats)
    return stats["WER"]


def train_encoder(hparams):
    """Trains the encoder with CTC on its top layer; returns its log.

    Arguments
    ---------
    hparams : dict
        The loaded YAML (``encoder``, ``ctc_alphabet``, ``steps``,
        ``batch_size``, ``lr``, ``warmup_steps``, ``max_grad_norm``,
        ``seed``, the manifests and ``data_root``).

    Returns
    -------
    dict
        ``losses`` (every ``log_interval`` steps), ``valid_CER`` (%),
        ``wall_time_s``.
    """
    torch.manual_seed(hparams["seed"])
    encoder = hparams["encoder"]
    alphabet = hparams["ctc_alphabet"]
    head = torch.nn.Linear(encoder.output_dim, len(alphabet) + 1)
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=hparams["lr"], weight_decay=0.01)
    steps, warmup = hparams["steps"], hparams["warmup_steps"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, warmup, steps)
    )
    ctc = torch.nn.CTCLoss(blank=0, zero_infinity=True)
    loader = _make_loader(
        hparams, hparams["train_manifest"], True, hparams["seed"]
    )
    start = time.time()
    losses, running, counted, step = [], 0.0, 0, 0
    encoder.train()
    while step < steps:
        for batch in loader:
            wavs, lens = batch.sig
            hidden, out_lens = encoder(wavs, lens)  # (L+1, B, T, D)
            logp = head(hidden[-1]).log_softmax(-1)  # (B, T, C+1)
            targets, target_lens = _texts_to_targets(batch.wrd_norm, alphabet)
            frames = torch.round(out_lens * logp.shape[1]).long()
            loss = ctc(logp.transpose(0, 1), targets, frames, target_lens)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, hparams["max_grad_norm"])
            optimizer.step()
            scheduler.step()
            running += loss.item()
            counted += 1
            step += 1
            if step % hparams["log_interval"] == 0 or step == steps:
                losses.append([step, running / counted])
                logger.info(f"step {step}: CTC loss {running / counted:.3f}")
                running, counted = 0.0, 0
            if step == steps:
                break
    train_time = time.time() - start
    valid = _make_loader(hparams, hparams["valid_manifest"], False, 0)
    cer = character_error_rate(encoder, head, valid, alphabet)
    if not math.isfinite(losses[-1][1]):
        raise RuntimeError(
            "pretrain_encoder: the CTC loss is not finite; lower lr."
        )
    return {
        "losses": losses,
        "valid_CER": cer,
        "train_time_s": train_time,
        "wall_time_s": time.time() - start,
    }


def pretrain_encoder(hparams_file, overrides=None):
    """Pre-trains the encoder once; skips if its folder is up to date.

    Arguments
    ---------
    hparams_file : str
        The pre-training YAML (``hparams/pretrain_encoder_synthetic.yaml``).
    overrides : dict or str, optional
        Overrides of the YAML (e.g. ``data_folder``, ``encoder_folder``), a
        mapping or YAML text.

    Returns
    -------
    str
        The encoder folder (``ConformerSpeechEncoder(source=...)``).
    """
    overrides = overrides or {}
    resolved, hparams = _load_hparams(hparams_file, overrides)
    folder = hparams["encoder_folder"]
    stamp = _stamp(resolved, hparams)
    if is_up_to_date(folder, stamp):
        logger.info(f"Pre-trained encoder in {folder} is up to date.")
        return folder
    logger.info(f"Pre-training the speech encoder into {folder}")
    log = train_encoder(hparams)
    hparams["encoder"].save_pretrained(folder)
    log["stamp"] = stamp
    # Written last: a folder without it is trained again.
    with open(os.path.join(folder, LOG_FILE), "w", encoding="utf-8") as f:
        json.dump(log, f, indent=2)
    logger.info(
        f"Encoder pre-trained in {log['wall_time_s']:.0f} s: validation "
        f"CER {log['valid_CER']:.2f} % (greedy CTC, top layer)."
    )
    return folder


def main(argv=None):
    """Command line: the YAML and ``--key=value`` overrides."""
    import speechbrain as sb

    hparams_file, _, overrides = sb.parse_arguments(
        sys.argv[1:] if argv is None else argv
    )
    folder = pretrain_encoder(hparams_file, overrides)
    with open(os.path.join(folder, LOG_FILE), encoding="utf-8") as f:
        log = json.load(f)
    print(
        f"Encoder in {folder}: validation CER {log['valid_CER']:.2f} % "
        f"(pre-trained in {log['wall_time_s']:.0f} s)"
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
