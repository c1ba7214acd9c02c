"""IEMOCAP data preparation: JSON manifests for the SER task, one fold.

Reads the corpus as released by USC SAIL (``IEMOCAP_full_release``)::

    Session{1..5}/sentences/wav/<dialog>/<utterance>.wav
    Session{1..5}/dialog/EmoEvaluation/<dialog>.txt

The EmoEvaluation files hold one line per utterance with its majority label::

    [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]

followed by per-annotator lines (``C-E2: ...``, ``A-E3: ...``), with a
``%``-header and blank lines in between; only lines that start with ``[``
are read, and one of those that cannot be parsed is an error naming the file
and the line. Sub-folders of EmoEvaluation (``Categorical/`` ...) and hidden
files are not read.

**Class selection (the standard four-class IEMOCAP setting).** ``neu`` ->
neutral, ``hap`` and ``exc`` -> happy (excited merged into happy), ``sad`` ->
sad, ``ang`` -> angry. The other labels (``xxx`` no agreement, ``fru``,
``sur``, ``fea``, ``dis``, ``oth``) are dropped and their counts logged by
label; a label outside both lists is an error. On the full release this
keeps 5,531 utterances (1,708 neutral, 1,636 happy, 1,103 angry, 1,084 sad),
the number SpeechBrain's own recipe checks; another total is logged as a
warning.

**Folds (leave one session out).** ``test_session`` (1..5) is the test set.
The validation set comes from the four other sessions, in one of two ways:

* default: a seeded ``valid_fraction`` (10 %) of the training sessions'
  utterances, drawn per emotion so that the class balance is kept; the
  remaining utterances train. Validation then shares speakers with training
  (SUPERB's ER task in s3prl likewise draws a random 20 % of the training
  sessions), and checkpoints are selected on eight speakers' data.
* ``valid_speaker="Ses04M"`` (say): that speaker's utterances are the
  validation set, which is then speaker-independent like the test set, at
  the cost of one speaker's training data. SpeechBrain's recipe does this
  with the other speaker of the test session (leave-two-speakers-out).

Each session has one female and one male speaker; ``spk_id`` is
``Ses<NN><F|M>`` from the *last* part of the utterance name (the speaker),
not from the dialog name (which says who wore the motion-capture markers).

Writes ``<save_folder>/iemocap_{train,valid,test}.json``::

    {"Ses01F_impro01_F000": {
        "wav": "{data_root}/IEMOCAP_full_release/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav",
        "duration": 1.9456, "spk_id": "Ses01F", "emo": "neutral"}}

The preparation is strict, because a silently shrunk corpus is worse than a
crash: a missing ``Session<N>`` or EmoEvaluation folder, a labelled
utterance whose wav is missing (whatever its label), an utterance labelled
twice or listed under the wrong session, an unknown label and a malformed
``[``-line raise ``FileNotFoundError`` or ``ValueError`` naming the path and,
for EmoEvaluation files, the line.

``data_folder`` may be ``IEMOCAP_full_release`` or the folder that holds it;
``{data_root}`` stands for ``data_folder`` exactly as given. Durations come
from the wav headers (``soundfile.info``). The options, fold included, are
stored in ``<save_folder>/iemocap_prepare_opts.json``; a later call with the
same options and all manifests present does nothing, any change rebuilds.

Example
-------
>>> prepare_iemocap(
...     "/data/IEMOCAP_full_release", "results/manifests", test_session=1
... )  # doctest: +SKIP
{'train': 'results/manifests/iemocap_train.json', ...}

From the shell::

    python -m recipes.IEMOCAP.iemocap_prepare /data results/manifests --test-session 5
"""

import argparse
import collections
import logging
import os
import random
import re

from recipes.prepare_common import (
    already_prepared,
    audio_duration,
    find_corpus_dir,
    write_json,
)

logger = logging.getLogger(__name__)

CORPUS_DIR = "IEMOCAP_full_release"
SESSIONS = (1, 2, 3, 4, 5)
EMOTIONS = {
    "neu": "neutral",
    "hap": "happy",
    "exc": "happy",
    "sad": "sad",
    "ang": "angry",
}
DROPPED_LABELS = ("xxx", "fru", "sur", "fea", "dis", "oth")
NUM_FOUR_CLASS_UTTERANCES = 5531
MANIFESTS = {
    "train": "iemocap_train.json",
    "valid": "iemocap_valid.json",
    "test": "iemocap_test.json",
}
OPTIONS_FILE = "iemocap_prepare_opts.json"
# Bump when the manifest content changes, so old manifests are rebuilt.
FORMAT_VERSION = 1

