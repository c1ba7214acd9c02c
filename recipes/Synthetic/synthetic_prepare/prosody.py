"""Emotion as prosody: per-utterance eSpeak parameters, loudness dynamics
and vocal-effort tilt.

Authors
 * HarmoniFuse contributors
"""

import numpy as np
import scipy.signal

from recipes.Synthetic.synthetic_prepare.settings import (
    DYNAMICS_RATE_HZ,
    EMOTION_PROSODY,
    EMOTIONS,
    JITTER,
    PARAMETER_LIMITS,
    TILT_CORNER_HZ,
)


def utterance_prosody(baseline, emotion, rng, emotion_prosody=None):
    """Draws the eSpeak parameters, loudness dynamics and vocal-effort tilt
    of one utterance.

    The target is the voice's baseline moved by ``EMOTION_PROSODY[emotion]``;
    a small Gaussian jitter (``JITTER``) is added, then the values are
    clipped to eSpeak's limits.

    Arguments
    ---------
    baseline : dict
        The voice's "pitch", "range" and "rate".
    emotion : str
        One of ``EMOTIONS`` ("neutral" for the ASR sets).
    rng : numpy.random.Generator
        Draws the jitter.
    emotion_prosody : dict, optional
        The emotion table (default: ``EMOTION_PROSODY``); see
        ``merge_emotion_prosody``.

    Returns
    -------
    dict
        Integer "pitch", "range" and "rate", "dynamics" (dB) and "tilt"
        (dB).

    Example
    -------
    >>> base = {"pitch": 50, "range": 50, "rate": 175}
    >>> rng = np.random.default_rng(0)
    >>> sad = utterance_prosody(base, "sad", rng)
    >>> angry = utterance_prosody(base, "angry", rng)
    >>> sad["rate"] < 175 < angry["rate"], sad["dynamics"] < angry["dynamics"]
    (True, True)
    """
    table = EMOTION_PROSODY if emotion_prosody is None else emotion_prosody
    if emotion not in table:
        raise ValueError(f"Unknown emotion '{emotion}'; use one of {EMOTIONS}")
    offset = table[emotion]
    values = {
        "pitch": baseline["pitch"] + offset["pitch"],
        "range": baseline["range"] + offset["range"],
        "rate": baseline["rate"] * offset["rate"],
    }
    values["pitch"] += rng.normal(0, JITTER["pitch"])
    values["range"] += rng.normal(0, JITTER["range"])
    values["rate"] *= 1 + rng.normal(0, JITTER["rate"])
    prosody = {
        name: int(np.clip(round(value), *PARAMETER_LIMITS[name]))
        for name, value in values.items()
    }
    prosody["dynamics"] = offset["dynamics"]
    prosody["tilt"] = offset["tilt"]
    return prosody


def merge_emotion_prosody(overrides=None):
    """``EMOTION_PROSODY`` with some of its values replaced.

    Arguments
    ---------
    overrides : dict, optional
        {emotion: {cue: value}}, cues among "pitch", "range" (eSpeak
        units added to the voice's baseline), "rate" (factor), "dynamics"
        and "tilt" (dB).

    Returns
    -------
    dict
        The full table, {emotion: {cue: value}}.

    Raises
    ------
    ValueError
        If an emotion or a cue is unknown, or a value is not a number.

    Example
    -------
    >>> table = merge_emotion_prosody({"angry": {"tilt": 0}})
    >>> table["angry"]["tilt"], table["angry"]["rate"]
    (0.0, 1.45)
    """
    table = {emo: dict(cues) for emo, cues in EMOTION_PROSODY.items()}
    for emotion, cues in (overrides or {}).items():
        if emotion not in table:
            raise ValueError(
                f"emotion_prosody: unknown emotion '{emotion}'; the corpus "
                f"renders {list(EMOTIONS)}."
            )
        for cue, value in cues.items():
            if cue not in table[emotion]:
                raise ValueError(
                    f"emotion_prosody: unknown cue '{cue}' for '{emotion}'; "
                    f"the cues are {sorted(table[emotion])}."
                )
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(
                    f"emotion_prosody: {emotion}.{cue} = {value!r} is not a "
                    "number."
                )
            table[emotion][cue] = type(table[emotion][cue])(value)
    return table


def vocal_effort_tilt(wav, sample_rate, tilt_db, corner_hz=TILT_CORNER_HZ):
    """Raises (or lowers) the spectrum above ``corner_hz`` by ``tilt_db``.

    A first-order shelf, ``x + (10^(tilt/20) - 1) * highpass(x)``: the gain
    is about 0 dB well below the corner and ``tilt_db`` well above it.
    Raised vocal effort (anger, joy) flattens the voice's spectral slope, a
    relaxed or soft voice (sadness) steepens it (the alpha ratio and
    Hammarberg index of eGeMAPS, Eyben et al., IEEE TAC 2016).

    Arguments
    ---------
    wav : numpy.ndarray
        Samples, shape (num_samples,).
    sample_rate : int
        Sample rate in Hz.
    tilt_db : float
        Gain of the high band in dB; 0 returns ``wav`` unchanged.
    corner_hz : float
        Corner frequency of the shelf in Hz.

    Returns
    -------
    numpy.ndarray
        float64 samples, shape (num_samples,).

    Example
    -------
    >>> t = np.arange(16000) / 16000
    >>> low, high = np.sin(2 * np.pi * 100 * t), np.sin(2 * np.pi * 4000 * t)
    >>> gain = lambda x: float(20 * np.log10(
    ...     np.std(vocal_effort_tilt(x, 16000, 8.0)) / np.std(x)))
    >>> round(gain(low), 1), round(gain(high), 1)
    (0.2, 7.9)
    """
    x = np.asarray(wav, dtype=np.float64)
    if tilt_db == 0:
        return x
    b, a = scipy.signal.butter(1, corner_hz, btype="highpass", fs=sample_rate)
    return x + (10 ** (tilt_db / 20) - 1) * scipy.signal.lfilter(b, a, x)


def loudness_envelope(num_samples, sample_rate, depth_db, rng):
    """A slow random gain curve: the loudness dynamics of an utterance.

    Gaussian control points at ``DYNAMICS_RATE_HZ`` (about the syllable
    rate), standard deviation ``depth_db`` dB, linearly interpolated.

    Arguments
    ---------
    num_samples : int
        Length.
    sample_rate : int
        Sample rate in Hz.
    depth_db : float
        Standard deviation of the gain in dB.
    rng : numpy.random.Generator
        The random generator.

    Returns
    -------
    numpy.ndarray
        Linear gains, shape (num_samples,).

    Example
    -------
    >>> gain = loudness_envelope(16000, 16000, 6.0, np.random.default_rng(0))
    >>> gain.shape, bool(gain.max() / gain.min() > 2)
    ((16000,), True)
    """
    n_points = int(num_samples / sample_rate * DYNAMICS_RATE_HZ) + 2
    points = rng.standard_normal(n_points) * depth_db
    positions = np.linspace(0, num_samples - 1, n_points)
    envelope_db = np.interp(np.arange(num_samples), positions, points)
    return 10 ** (envelope_db / 20)
