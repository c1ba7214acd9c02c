"""LibriSpeech data preparation: JSON manifests for the ASR task.

Reads the corpus as distributed by OpenSLR (resource 12)::

    LibriSpeech/<split>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac
    LibriSpeech/<split>/<spk>/<chapter>/<spk>-<chapter>.trans.txt

and writes one SpeechBrain JSON manifest per split,
``<save_folder>/<split>.json`` (e.g. ``train-clean-100.json``)::

    {"103-1240-0000": {
        "wav": "{data_root}/LibriSpeech/train-clean-100/103/1240/103-1240-0000.flac",
        "duration": 14.085,
        "spk_id": "103",
        "wrd": "chapter one missus rachel lynde is surprised ..."}}

``data_folder`` may be the ``LibriSpeech`` folder itself or the folder that
holds it (if ``data_folder/LibriSpeech`` is a directory, that one is used).
``{data_root}`` stands for ``data_folder`` *exactly as given*, so the loader
must replace it with the same value (``replacements={"data_root":
data_folder}``); the manifests then stay valid when the corpus moves.

Transcripts are lower-cased with single spaces between words. Durations come
from the FLAC headers (``soundfile.info``): no audio is decoded.

The preparation is strict, because a silently shrunk training set is worse
than a crash: a missing split folder, a transcript line whose FLAC is missing,
a FLAC without a transcript line, a malformed transcript line, a duplicated
utterance id or an unreadable/empty FLAC raise an error (``FileNotFoundError``
or ``ValueError``) that names the path and, for transcripts, the line.
Blank lines in a transcript file carry nothing and are ignored.

The preparation is idempotent: the options are stored in
``<save_folder>/librispeech_prepare_opts.json``, written last; if it matches
the current options and every manifest exists, nothing is done. Any change
(other splits, other layout) rebuilds all requested manifests.

Example
-------
>>> prepare_librispeech(
...     "/data/LibriSpeech", "results/manifests"
... )  # doctest: +SKIP
{'train-clean-100': 'results/manifests/train-clean-100.json', ...}

From the shell::

    python -m recipes.LibriSpeech.librispeech_prepare /data results/manifests
"""

import argparse
import logging
import os
import re

from recipes.prepare_common import (
    already_prepared,
    audio_duration,
    find_corpus_dir,
    write_json,
)

logger = logging.getLogger(__name__)

DEFAULT_SPLITS = ("train-clean-100", "dev-clean", "test-clean")
# The full 960 h of training audio (OpenSLR 12: 100.6 + 363.6 + 496.7 h).
TRAIN_960H = ("train-clean-100", "train-clean-360", "train-other-500")
CORPUS_DIR = "LibriSpeech"
OPTIONS_FILE = "librispeech_prepare_opts.json"
# Bump when the manifest content changes, so old manifests are rebuilt.
FORMAT_VERSION = 1
_UTT_ID = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_TRANS_SUFFIX = ".trans.txt"