_EVAL_LINE = re.compile(
    r"^\[\s*(\d+(?:\.\d*)?)\s*-\s*(\d+(?:\.\d*)?)\s*\]"  # [start - end]
    r"\s+(\S+)\s+(\w+)\s+"  # utterance, label
    r"\[[^\]]*\]\s*$"  # [V, A, D]
)
_UTT_ID = re.compile(r"^Ses(\d\d)[FM]_\w+_([FM])\d+$")
_SPEAKER = re.compile(r"^Ses0([1-5])([FM])$")


def prepare_iemocap(
    data_folder,
    save_folder,
    test_session=5,
    valid_fraction=0.1,
    valid_speaker=None,
    seed=1234,
    skip_prep=False,
):
    """Writes the train/valid/test manifests of one leave-one-session-out fold.

    Arguments
    ---------
    data_folder : str
        ``IEMOCAP_full_release``, or the folder that contains it. The
        manifests point to the audio as ``{data_root}/...`` relative to this
        folder exactly as given.
    save_folder : str
        Where the manifests and the options file are written.
    test_session : int
        The held-out session (1..5), the test set of this fold.
    valid_fraction : float
        Fraction (0 <= f < 1) of each emotion's training-session utterances
        drawn, with ``seed``, for validation. Ignored if ``valid_speaker``
        is given.
    valid_speaker : str, optional
        A speaker ``Ses<NN><F|M>`` outside the test session whose
        utterances form the validation set instead.
    seed : int
        Seed of the validation draw.
    skip_prep : bool
        If True, do nothing (the manifests are assumed to exist).

    Returns
    -------
    dict
        Maps ``"train"``, ``"valid"``, ``"test"`` to the manifest paths.

    Raises
    ------
    FileNotFoundError
        A session folder, EmoEvaluation folder or a referenced wav is
        missing.
    ValueError
        A bad option, a malformed ``[``-line, an unknown label, an
        utterance listed twice or an unreadable wav.

    Example
    -------
    >>> prepare_iemocap("/data", "results/iemocap_fold5")  # doctest: +SKIP
    {'train': 'results/iemocap_fold5/iemocap_train.json', ...}
    """
    manifests = {
        split: os.path.join(save_folder, name)
        for split, name in MANIFESTS.items()
    }
    if skip_prep:
        logger.info("skip_prep is set: IEMOCAP preparation skipped.")
        return manifests
    test_session = _check_options(test_session, valid_fraction, valid_speaker)

    corpus_dir, layout = find_corpus_dir(data_folder, CORPUS_DIR, "IEMOCAP")
    options = {
        "format_version": FORMAT_VERSION,
        "layout": layout,
        "test_session": test_session,
        "valid_fraction": None if valid_speaker else float(valid_fraction),
        "valid_speaker": valid_speaker,
        "seed": None if valid_speaker else int(seed),
    }
    options_path = os.path.join(save_folder, OPTIONS_FILE)
    if already_prepared(options_path, manifests.values(), options):
        logger.info(
            "IEMOCAP manifests in %s are up to date, skipping.", save_folder
        )
        return manifests

    wav_root = "{data_root}/" + (layout + "/" if layout != "." else "")
    records, dropped = read_corpus(corpus_dir, wav_root=wav_root)
    _log_selection(records, dropped)
    folds = split_fold(
        records, test_session, valid_fraction, valid_speaker, seed
    )
    if valid_speaker is not None and not folds["valid"]:
        raise ValueError(
            f"valid_speaker {valid_speaker} has no four-class utterance in "
            f"{corpus_dir}; choose another speaker."
        )

    os.makedirs(save_folder, exist_ok=True)
    # An interrupted rebuild must not look finished to the next run.
    if os.path.exists(options_path):
        os.remove(options_path)
    for split, utt_ids in folds.items():
        entries = {
            utt_id: {
                key: records[utt_id][key]
                for key in ("wav", "duration", "spk_id", "emo")
            }
            for utt_id in sorted(utt_ids)
        }
        write_json(entries, manifests[split])
        counts = collections.Counter(e["emo"] for e in entries.values())
        logger.info(
            "Wrote %s: %d utterances (%s).",
            manifests[split],
            len(entries),
            ", ".join(f"{emo} {n}" for emo, n in sorted(counts.items())),
        )
    write_json(options, options_path)
    return manifests


