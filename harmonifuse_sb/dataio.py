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

import torch
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
        If the file is missing, unreadable, holds no samples, or holds NaN
        or infinite samples.

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
    check_finite(wav, path, file_rate)
    wav = wav.float().mean(dim=0)  # (N,) downmix
    if file_rate != sample_rate:
        wav = torchaudio.functional.resample(wav, file_rate, sample_rate)
    return wav


def check_finite(wav, path, file_rate, first_frame=0):
    """Refuses audio read from a file that holds NaN or infinite samples.

    Arguments
    ---------
    wav : torch.Tensor
        (C, n) samples read from ``path``.
    path : str
        The file, named in the error.
    file_rate : int
        Its sample rate, for the time in the error.
    first_frame : int
        Frame of the file where ``wav`` starts (a block of a long file).

    Raises
    ------
    AudioError
        Naming the file, how many bad samples ``wav`` holds and the time
        of the first.

    Example
    -------
    >>> check_finite(torch.zeros(1, 10), "a.wav", 10)
    >>> check_finite(torch.tensor([[0.0, float("nan")]]), "a.wav", 10, 20)
    Traceback (most recent call last):
    ...
    harmonifuse_sb.dataio.AudioError: Audio file a.wav holds 1 NaN or infinite samples (the first at 2.100 s): the file is damaged; re-export or repair it.
    """
    bad = ~torch.isfinite(wav)
    if bad.any():
        first = first_frame + int(bad.any(dim=0).nonzero()[0])
        raise AudioError(
            f"Audio file {path} holds {int(bad.sum())} NaN or infinite "
            f"samples (the first at {first / file_rate:.3f} s): the file is "
            "damaged; re-export or repair it."
        )


def check_batch(wavs, wav_lens=None, min_samples=1, sample_rate=SAMPLE_RATE):
    """Checks a batch of waveforms before it reaches an encoder.

    Arguments
    ---------
    wavs : torch.Tensor
        Waveforms, shape (B, N), float.
    wav_lens : torch.Tensor, optional
        Relative lengths, shape (B,), each in (0, 1].
    min_samples : int
        Fewest valid samples an item may have (the encoder's receptive
        field).
    sample_rate : int
        Sample rate, for durations in the messages.

    Raises
    ------
    ValueError
        Naming the argument or the batch item and saying what to do: wavs
        not a 2-D float tensor; wav_lens not of shape (B,) or outside
        (0, 1]; NaN or infinite samples; an item shorter than
        ``min_samples``.

    Example
    -------
    >>> check_batch(torch.zeros(2, 800), torch.tensor([1.0, 0.5]))
    >>> check_batch(torch.zeros(800))
    Traceback (most recent call last):
    ...
    ValueError: wavs has shape (800,); a batch is (B, N): for one waveform, pass wavs.unsqueeze(0).
    """
    if not isinstance(wavs, torch.Tensor):
        raise ValueError(
            f"wavs is a {type(wavs).__name__}; pass a torch.Tensor of shape "
            "(B, N)."
        )
    if wavs.dim() != 2:
        hint = (
            ": for one waveform, pass wavs.unsqueeze(0)"
            if wavs.dim() == 1
            else " (downmix channels first: wavs.mean(dim=-1))"
        )
        raise ValueError(
            f"wavs has shape {tuple(wavs.shape)}; a batch is (B, N){hint}."
        )
    if not wavs.is_floating_point():
        raise ValueError(
            f"wavs has dtype {wavs.dtype}; pass float samples in [-1, 1] "
            "(e.g. int16 / 32768)."
        )
    batch, max_samples = wavs.shape
    if wav_lens is not None:
        if tuple(wav_lens.shape) != (batch,):
            raise ValueError(
                f"wav_lens has shape {tuple(wav_lens.shape)} but wavs holds "
                f"{batch} waveforms: pass one relative length per waveform, "
                f"shape ({batch},)."
            )
        outside = ((wav_lens <= 0) | (wav_lens > 1)).nonzero().flatten()
        if len(outside):
            i = int(outside[0])
            raise ValueError(
                f"wav_lens[{i}] = {float(wav_lens[i]):.4g} is outside (0, 1]: "
                "wav_lens are relative lengths (valid samples / wavs.shape[1])."
            )
        n_samples = torch.round(wav_lens * max_samples).long()
    else:
        n_samples = torch.full((batch,), max_samples)
    bad = (~torch.isfinite(wavs)).any(dim=1).nonzero().flatten()
    if len(bad):
        raise ValueError(
            f"Batch item {int(bad[0])} holds NaN or infinite samples: check "
            "where the audio comes from."
        )
    short = (n_samples < min_samples).nonzero().flatten()
    if len(short):
        i = int(short[0])
        raise ValueError(
            f"Batch item {i} has {int(n_samples[i])} samples "
            f"({1000 * int(n_samples[i]) / sample_rate:.1f} ms); the encoder "
            f"needs at least {min_samples} ({1000 * min_samples / sample_rate:.1f}"
            " ms): drop it or pad it with silence."
        )