def prepare_librispeech(
    data_folder,
    save_folder,
    splits=DEFAULT_SPLITS,
    skip_prep=False,
    train_splits=(),
):
    """Writes ``<save_folder>/<split>.json`` for each LibriSpeech split.

    ``train_splits`` are prepared like ``splits`` (one manifest each); the
    recipe lists their manifests (:func:`manifest_paths`) as the ASR
    training manifest, which the loader concatenates.

    Arguments
    ---------
    data_folder : str
        The ``LibriSpeech`` folder, or the folder that contains it. The
        manifests point to the audio as ``{data_root}/...`` relative to this
        folder exactly as given.
    save_folder : str
        Where the manifests and the options file are written (created if
        needed).
    splits : list of str
        Split folder names, e.g. ``["train-clean-100", "dev-clean"]``.
    skip_prep : bool
        If True, do nothing (the manifests are assumed to exist).
    train_splits : list of str
        Training split folders, prepared before ``splits``, e.g.
        ``TRAIN_960H``; a missing one is named in the error with the way to
        leave it out.

    Returns
    -------
    dict
        Maps each split to the path of its manifest.

    Raises
    ------
    FileNotFoundError
        A split folder or an audio file named by a transcript is missing.
    ValueError
        A transcript line is malformed, an audio file has no transcript
        line, an utterance id repeats, or a header cannot be read.

    Example
    -------
    >>> prepare_librispeech(
    ...     "/data", "results/manifests", splits=["dev-clean"]
    ... )  # doctest: +SKIP
    {'dev-clean': 'results/manifests/dev-clean.json'}
    """
    if isinstance(splits, str):
        splits = [splits]
    if isinstance(train_splits, str):
        train_splits = [train_splits]
    splits = list(train_splits) + [s for s in splits if s not in train_splits]
    if len(set(splits)) != len(splits):
        raise ValueError(f"splits lists a split more than once: {splits}")
    manifests = {
        split: os.path.join(save_folder, f"{split}.json") for split in splits
    }
    if skip_prep:
        logger.info("skip_prep is set: LibriSpeech preparation skipped.")
        return manifests

    corpus_dir, layout = find_corpus_dir(data_folder, CORPUS_DIR, "LibriSpeech")
    options = {
        "format_version": FORMAT_VERSION,
        "splits": splits,
        "layout": layout,
    }
    options_path = os.path.join(save_folder, OPTIONS_FILE)
    if already_prepared(options_path, manifests.values(), options):
        logger.info(
            "LibriSpeech manifests in %s are up to date, skipping.",
            save_folder,
        )
        return manifests

    # Check all splits first: a typo should fail before a long scan.
    for split in splits:
        split_dir = os.path.join(corpus_dir, split)
        if not os.path.isdir(split_dir):
            where = "the splits to prepare"
            if split in train_splits:
                where = (
                    "the training splits (e.g. --asr_train_splits="
                    "[train-clean-100] for 100 h)"
                )
            raise FileNotFoundError(
                f"LibriSpeech split folder {split_dir} does not exist: "
                f"extract {split}.tar.gz there or remove '{split}' from "
                f"{where}."
            )

    os.makedirs(save_folder, exist_ok=True)
    # An interrupted rebuild must not look finished to the next run.
    if os.path.exists(options_path):
        os.remove(options_path)
    wav_root = "{data_root}/" + (layout + "/" if layout != "." else "")
    for split in splits:
        entries = read_split(corpus_dir, split, wav_root=wav_root)
        write_json(entries, manifests[split])
        hours = sum(e["duration"] for e in entries.values()) / 3600
        logger.info(
            "Wrote %s: %d utterances, %.2f h.",
            manifests[split],
            len(entries),
            hours,
        )
    write_json(options, options_path)
    return manifests


def manifest_paths(save_folder, splits):
    """The manifests that :func:`prepare_librispeech` writes for ``splits``.

    The recipe's ``asr_train_manifest`` is this list: the loader
    (``harmonifuse_sb.dataio.load_manifest``) concatenates the manifests.

    Arguments
    ---------
    save_folder : str
        The preparation's ``save_folder``.
    splits : list of str
        Split folder names.

    Returns
    -------
    list of str
        ``<save_folder>/<split>.json`` per split, in order.

    Example
    -------
    >>> manifest_paths("m", ["train-clean-100", "train-clean-360"])
    ['m/train-clean-100.json', 'm/train-clean-360.json']
    """
    if isinstance(splits, str):
        splits = [splits]
    if not splits:
        raise ValueError(
            "No LibriSpeech training split given: list at least one, e.g. "
            "--asr_train_splits=[train-clean-100]."
        )
    return [os.path.join(save_folder, f"{split}.json") for split in splits]


