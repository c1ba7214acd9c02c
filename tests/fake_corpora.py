"""Small fake LibriSpeech and IEMOCAP trees with synthesised audio, for tests.

The trees follow the real layouts and file formats closely enough for the
preparation scripts in ``recipes/`` (and a training run on their manifests):

* ``make_librispeech_tree``: ``LibriSpeech/<split>/<spk>/<chapter>/`` with
  16 kHz FLAC files and ``<spk>-<chapter>.trans.txt`` in upper case;
* ``make_iemocap_tree``: ``IEMOCAP_full_release/Session{1..5}/`` with 16 kHz
  wavs under ``sentences/wav/<dialog>/`` and EmoEvaluation files with their
  ``%``-header, annotator lines, blank lines, and dropped (``xxx``, ``fru``,
  ``sur``) and merged (``exc``) labels.

Audio is a short tone (0.5 to 1.5 s) with a little noise. In the IEMOCAP
tree the pitch and loudness follow the emotion, so a model has something to
learn, though the tests only need valid files. Both builders return a
``FakeCorpus`` that says what was written, for the tests to compare with.

Example
-------
>>> import tempfile
>>> corpus = make_librispeech_tree(tempfile.mkdtemp(), {"dev-clean": 2})
>>> sorted(corpus.utterances["dev-clean"])
['1000-100-0000', '1001-101-0000']
"""

import dataclasses
import os

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
WORDS = (
    "THE CAT SAT ON A MAT HELLO WORLD SPEECH EMOTION RIVER STONE DON'T "
    "WORRY MISSUS RACHEL CHAPTER ONE TWO"
).split()
DEFAULT_LIBRISPEECH_SPLITS = {
    "train-clean-100": 8,
    "dev-clean": 4,
    "test-clean": 4,
}
# Raw labels cycled through per session: four-class ones, the merged ``exc``
# and some dropped ones.
DEFAULT_IEMOCAP_LABELS = tuple(
    "neu hap exc sad ang xxx neu fru ang sad sur exc".split()
)
IEMOCAP_EMOTIONS = {
    "neu": "neutral",
    "hap": "happy",
    "exc": "happy",
    "sad": "sad",
    "ang": "angry",
}
# Pitch (Hz) and amplitude per raw label for the synthetic IEMOCAP audio.
_PROSODY = {
    "neu": (150.0, 0.2),
    "hap": (240.0, 0.35),
    "exc": (260.0, 0.4),
    "sad": (110.0, 0.12),
    "ang": (300.0, 0.6),
}


@dataclasses.dataclass
class FakeCorpus:
    """What a fake-corpus builder wrote.

    Arguments
    ---------
    data_folder : str
        The folder to give to the preparation (and to use as
        ``{data_root}``).
    corpus_dir : str
        The corpus folder itself (``LibriSpeech`` / ``IEMOCAP_full_release``).
    utterances : dict
        LibriSpeech: ``{split: {utt_id: info}}`` with ``path``, ``text``
        (as written, upper case), ``spk_id``, ``duration``.
        IEMOCAP: ``{utt_id: info}`` with ``path``, ``session``, ``spk_id``,
        ``label`` (raw), ``emo`` (four-class name or None if dropped),
        ``duration``, ``eval_file``.
    """

    data_folder: str
    corpus_dir: str
    utterances: dict


