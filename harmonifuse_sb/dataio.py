"""Data pipelines: manifests, audio loading and label encoding.

Shared by training (``train.py``) and inference (``HarmoniFuseSLM``), so both
read audio the same way: any sample rate and channel count becomes 16 kHz
mono (channels are averaged, then resampled with torchaudio), and a missing,
empty or unreadable file raises an ``AudioError`` that names it.

Authors
 * HarmoniFuse-SB developers 2026
"""

import json
import logging
import os

import torchaudio
from speechbrain.dataio import audio_io
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.data_pipeline import provides, takes

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
REQUIRED_KEYS = {
    "asr": ("wav", "duration", "wrd"),
    "ser": ("wav", "duration", "emo"),
}


class AudioError(RuntimeError):
    """An audio file that cannot be used; the message names it."""


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names file and entry."""


def load_audio(path, sample_rate=SAMPLE_RATE):
    """Reads an audio file as a mono float waveform at ``sample_rate``.

    Arguments
    ---------
    path : str
        Audio file (any format soundfile reads: wav, flac, ogg, ...).
    sample_rate : int
        Target sample rate.

    Returns
    -------
    torch.Tensor
        (N,) float32 waveform.

    Raises
    ------
    AudioError
        If the file is missing, unreadable or holds no samples.

    Example
    -------
    >>> import tempfile, soundfile, numpy
    >>> path = tempfile.mktemp(suffix=".wav")
    >>> stereo = numpy.zeros((44100, 2), dtype="float32")
    >>> soundfile.write(path, stereo, 44100)
    >>> load_audio(path).shape
    torch.Size([16000])
    """
    if not os.path.isfile(path):
        raise AudioError(f"Audio file not found: {path}")
    try:
        wav, file_rate = audio_io.load(path, always_2d=True)  # (C, N)
    except Exception as err:  # soundfile raises several error types
        raise AudioError(f"Cannot read audio file {path}: {err}") from err
    if wav.numel() == 0:
        raise AudioError(f"Audio file {path} holds no samples.")
    wav = wav.float().mean(dim=0)  # (N,) downmix
    if file_rate != sample_rate:
        wav = torchaudio.functional.resample(wav, file_rate, sample_rate)
    return wav


def load_manifest(path, task, data_root):
    """Loads and checks a SpeechBrain JSON manifest of one task.

    Arguments
    ---------
    path : str
        JSON manifest: ``{id: {"wav": ..., "duration": ..., "wrd"|"emo": ...}}``
        with ``{data_root}`` in the paths.
    task : str
        ``"asr"`` (entries need ``wrd``) or ``"ser"`` (entries need ``emo``).
    data_root : str
        Replaces ``{data_root}`` in the paths.

    Returns
    -------
    DynamicItemDataset
        Dataset whose items have ``task`` set.
    """
    if not os.path.isfile(path):
        raise ManifestError(f"Manifest not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ManifestError(
            f"Manifest {path} is not valid JSON: {err}"
        ) from err
    if not isinstance(data, dict) or not data:
        raise ManifestError(
            f"Manifest {path} must be a non-empty JSON object of entries."
        )
    for utt_id, entry in data.items():
        if not isinstance(entry, dict):
            raise ManifestError(f"{path}: entry '{utt_id}' is not an object.")
        missing = [k for k in REQUIRED_KEYS[task] if k not in entry]
        if missing:
            raise ManifestError(
                f"{path}: entry '{utt_id}' lacks {missing} (a {task} "
                f"manifest needs {list(REQUIRED_KEYS[task])})."
            )
        entry["wav"] = entry["wav"].replace("{data_root}", data_root)
        entry["task"] = task
    return DynamicItemDataset(data)


def add_pipelines(dataset, task, label_encoder=None):
    """Adds the audio, text and label pipelines to a task's dataset.

    Items get ``sig`` (16 kHz mono), ``task``, and ``wrd`` (normalised
    transcript, ASR) or ``emo_encoded`` (class index, SER).

    Arguments
    ---------
    dataset : DynamicItemDataset
        From ``load_manifest``.
    task : str
        ``"asr"`` or ``"ser"``.
    label_encoder : speechbrain.dataio.encoder.CategoricalEncoder
        Emotion labels (SER only).
    """

    @takes("wav")
    @provides("sig")
    def audio_pipeline(wav):
        return load_audio(wav)

    keys = ["id", "task", "sig"]
    dataset.add_dynamic_item(audio_pipeline)
    if task == "asr":

        @takes("id", "wrd")
        @provides("wrd_norm")
        def text_pipeline(utt_id, wrd):
            words = " ".join(str(wrd).split())
            if not words:
                raise ManifestError(
                    f"Utterance '{utt_id}' has an empty transcript."
                )
            return words

        dataset.add_dynamic_item(text_pipeline)
        keys.append("wrd_norm")
    else:
        known = set(label_encoder.lab2ind)

        @takes("id", "emo")
        @provides("emo_encoded")
        def label_pipeline(utt_id, emo):
            if emo not in known:
                raise ManifestError(
                    f"Utterance '{utt_id}' has emotion '{emo}', not one of "
                    f"{sorted(known)} (set `emotions` in the YAML)."
                )
            return label_encoder.encode_label_torch(emo)

        dataset.add_dynamic_item(label_pipeline)
        keys.append("emo_encoded")
    dataset.set_output_keys(keys)


def check_labels(dataset, label_encoder, path):
    """Fails early if a SER manifest holds a label outside the class list.

    Arguments
    ---------
    dataset : DynamicItemDataset
        A SER dataset.
    label_encoder : CategoricalEncoder
        The known labels.
    path : str
        The manifest, for the message.
    """
    known = set(label_encoder.lab2ind)
    with dataset.output_keys_as(["id", "emo"]):
        for item in dataset:
            if item["emo"] not in known:
                raise ManifestError(
                    f"{path}: utterance '{item['id']}' has emotion "
                    f"'{item['emo']}', not one of {sorted(known)}."
                )


def make_label_encoder(emotions):
    """A CategoricalEncoder with the emotions in the given order.

    Arguments
    ---------
    emotions : list of str
        Class labels; index i is class i.

    Returns
    -------
    speechbrain.dataio.encoder.CategoricalEncoder

    Example
    -------
    >>> enc = make_label_encoder(["neutral", "happy"])
    >>> enc.encode_label("happy")
    1
    """
    from speechbrain.dataio.encoder import CategoricalEncoder

    if len(set(emotions)) != len(emotions):
        raise ValueError(f"Duplicate emotion labels: {emotions}")
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(emotions, sequence_input=False)
    encoder.expect_len(len(emotions))
    return encoder