def read_corpus(corpus_dir, wav_root="{data_root}/"):
    """Reads the four-class utterances of all five sessions.

    Arguments
    ---------
    corpus_dir : str
        The folder holding ``Session1`` .. ``Session5``.
    wav_root : str
        Prefix of the ``wav`` paths, followed by ``Session<N>/...``.

    Returns
    -------
    records : dict
        ``{utt_id: {"wav", "duration", "spk_id", "emo", "session"}}``.
    dropped : collections.Counter
        Number of utterances dropped, by original label.
    """
    records, dropped, origin = {}, collections.Counter(), {}
    for session in SESSIONS:
        session_dir = os.path.join(corpus_dir, f"Session{session}")
        eval_dir = os.path.join(session_dir, "dialog", "EmoEvaluation")
        for folder in (session_dir, eval_dir):
            if not os.path.isdir(folder):
                raise FileNotFoundError(
                    f"IEMOCAP folder {folder} does not exist: the corpus "
                    f"must hold Session1..Session5 (found under {corpus_dir})."
                )
        eval_files = sorted(
            name
            for name in os.listdir(eval_dir)
            if name.endswith(".txt")
            and not name.startswith(".")
            and os.path.isfile(os.path.join(eval_dir, name))
        )
        if not eval_files:
            raise FileNotFoundError(
                f"IEMOCAP folder {eval_dir} holds no EmoEvaluation .txt file."
            )
        for name in eval_files:
            eval_path = os.path.join(eval_dir, name)
            for lineno, utt_id, label in read_emo_evaluation(eval_path):
                where = f"{eval_path}, line {lineno}"
                _check_utterance(utt_id, label, session, where)
                if utt_id in origin:
                    raise ValueError(
                        f"{where}: utterance {utt_id} is already labelled "
                        f"at {origin[utt_id]}."
                    )
                origin[utt_id] = where
                dialog = utt_id.rsplit("_", 1)[0]
                rel = f"Session{session}/sentences/wav/{dialog}/{utt_id}.wav"
                wav = os.path.join(corpus_dir, *rel.split("/"))
                # Checked for dropped labels too: a missing file means an
                # incomplete corpus, whatever its label.
                if not os.path.isfile(wav):
                    raise FileNotFoundError(
                        f"{where}: the audio file {wav} of utterance "
                        f"{utt_id} does not exist."
                    )
                if label in DROPPED_LABELS:
                    dropped[label] += 1
                    continue
                records[utt_id] = {
                    "wav": wav_root + rel,
                    "duration": audio_duration(wav),
                    "spk_id": f"Ses{session:02d}{utt_id.rsplit('_', 1)[1][0]}",
                    "emo": EMOTIONS[label],
                    "session": session,
                }
    return records, dropped


