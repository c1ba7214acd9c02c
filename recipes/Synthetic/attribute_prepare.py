"""Data preparation of a speaker-attribute task: the eSpeak voice's accent.

A third task for ``hparams/harmonifuse_tiny_3tasks.yaml``: which English
accent (eSpeak language variant: ``en-us``, ``en-gb-x-rp``, ...) a voice
speaks with, from its own corpus. The utterances are synthesised by the
synthetic corpus's preparation (``recipes.Synthetic.synthetic_prepare``),
run into a folder of their own with the accents as its only languages, a
seed of their own and no ASR sets; its SER sets (grammar sentences with the
four emotions' prosody, recorded with noise) become the accent corpus, each
entry labelled with the accent of its voice (``spk_id`` is
``<accent>+<timbre>``, e.g. ``en-gb-x-rp+m6``).

The voices of the validation and test sets are held out from training
(``select_voices``: distinct (accent, timbre) pairs per split, each with its
own prosodic baseline), and each held-out split spreads over the accents,
so the test asks for an accent spoken by a voice the model never heard.

Writes, under ``<data_folder>``: the synthetic preparation's files and
``accent_{train,valid,test}.json`` (SpeechBrain manifests: ``wav`` with
``{data_root}``, ``duration``, ``spk_id``, ``accent``, and the recording's
fields). Nothing is done when they exist for the same arguments.

Authors
 * HarmoniFuse-SB developers 2026
"""

import json
import logging
import os

from recipes.Synthetic.synthetic_prepare import prepare_synthetic

logger = logging.getLogger(__name__)

# Four eSpeak English accents, apart enough to be told by ear: General
# American, British Received Pronunciation, Scottish English, Caribbean.
ACCENTS = ("en-us", "en-gb-x-rp", "en-gb-scotland", "en-029")
SPLITS = ("train", "valid", "test")
PARAMS_FILE = "accent_params.json"


def accent_of(spk_id):
    """The accent of a synthetic voice: its eSpeak language.

    Arguments
    ---------
    spk_id : str
        ``<language>+<variant>``.

    Returns
    -------
    str

    Example
    -------
    >>> accent_of("en-gb-x-rp+m6")
    'en-gb-x-rp'
    """
    language, sep, variant = spk_id.partition("+")
    if not sep or not language or not variant:
        raise ValueError(
            f"spk_id {spk_id!r} is not '<accent>+<timbre>' (e.g. "
            "'en-us+f2'); was the manifest written by synthetic_prepare?"
        )
    return language


def accent_manifest(ser_manifest):
    """The accent manifest of a synthetic SER manifest's entries.

    Arguments
    ---------
    ser_manifest : dict
        Utterance id -> entry with ``spk_id`` and ``emo``.

    Returns
    -------
    dict
        Utterance id -> the same entry with ``accent`` instead of ``emo``.

    Example
    -------
    >>> accent_manifest({"u0": {"wav": "x.wav", "duration": 1.0,
    ...                         "spk_id": "en-us+m1", "emo": "sad"}})
    {'u0': {'wav': 'x.wav', 'duration': 1.0, 'spk_id': 'en-us+m1', 'accent': 'en-us'}}
    """
    manifest = {}
    for utt_id, entry in ser_manifest.items():
        entry = {k: v for k, v in entry.items() if k != "emo"}
        entry["accent"] = accent_of(entry["spk_id"])
        manifest[utt_id] = entry
    return manifest


def prepare_accent(
    data_folder,
    seed=4321,
    accents=ACCENTS,
    n_train_voices=16,
    n_valid_voices=4,
    n_test_voices=4,
    train=800,
    valid=80,
    test=160,
    num_workers=None,
):
    """Synthesises the accent corpus and writes its manifests.

    Arguments
    ---------
    data_folder : str
        Where the corpus is written (a folder of its own: the synthetic
        preparation replaces a corpus made with other arguments).
    seed : int
        Seed of the voices, sentences and recordings.
    accents : sequence of str
        eSpeak English language variants: the classes.
    n_train_voices : int
        Training voices (accent x timbre pairs).
    n_valid_voices : int
        Held-out validation voices (at least one per accent is best).
    n_test_voices : int
        Held-out test voices.
    train : int
        Utterances in ``accent_train.json``.
    valid : int
        Utterances in ``accent_valid.json``.
    test : int
        Utterances in ``accent_test.json``.
    num_workers : int, optional
        Synthesis processes (default: the CPU cores).

    Raises
    ------
    ValueError
        Fewer than two accents, or a held-out set whose voices miss an
        accent of the training set (more held-out voices are needed).
    """
    accents = list(accents)
    if len(set(accents)) < 2:
        raise ValueError(
            f"prepare_accent: give two or more distinct accents, got {accents}."
        )
    params = {
        "seed": seed,
        "accents": accents,
        "voices": [n_train_voices, n_valid_voices, n_test_voices],
        "sizes": [train, valid, test],
    }
    params_path = os.path.join(data_folder, PARAMS_FILE)
    outputs = [os.path.join(data_folder, f"accent_{s}.json") for s in SPLITS]
    if _read(params_path) == params and all(map(os.path.isfile, outputs)):
        logger.info("Accent corpus in %s is ready, skipping.", data_folder)
        return
    prepare_synthetic(
        data_folder,
        seed=seed,
        n_train_voices=n_train_voices,
        n_valid_voices=n_valid_voices,
        n_test_voices=n_test_voices,
        asr_train=0,
        asr_valid=0,
        asr_test=0,
        ser_train=train,
        ser_valid=valid,
        ser_test=test,
        languages=accents,
        num_workers=num_workers,
    )
    manifests = {}
    for split in SPLITS:
        with open(os.path.join(data_folder, f"ser_{split}.json")) as f:
            manifests[split] = accent_manifest(json.load(f))
    trained = {e["accent"] for e in manifests["train"].values()}
    for split in ("valid", "test"):
        missing = sorted(
            trained - {e["accent"] for e in manifests[split].values()}
        )
        if missing:
            # The SER sets let each voice say the 4 emotions in turn.
            raise ValueError(
                f"prepare_accent: no {split} utterance has the accents "
                f"{missing}: give one voice per accent (n_{split}_voices >= "
                f"{len(accents)}) and 4 utterances per voice ({split} >= "
                f"{4 * len(accents)})."
            )
    for split, path in zip(SPLITS, outputs):
        with open(path, "w", encoding="utf-8") as w:
            json.dump(manifests[split], w, indent=1)
    # Written last: an interrupted run is redone.
    with open(params_path, "w", encoding="utf-8") as w:
        json.dump(params, w)
    logger.info(
        "Accent corpus: %s utterances (train, valid, test) in %s",
        [len(manifests[s]) for s in SPLITS],
        data_folder,
    )


def _read(path):
    """A JSON file's content, or None when it is missing."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