def synth_audio(rng, duration, pitch=200.0, amplitude=0.3):
    """Returns a tone with a noise burst and a smooth envelope.

    Arguments
    ---------
    rng : numpy.random.Generator
        Source of randomness.
    duration : float
        Length in seconds.
    pitch : float
        Fundamental frequency in Hz.
    amplitude : float
        Peak amplitude (below 1).

    Returns
    -------
    numpy.ndarray
        float32 samples at ``SAMPLE_RATE``.
    """
    n = int(round(duration * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    tone = np.sin(2 * np.pi * pitch * t) + 0.3 * np.sin(4 * np.pi * pitch * t)
    burst = np.zeros(n)
    length = n // 4
    start = rng.integers(0, n - length + 1)
    burst[start : start + length] = rng.normal(0, 0.3, length)
    envelope = np.sin(np.pi * np.arange(n) / max(n - 1, 1))
    signal = amplitude * envelope * (tone / 1.3) + 0.05 * burst
    return np.clip(signal, -0.99, 0.99).astype(np.float32)


def make_librispeech_tree(
    root,
    splits=None,
    speakers_per_split=2,
    nested=True,
    seed=0,
):
    """Writes a fake LibriSpeech corpus in the real layout.

    Each split gets its own speakers (one chapter each), as in LibriSpeech;
    its utterances are spread over them.

    Arguments
    ---------
    root : str
        Folder to write into (created if needed).
    splits : dict
        ``{split: number of utterances}``; default
        ``{"train-clean-100": 8, "dev-clean": 4, "test-clean": 4}``.
    speakers_per_split : int
        Number of speakers in each split.
    nested : bool
        If True, write ``root/LibriSpeech/<split>``, else ``root/<split>``.
    seed : int
        Seed of the texts, durations and audio.

    Returns
    -------
    FakeCorpus
        ``data_folder`` is ``root``.
    """
    splits = dict(DEFAULT_LIBRISPEECH_SPLITS if splits is None else splits)
    rng = np.random.default_rng(seed)
    corpus_dir = os.path.join(root, "LibriSpeech") if nested else root
    utterances = {}
    for split_index, (split, n_utts) in enumerate(splits.items()):
        utterances[split] = {}
        lines = {}  # (spk, chapter) -> transcript lines
        for i in range(n_utts):
            spk = str(1000 + 10 * split_index + i % speakers_per_split)
            chapter = str(100 + 10 * split_index + i % speakers_per_split)
            utt_id = f"{spk}-{chapter}-{i // speakers_per_split:04d}"
            text = " ".join(rng.choice(WORDS, size=rng.integers(2, 7)))
            folder = os.path.join(corpus_dir, split, spk, chapter)
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, utt_id + ".flac")
            audio = synth_audio(
                rng, rng.uniform(0.5, 1.5), pitch=rng.uniform(100, 300)
            )
            sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
            lines.setdefault((spk, chapter), []).append(f"{utt_id} {text}")
            utterances[split][utt_id] = {
                "path": path,
                "text": text,
                "spk_id": spk,
                "duration": len(audio) / SAMPLE_RATE,
            }
        for (spk, chapter), chapter_lines in lines.items():
            trans = os.path.join(
                corpus_dir, split, spk, chapter, f"{spk}-{chapter}.trans.txt"
            )
            with open(trans, "w", encoding="utf-8") as f:
                f.write("\n".join(chapter_lines) + "\n")
    return FakeCorpus(root, corpus_dir, utterances)


def make_iemocap_tree(
    root,
    per_session=12,
    labels=DEFAULT_IEMOCAP_LABELS,
    nested=True,
    seed=0,
):
    """Writes a fake IEMOCAP corpus (five sessions) in the real layout.

    Each session has an improvised and a scripted dialog; utterances
    alternate between the dialogs and between the female and the male
    speaker, and take their raw labels from ``labels`` in turn.

    Arguments
    ---------
    root : str
        Folder to write into (created if needed).
    per_session : int
        Labelled utterances per session (dropped labels included).
    labels : sequence of str
        Raw labels cycled through in each session.
    nested : bool
        If True, write ``root/IEMOCAP_full_release/Session<N>``, else
        ``root/Session<N>``.
    seed : int
        Seed of the durations and audio.

    Returns
    -------
    FakeCorpus
        ``data_folder`` is ``root``.
    """
    rng = np.random.default_rng(seed)
    corpus_dir = os.path.join(root, "IEMOCAP_full_release") if nested else root
    utterances = {}
    for session in range(1, 6):
        session_dir = os.path.join(corpus_dir, f"Session{session}")
        eval_dir = os.path.join(session_dir, "dialog", "EmoEvaluation")
        # Sub-folders exist in the real corpus and must not be read.
        os.makedirs(os.path.join(eval_dir, "Categorical"), exist_ok=True)
        dialogs = [
            f"Ses{session:02d}F_impro01",
            f"Ses{session:02d}M_script01_1",
        ]
        blocks = {dialog: [] for dialog in dialogs}
        counters = {}
        clock = {dialog: 1.0 for dialog in dialogs}
        for i in range(per_session):
            dialog = dialogs[i % 2]
            gender = "FM"[(i // 2) % 2]
            index = counters.get((dialog, gender), 0)
            counters[(dialog, gender)] = index + 1
            utt_id = f"{dialog}_{gender}{index:03d}"
            label = labels[i % len(labels)]
            pitch, amplitude = _PROSODY.get(label, (200.0, 0.25))
            pitch *= 1.4 if gender == "F" else 1.0
            audio = synth_audio(
                rng, rng.uniform(0.5, 1.5), pitch=pitch, amplitude=amplitude
            )
            wav_dir = os.path.join(session_dir, "sentences", "wav", dialog)
            os.makedirs(wav_dir, exist_ok=True)
            path = os.path.join(wav_dir, utt_id + ".wav")
            sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
            start = clock[dialog]
            end = start + len(audio) / SAMPLE_RATE
            clock[dialog] = end + 0.5
            blocks[dialog].append(
                f"[{start:.4f} - {end:.4f}]\t{utt_id}\t{label}\t"
                "[2.5000, 3.0000, 2.5000]\n"
                "C-E2:\tNeutral;\t()\n"
                "C-E3:\tFrustration; Anger;\t(a bit tense)\n"
                "A-E3:\tval 3; act 2; dom  2;\t()\n"
            )
            utterances[utt_id] = {
                "path": path,
                "session": session,
                "spk_id": f"Ses{session:02d}{gender}",
                "label": label,
                "emo": IEMOCAP_EMOTIONS.get(label),
                "duration": len(audio) / SAMPLE_RATE,
                "eval_file": os.path.join(eval_dir, dialog + ".txt"),
            }
        for dialog, dialog_blocks in blocks.items():
            with open(os.path.join(eval_dir, dialog + ".txt"), "w") as f:
                f.write(
                    "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
                )
                f.write("\n".join(dialog_blocks) + "\n")
            categorical = os.path.join(
                eval_dir, "Categorical", dialog + "_e2_cat.txt"
            )
            with open(categorical, "w") as f:
                f.write(f"{dialog}_F000 :Neutral state; ()\n")
    return FakeCorpus(root, corpus_dir, utterances)