def load_manifest(path, task, data_root, min_duration=0.0):
    """Loads and checks a SpeechBrain JSON manifest of one task.

    A list of manifests is concatenated in order (e.g. the three LibriSpeech
    training splits of the 960 h); an utterance id found in two of them is
    an error that names both, since one entry would silently replace the
    other.

    Utterances shorter than ``min_duration`` (the encoder's receptive field)
    cannot be encoded: they are left out and counted in a warning that
    names the manifest and the first of them.

    Arguments
    ---------
    path : str or list of str
        JSON manifest(s): ``{id: {"wav": ..., "duration": ...,
        "wrd"|"emo": ...}}`` with ``{data_root}`` in the paths.
    task : str or harmonifuse_sb.tasks.Task
        ``"asr"`` (entries need ``wrd``), ``"ser"`` (entries need ``emo``),
        or a task, whose ``manifest_keys`` the entries need.
    data_root : str
        Replaces ``{data_root}`` in the paths.
    min_duration : float
        Shortest usable utterance, in seconds.

    Returns
    -------
    DynamicItemDataset
        Dataset whose items have ``task`` set.

    Raises
    ------
    ManifestError
        A manifest is missing, not JSON, empty, has an entry without the
        task's keys, or repeats an id of an earlier manifest of the list.
    """
    required = getattr(task, "manifest_keys", None) or REQUIRED_KEYS[task]
    task = getattr(task, "name", task)
    if not isinstance(path, str):
        paths = list(path)
        if not paths:
            raise ManifestError(f"An empty list of {task} manifests.")
        data, origin = {}, {}
        for one in paths:
            for utt_id, entry in _read_manifest(one).items():
                if utt_id in origin:
                    raise ManifestError(
                        f"Utterance id '{utt_id}' is in both {origin[utt_id]}"
                        f" and {one}: ids must be unique across the "
                        "concatenated manifests; rename one of them."
                    )
                origin[utt_id] = one
                data[utt_id] = entry
        path = " + ".join(paths)  # for the messages below
    else:
        data = _read_manifest(path)
    for utt_id, entry in data.items():
        if not isinstance(entry, dict):
            raise ManifestError(f"{path}: entry '{utt_id}' is not an object.")
        missing = [k for k in required if k not in entry]
        if missing:
            raise ManifestError(
                f"{path}: entry '{utt_id}' lacks {missing} (a {task} "
                f"manifest needs {list(required)})."
            )
        entry["wav"] = entry["wav"].replace("{data_root}", data_root)
        entry["task"] = task
    too_short = [
        utt_id
        for utt_id, entry in data.items()
        if float(entry["duration"]) < min_duration
    ]
    if too_short:
        logger.warning(
            "%s: %d of %d utterances are shorter than %.3f s, the shortest "
            "audio the encoder takes, and are left out (first: %s).",
            path,
            len(too_short),
            len(data),
            min_duration,
            ", ".join(too_short[:5]),
        )
        for utt_id in too_short:
            del data[utt_id]
        if not data:
            raise ManifestError(
                f"Manifest {path}: every utterance is shorter than "
                f"{min_duration:.3f} s, the shortest audio the encoder takes."
            )
    return DynamicItemDataset(data)


def _read_manifest(path):
    """The entries of one JSON manifest, checked to be a non-empty object."""
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
    return data


def add_pipelines(dataset, task):
    """Adds the audio pipeline and the task's own to a task's dataset.

    Items get ``sig`` (16 kHz mono), ``task``, and what the task's
    ``add_pipeline`` provides (``wrd_norm``, a normalised transcript, for a
    ``Transcription``; ``<label_key>_encoded``, a class index, for a
    ``Classification``).

    Arguments
    ---------
    dataset : DynamicItemDataset
        From ``load_manifest``.
    task : harmonifuse_sb.tasks.Task
        The dataset's task.
    """

    @takes("wav")
    @provides("sig")
    def audio_pipeline(wav):
        return load_audio(wav)

    dataset.add_dynamic_item(audio_pipeline)
    dataset.set_output_keys(["id", "task", "sig"] + task.add_pipeline(dataset))


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