def read_split(corpus_dir, split, wav_root="{data_root}/"):
    """Reads one split into manifest entries, checking transcripts and audio.

    Arguments
    ---------
    corpus_dir : str
        The folder holding the split folders.
    split : str
        The split folder name, e.g. ``"dev-clean"``.
    wav_root : str
        Prefix of the ``wav`` paths, followed by ``<split>/<spk>/...``.

    Returns
    -------
    dict
        ``{utt_id: {"wav", "duration", "spk_id", "wrd"}}`` sorted by
        speaker, chapter and utterance number.
    """
    split_dir = os.path.join(corpus_dir, split)
    transcripts, audio = [], set()
    for dirpath, dirnames, filenames in os.walk(split_dir):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(_TRANS_SUFFIX):
                transcripts.append(os.path.join(dirpath, name))
            elif name.endswith(".flac"):
                audio.add(os.path.join(dirpath, name))
    if not transcripts and not audio:
        raise FileNotFoundError(
            f"LibriSpeech split folder {split_dir} holds no .trans.txt or "
            ".flac file: is the archive fully extracted?"
        )

    entries, origin = {}, {}
    for trans_path in transcripts:
        for lineno, utt_id, words in read_transcript(trans_path):
            where = f"{trans_path}, line {lineno}"
            if utt_id in origin:
                raise ValueError(
                    f"{where}: utterance {utt_id} is already listed at "
                    f"{origin[utt_id]}."
                )
            origin[utt_id] = where
            flac = os.path.join(os.path.dirname(trans_path), utt_id + ".flac")
            if flac not in audio:
                raise FileNotFoundError(
                    f"{where}: the audio file {flac} of utterance {utt_id} "
                    "does not exist."
                )
            audio.discard(flac)
            spk, chapter = utt_id.split("-")[:2]
            entries[utt_id] = {
                "wav": f"{wav_root}{split}/{spk}/{chapter}/{utt_id}.flac",
                "duration": audio_duration(flac),
                "spk_id": spk,
                "wrd": words,
            }
    if audio:
        orphans = sorted(audio)
        first = orphans[0]
        stem = os.path.basename(first)[: -len(".flac")]
        trans = os.path.join(
            os.path.dirname(first),
            "-".join(stem.split("-")[:2]) + _TRANS_SUFFIX,
        )
        raise ValueError(
            f"{len(orphans)} audio file(s) in {split_dir} have no transcript "
            f"line, e.g. {first} (expected a line '{stem} <TRANSCRIPT>' in "
            f"{trans})."
        )

    def order(utt_id):
        return tuple(int(part) for part in utt_id.split("-"))

    return {utt_id: entries[utt_id] for utt_id in sorted(entries, key=order)}


def read_transcript(trans_path):
    r"""Yields ``(line number, utterance id, words)`` from a ``.trans.txt``.

    Arguments
    ---------
    trans_path : str
        Path to ``<spk>-<chapter>.trans.txt``.

    Yields
    ------
    lineno : int
        1-based line number, for error messages.
    utt_id : str
        ``<spk>-<chapter>-<utt>``, checked against the file name.
    words : str
        The normalised transcript (see ``normalize_words``).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "19-198.trans.txt")
    >>> with open(path, "w") as f:
    ...     _ = f.write("19-198-0000 NORTHANGER  ABBEY\n19-198-0001 IT'S ME\n")
    >>> list(read_transcript(path))
    [(1, '19-198-0000', 'northanger abbey'), (2, '19-198-0001', "it's me")]
    """
    name = os.path.basename(trans_path)
    stem = name[: -len(_TRANS_SUFFIX)]
    with open(trans_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            match = _UTT_ID.match(parts[0])
            problem = None
            if len(parts) < 2:
                problem = "no transcript after the utterance id"
            elif match is None:
                problem = (
                    f"'{parts[0]}' is not an utterance id "
                    "<speaker>-<chapter>-<utterance>"
                )
            elif f"{match[1]}-{match[2]}" != stem:
                problem = f"utterance id '{parts[0]}' does not belong in {name}"
            if problem is not None:
                raise ValueError(
                    f"{trans_path}, line {lineno}: malformed transcript line "
                    f"({problem}): {line.rstrip()!r}. Expected "
                    "'<speaker>-<chapter>-<utterance> <TRANSCRIPT>'."
                )
            yield lineno, parts[0], normalize_words(parts[1])


def normalize_words(text):
    r"""Lower-cases a transcript and joins its words with single spaces.

    Arguments
    ---------
    text : str
        A transcript as written in the corpus (upper case).

    Returns
    -------
    str
        The normalised transcript.

    Example
    -------
    >>> normalize_words("CHAPTER  ONE\tMISSUS RACHEL LYNDE IS SURPRISED\n")
    'chapter one missus rachel lynde is surprised'
    """
    return " ".join(text.lower().split())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="Write SpeechBrain JSON manifests for LibriSpeech."
    )
    parser.add_argument(
        "data_folder", help="the LibriSpeech folder or its parent"
    )
    parser.add_argument("save_folder", help="where to write the manifests")
    parser.add_argument(
        "--splits",
        nargs="+",
        default=list(DEFAULT_SPLITS),
        help="split folders to prepare (default: %(default)s)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prepare_librispeech(args.data_folder, args.save_folder, splits=args.splits)
