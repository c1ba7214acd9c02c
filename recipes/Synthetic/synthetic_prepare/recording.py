"""How an utterance is "recorded": speed, level, background noise and
babble, the rendering of planned utterances (in worker processes) and the
noise clips for augmentation.

Authors
 * HarmoniFuse contributors
"""

import multiprocessing as mp
import os

import numpy as np
import soundfile as sf
import torch
import torchaudio

from recipes.Synthetic.synthetic_prepare.espeak import ESpeakSynth
from recipes.Synthetic.synthetic_prepare.grammar import random_sentence
from recipes.Synthetic.synthetic_prepare.prosody import (
    loudness_envelope,
    vocal_effort_tilt,
)
from recipes.Synthetic.synthetic_prepare.settings import (
    BABBLE_SECONDS,
    BABBLE_TALKERS,
    BABBLE_TRACKS,
    NOISE_CLIP_SECONDS,
    NOISE_CLIPS,
    RECORDING,
    SYNTH_VOLUME,
)


def speech_level_db(wav):
    """Returns the level of speech in dB relative to full scale.

    The level is the mean power of the 20 ms frames (at 22.05 kHz) that are
    at most 30 dB below the loudest one, so pauses do not count.

    Arguments
    ---------
    wav : numpy.ndarray
        int16 samples, or float samples in [-1, 1] (at 16 or 22.05 kHz).

    Returns
    -------
    float
        The level in dB.

    Example
    -------
    >>> t = np.arange(22050) / 22050
    >>> wav = (16384 * np.sin(2 * np.pi * 200 * t)).astype(np.int16)
    >>> round(speech_level_db(wav), 1)  # half scale sine: -6 - 3 dB
    -9.0
    """
    x = wav.astype(np.float64)
    if np.issubdtype(wav.dtype, np.integer):
        x = x / 32768.0
    frame = 441
    power = (x[: len(x) // frame * frame].reshape(-1, frame) ** 2).mean(1)
    return float(10 * np.log10(power[power > power.max() * 1e-3].mean()))


def recording_conditions(split, rng):
    """Draws how one utterance is recorded (``RECORDING``), independently of
    its emotion and voice.

    Arguments
    ---------
    split : str
        "train", "valid" or "test" (sets the SNR range).
    rng : numpy.random.Generator
        The random generator.

    Returns
    -------
    dict
        "level_db", "snr_db", "noise", "lead_s", "trail_s", "speed" and
        "noise_seed" (seeds the noise and the loudness envelope).

    Example
    -------
    >>> cond = recording_conditions("test", np.random.default_rng(0))
    >>> 25 <= cond["snr_db"] <= 45, cond["noise"] in RECORDING["noise"]
    (True, True)
    """
    return {
        "level_db": round(float(rng.uniform(*RECORDING["level_db"])), 2),
        "snr_db": round(float(rng.uniform(*RECORDING["snr_db"][split])), 2),
        "noise": str(rng.choice(RECORDING["noise"])),
        "lead_s": round(float(rng.uniform(*RECORDING["lead_s"])), 3),
        "trail_s": round(float(rng.uniform(*RECORDING["trail_s"])), 3),
        "speed": float(rng.choice(RECORDING["speed"])),
        "noise_seed": int(rng.integers(2**31)),
    }


def pink_noise(num_samples, rng):
    """Pink (1/f power) noise of unit RMS, by shaping white noise's spectrum.

    Arguments
    ---------
    num_samples : int
        Length.
    rng : numpy.random.Generator
        The random generator.

    Returns
    -------
    numpy.ndarray
        float64 samples, shape (num_samples,).

    Example
    -------
    >>> x = pink_noise(16000, np.random.default_rng(0))
    >>> spec = np.abs(np.fft.rfft(x)) ** 2
    >>> bool(spec[10:100].mean() > 10 * spec[4000:8000].mean())
    True
    """
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    spectrum /= np.sqrt(np.maximum(freqs, 1.0))
    noise = np.fft.irfft(spectrum, n=num_samples)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def make_babble(split_voices, synth, resample, seed):
    """Babble tracks: BABBLE_TALKERS voices of one split talking at once.

    Each talker says random grammar sentences with neutral prosody for
    BABBLE_SECONDS; talkers are brought to the same level and summed.

    Arguments
    ---------
    split_voices : dict
        {voice name: baseline} of one split.
    synth : ESpeakSynth
        The synthesiser.
    resample : callable
        Maps a float32 tensor at the synthesiser's rate to the output rate.
    seed : list of int
        Seed of the sentences and voices.

    Returns
    -------
    list of numpy.ndarray
        BABBLE_TRACKS float64 tracks of unit RMS at the output rate.
    """
    rng = np.random.default_rng(seed)
    names = sorted(split_voices)
    tracks = []
    for _ in range(BABBLE_TRACKS):
        talkers = []
        for name in rng.choice(names, BABBLE_TALKERS):
            base = split_voices[name]
            pieces, seconds = [], 0.0
            while seconds < BABBLE_SECONDS:
                wav = synth.synth(
                    random_sentence(rng),
                    voice=name,
                    rate=base["rate"],
                    pitch=base["pitch"],
                    range_=base["range"],
                    volume=SYNTH_VOLUME,
                )
                pieces.append(wav)
                seconds += len(wav) / synth.sample_rate
            with torch.no_grad():
                x = torch.from_numpy(np.concatenate(pieces) / 32768.0)
                x = resample(x.float()).double().numpy()
            talkers.append(x / (np.sqrt(np.mean(x**2)) + 1e-12))
        length = min(len(t) for t in talkers)
        track = np.sum([t[:length] for t in talkers], axis=0)
        tracks.append(track / np.sqrt(np.mean(track**2)))
    return tracks


def background_noise(kind, num_samples, rng, babble):
    """Unit-RMS background noise of one type.

    Arguments
    ---------
    kind : str
        "white", "pink" or "babble".
    num_samples : int
        Length.
    rng : numpy.random.Generator
        Draws the noise (white, pink) or the track and offset (babble).
    babble : list of numpy.ndarray
        Babble tracks of the split (``make_babble``).

    Returns
    -------
    numpy.ndarray
        float64 samples, shape (num_samples,).
    """
    if kind == "white":
        return rng.standard_normal(num_samples)
    if kind == "pink":
        return pink_noise(num_samples, rng)
    if kind != "babble":
        raise ValueError(f"Unknown noise type {kind!r}: {RECORDING['noise']}")
    track = babble[rng.integers(len(babble))]
    repeats = num_samples // len(track) + 2
    looped = np.tile(track, repeats)
    start = rng.integers(len(track))
    return looped[start : start + num_samples]


class _Renderer:
    """Synthesises planned utterances, "records" them (speed, loudness
    dynamics, level, silence, background noise) and writes 16-bit wavs.
    """

    def __init__(self, data_folder, sample_rate, variants=None):
        self.data_folder = data_folder
        self.sample_rate = sample_rate
        self.synth = ESpeakSynth(variants=variants)
        self.babble = {}
        self._resamplers = {}

    def resampler(self, speed=1.0):
        """Resamples the synthesiser's output to ``sample_rate / speed``
        samples per second (then read at ``sample_rate``: ``speed`` times
        faster).
        """
        new_rate = int(round(self.sample_rate / speed / 50) * 50)
        if new_rate not in self._resamplers:
            self._resamplers[new_rate] = torchaudio.transforms.Resample(
                self.synth.sample_rate, new_rate
            )
        return self._resamplers[new_rate]

    def record(self, wav, utt):
        """Turns clean int16 speech at the synthesiser's rate into a
        recording at ``sample_rate``: float64 samples and the speech span.
        """
        rng = np.random.default_rng(utt["noise_seed"])
        with torch.no_grad():
            x = torch.from_numpy(wav / 32768.0).float()
            speech = self.resampler(utt["speed"])(x).double().numpy()
        speech = vocal_effort_tilt(speech, self.sample_rate, utt["tilt"])
        speech = speech * loudness_envelope(
            len(speech), self.sample_rate, utt["dynamics"], rng
        )
        level = speech_level_db(speech)
        speech = speech * 10 ** ((utt["level_db"] - level) / 20)
        lead = int(utt["lead_s"] * self.sample_rate)
        trail = int(utt["trail_s"] * self.sample_rate)
        audio = np.concatenate([np.zeros(lead), speech, np.zeros(trail)])
        noise = background_noise(
            utt["noise"], len(audio), rng, self.babble.get(utt["split"])
        )
        # Unit-RMS noise at snr_db below the speech level.
        audio = audio + noise * 10 ** ((utt["level_db"] - utt["snr_db"]) / 20)
        peak = np.abs(audio).max()
        if peak > 0.99:  # a limiter, as a recorder's would
            audio = audio * (0.99 / peak)
        span = (
            lead / self.sample_rate,
            (lead + len(speech)) / self.sample_rate,
        )
        return audio, span

    def __call__(self, job):
        """Renders one utterance; returns (id, relative path, duration,
        speech start, speech end).
        """
        name, utt = job
        wav = self.synth.synth(
            utt["wrd"],
            voice=utt["voice"],
            rate=utt["rate"],
            pitch=utt["pitch"],
            range_=utt["range"],
            volume=SYNTH_VOLUME,
        )
        audio, (start, end) = self.record(wav, utt)
        wav = np.clip(np.round(audio * 32768.0), -32768, 32767)
        relative = f"wavs/{name}/{utt['id']}.wav"
        sf.write(
            os.path.join(self.data_folder, relative),
            wav.astype(np.int16),
            self.sample_rate,
            subtype="PCM_16",
        )
        return utt["id"], relative, len(wav) / self.sample_rate, start, end


def write_noise_clips(data_folder, babble, sample_rate, seed):
    """Writes noise clips for on-the-fly augmentation and their CSV.

    ``NOISE_CLIPS`` clips per type (white, pink, babble of the training
    voices), ``NOISE_CLIP_SECONDS`` long, at -30 dBFS RMS, listed in
    ``noise.csv`` in the format of SpeechBrain's ``AddNoise`` (``ID``,
    ``duration``, ``wav`` with ``$data_root``, ``wav_format``, ``wav_opts``).

    Arguments
    ---------
    data_folder : str
        The corpus folder.
    babble : list of numpy.ndarray
        Babble tracks of the training voices.
    sample_rate : int
        Sample rate.
    seed : int
        Seed of the noise.
    """
    rng = np.random.default_rng([seed, 99])
    folder = os.path.join(data_folder, "wavs", "noise")
    os.makedirs(folder, exist_ok=True)
    num_samples = int(NOISE_CLIP_SECONDS * sample_rate)
    rows = ["ID,duration,wav,wav_format,wav_opts"]
    for kind in RECORDING["noise"]:
        for i in range(NOISE_CLIPS):
            noise = background_noise(kind, num_samples, rng, babble)
            noise = noise * 10 ** (-30 / 20)
            name = f"{kind}_{i}"
            sf.write(
                os.path.join(folder, f"{name}.wav"),
                np.round(noise * 32768).astype(np.int16),
                sample_rate,
                subtype="PCM_16",
            )
            rows.append(
                f"{name},{NOISE_CLIP_SECONDS},$data_root/wavs/noise/"
                f"{name}.wav,wav,"
            )
    with open(os.path.join(data_folder, "noise.csv"), "w") as fout:
        fout.write("\n".join(rows) + "\n")


_worker_renderer = None  # the renderer of a worker process


def _init_worker(renderer):
    """Makes a worker process's renderer (one thread: processes share CPUs)."""
    global _worker_renderer
    torch.set_num_threads(1)
    _worker_renderer = renderer


def _render_in_worker(job):
    """Renders one utterance in a worker process."""
    return _worker_renderer(job)


def _render_all(jobs, renderer, num_workers):
    """Renders the jobs, in parallel where fork is available; in order."""
    if num_workers <= 1 or "fork" not in mp.get_all_start_methods():
        return [renderer(job) for job in jobs]
    # fork: the workers inherit the renderer and need no import of this file.
    context = mp.get_context("fork")
    with context.Pool(num_workers, _init_worker, (renderer,)) as pool:
        return pool.map(_render_in_worker, jobs, chunksize=64)