def read_emo_evaluation(eval_path):
    r"""Yields ``(line number, utterance id, label)`` from an EmoEvaluation file.

    Arguments
    ---------
    eval_path : str
        Path to ``Session<N>/dialog/EmoEvaluation/<dialog>.txt``.

    Yields
    ------
    lineno : int
        1-based line number, for error messages.
    utt_id : str
        The utterance name, e.g. ``Ses01F_impro01_F000``.
    label : str
        The three-letter majority label, lower case, e.g. ``neu``.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "Ses01F_impro01.txt")
    >>> with open(path, "w") as f:
    ...     _ = f.write(
    ...         "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
    ...         "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t"
    ...         "[2.5000, 2.5000, 2.5000]\n"
    ...         "C-E2:\tNeutral;\t()\n"
    ...     )
    >>> list(read_emo_evaluation(path))
    [(3, 'Ses01F_impro01_F000', 'neu')]
    """
    with open(eval_path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.lstrip().startswith("["):
                continue
            match = _EVAL_LINE.match(line.strip())
            if match is None:
                raise ValueError(
                    f"{eval_path}, line {lineno}: cannot parse "
                    f"{line.rstrip()!r}; expected '[START - END]<TAB>"
                    "UTTERANCE<TAB>LABEL<TAB>[V, A, D]'."
                )
            yield lineno, match[3], match[4].lower()


def split_fold(records, test_session, valid_fraction, valid_speaker, seed):
    """Splits utterances into train/valid/test for one held-out session.

    Arguments
    ---------
    records : dict
        ``{utt_id: {"session", "spk_id", "emo", ...}}``.
    test_session : int
        The session whose utterances are the test set.
    valid_fraction : float
        Fraction of each emotion's training utterances drawn for validation
        (when ``valid_speaker`` is None).
    valid_speaker : str, optional
        The speaker whose utterances form the validation set.
    seed : int
        Seed of the validation draw.

    Returns
    -------
    dict
        ``{"train": [...], "valid": [...], "test": [...]}`` of utterance ids.

    Example
    -------
    >>> records = {
    ...     f"Ses0{s}F_impro01_F00{i}": {
    ...         "session": s, "spk_id": f"Ses0{s}F", "emo": "sad"}
    ...     for s in (1, 2) for i in range(5)
    ... }
    >>> fold = split_fold(records, 2, 0.2, None, seed=0)
    >>> [len(fold[k]) for k in ("train", "valid", "test")]
    [4, 1, 5]
    >>> fold = split_fold(records, 2, 0.2, "Ses01F", seed=0)
    >>> [len(fold[k]) for k in ("train", "valid", "test")]
    [0, 5, 5]
    """
    test = [u for u in sorted(records) if records[u]["session"] == test_session]
    pool = [u for u in sorted(records) if records[u]["session"] != test_session]
    if valid_speaker is not None:
        valid = [u for u in pool if records[u]["spk_id"] == valid_speaker]
    else:
        rng = random.Random(seed)
        valid = []
        for emo in sorted({records[u]["emo"] for u in pool}):
            candidates = [u for u in pool if records[u]["emo"] == emo]
            rng.shuffle(candidates)
            n_valid = int(valid_fraction * len(candidates) + 0.5)
            valid.extend(candidates[:n_valid])
    chosen = set(valid)
    train = [u for u in pool if u not in chosen]
    return {"train": train, "valid": sorted(valid), "test": test}


def _check_options(test_session, valid_fraction, valid_speaker):
    """Validates the fold options; returns ``test_session`` as an int."""
    if str(test_session) not in {str(s) for s in SESSIONS}:
        raise ValueError(
            f"test_session must be one of {SESSIONS}, got {test_session!r}."
        )
    test_session = int(test_session)
    if valid_speaker is not None:
        match = _SPEAKER.match(str(valid_speaker))
        if match is None:
            raise ValueError(
                "valid_speaker must look like 'Ses04M' (session 01..05, "
                f"then F or M), got {valid_speaker!r}."
            )
        if int(match[1]) == test_session:
            raise ValueError(
                f"valid_speaker {valid_speaker} belongs to the test session "
                f"{test_session}; choose a speaker of another session."
            )
    elif not 0 <= valid_fraction < 1:
        raise ValueError(
            f"valid_fraction must be in [0, 1), got {valid_fraction!r}."
        )
    return test_session


def _check_utterance(utt_id, label, session, where):
    """Raises a ValueError naming ``where`` if the id or label is wrong."""
    match = _UTT_ID.match(utt_id)
    if match is None:
        raise ValueError(
            f"{where}: '{utt_id}' is not an IEMOCAP utterance name "
            "like Ses01F_impro01_F000."
        )
    if int(match[1]) != session:
        raise ValueError(
            f"{where}: utterance {utt_id} is listed under Session{session}."
        )
    if label not in EMOTIONS and label not in DROPPED_LABELS:
        raise ValueError(
            f"{where}: unknown emotion label '{label}' (known: "
            f"{', '.join(sorted(EMOTIONS))}, dropped: "
            f"{', '.join(DROPPED_LABELS)})."
        )


def _log_selection(records, dropped):
    """Logs what the four-class selection kept and dropped."""
    kept = collections.Counter(r["emo"] for r in records.values())
    logger.info(
        "IEMOCAP four-class selection kept %d utterances (%s).",
        len(records),
        ", ".join(f"{emo} {n}" for emo, n in sorted(kept.items())),
    )
    logger.info(
        "Dropped %d utterances outside the four classes, by label: %s.",
        sum(dropped.values()),
        ", ".join(f"{lab} {n}" for lab, n in sorted(dropped.items())) or "none",
    )
    if len(records) != NUM_FOUR_CLASS_UTTERANCES:
        logger.warning(
            "Found %d four-class utterances; the full IEMOCAP release has "
            "%d. Check that the corpus is complete if it should be.",
            len(records),
            NUM_FOUR_CLASS_UTTERANCES,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="Write SpeechBrain JSON manifests for one IEMOCAP fold."
    )
    parser.add_argument(
        "data_folder", help="IEMOCAP_full_release or its parent"
    )
    parser.add_argument("save_folder", help="where to write the manifests")
    parser.add_argument("--test-session", type=int, default=5, choices=SESSIONS)
    parser.add_argument("--valid-fraction", type=float, default=0.1)
    parser.add_argument(
        "--valid-speaker", default=None, help="e.g. Ses04M (overrides fraction)"
    )
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prepare_iemocap(
        args.data_folder,
        args.save_folder,
        test_session=args.test_session,
        valid_fraction=args.valid_fraction,
        valid_speaker=args.valid_speaker,
        seed=args.seed,
    )
