"""Augmentations that SpeechBrain's ``augment`` package does not have.

``TelephoneBand`` keeps only the band a telephone line carries: the
waveform is resampled to 8 kHz and back (torchaudio's windowed-sinc
resampler), so nothing above 4 kHz survives; with
``quantization_channels=256`` the 8 kHz signal also goes through 8-bit
mu-law companding, the G.711 telephone codec. ``LowBitrateCodec`` is
SpeechBrain's ``CodecAugment`` with bit rates chosen (MP3 and Opus at the
low rates of calls and streamed voice). ``room_impulse_response`` simulates
a room (pyroomacoustics' image method) for SpeechBrain's ``AddReverb``
(``recipes/Synthetic/rir_prepare.py`` writes a set) and for the robustness
benchmark; ``ResumableAddReverb`` and ``ResumableAddNoise`` are
``AddReverb`` and ``AddNoise`` with their rooms and noises drawn so that a
resumed run draws the same ones. The modules plug into
SpeechBrain's ``Augmenter`` next to ``SpeedPerturb``, ``AddNoise``...

Authors
 * HarmoniFuse-SB developers 2026
"""

import inspect
import io
import random

import numpy as np
import soundfile as sf
import torch
import torchaudio
from speechbrain.augment.codec import CodecAugment
from speechbrain.augment.time_domain import AddNoise, AddReverb, Resample
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.legacy import ExtendedCSVDataset
from speechbrain.processing.signal_processing import compute_amplitude, rescale


class TelephoneBand(torch.nn.Module):
    """Band-limits a batch of waveforms to a telephone's 8 kHz sampling.

    Arguments
    ---------
    orig_freq : int
        Sample rate of the input, in Hz.
    band_freq : int
        Sample rate of the simulated channel, in Hz (its Nyquist frequency
        is the cut-off).
    quantization_channels : int, optional
        Mu-law levels at ``band_freq`` (256: G.711 mu-law, ITU-T G.711);
        None: no quantisation, the band limit alone.

    Example
    -------
    >>> import math
    >>> t = torch.arange(16000) / 16000
    >>> tones = torch.sin(2 * math.pi * 1000 * t) + torch.sin(2 * math.pi * 6000 * t)
    >>> out = TelephoneBand()(tones[None])
    >>> spectrum = torch.fft.rfft(out[0]).abs()
    >>> bool(spectrum[6000] < 0.01 * spectrum[1000])
    True
    >>> g711 = TelephoneBand(quantization_channels=256)(0.5 * tones[None])
    >>> error = g711 - TelephoneBand()(0.5 * tones[None])
    >>> bool(0 < rms(error) < 0.02 * rms(0.5 * tones))  # 8-bit mu-law
    True
    """

    def __init__(
        self, orig_freq=16000, band_freq=8000, quantization_channels=None
    ):
        super().__init__()
        self.orig_freq = orig_freq
        self.band_freq = band_freq
        self.quantization_channels = quantization_channels

    def forward(self, waveforms):
        """Returns the band-limited waveforms, shape (B, N) like the input."""
        narrow = torchaudio.functional.resample(
            waveforms, self.orig_freq, self.band_freq
        )
        if self.quantization_channels is not None:
            levels = self.quantization_channels
            # G.711 codes samples in [-1, 1]; louder ones clip, as on a line.
            codes = torchaudio.functional.mu_law_encoding(
                narrow.clamp(-1.0, 1.0), levels
            )
            narrow = torchaudio.functional.mu_law_decoding(codes, levels)
        wide = torchaudio.functional.resample(
            narrow, self.band_freq, self.orig_freq
        )
        return wide[..., : waveforms.shape[-1]]


def rms(x):
    """Root mean square of a waveform (floored at 1e-10)."""
    return x.pow(2).mean().sqrt().clamp(min=1e-10)


# MP3 (LAME, constant bit rate) and Opus through libsndfile at low rates:
# (format, subtype, soundfile options). libsndfile maps compression_level
# in [0, 1] to a bit rate; measured on 16 kHz mono speech (eSpeak NG) by
# tests/test_augment.py::test_codec_bit_rates, in kbit/s: MP3 0.9 -> 24.3,
# 0.95 -> 16.2; Opus (variable rate) 0.9 -> 31.2, 0.975 -> 13.5.
LOW_BITRATE_CODECS = (
    (
        "MP3",
        "MPEG_LAYER_III",
        {"compression_level": 0.9, "bitrate_mode": "CONSTANT"},
    ),
    (
        "MP3",
        "MPEG_LAYER_III",
        {"compression_level": 0.95, "bitrate_mode": "CONSTANT"},
    ),
    ("OGG", "OPUS", {"compression_level": 0.9}),
    ("OGG", "OPUS", {"compression_level": 0.975}),
)


class LowBitrateCodec(CodecAugment):
    """SpeechBrain's ``CodecAugment`` at chosen, low bit rates.

    ``CodecAugment`` (SpeechBrain 1.1.2) round-trips each waveform through
    soundfile in memory, so it works with torchaudio 2.11 (which no longer
    has ``apply_codec``), but at libsndfile's default rates: on 16 kHz
    speech MP3 at 60.6 kbit/s, Opus at 28.5 and mu-law at 128 (8 bits at
    16 kHz), above the 12-24 kbit/s of calls and voice messages that the
    robustness benchmark measures. This subclass keeps its batch loop and
    length matching and passes a bit rate (soundfile's
    ``compression_level``, ``bitrate_mode``) per codec; the narrowband
    telephone codec is ``TelephoneBand(quantization_channels=256)``.

    Arguments
    ---------
    sample_rate : int
        Sample rate of the input, in Hz (Opus takes 8, 12, 16, 24 or 48
        kHz).
    codecs : list of (str, str, dict)
        Choices of (format, subtype, soundfile options), one drawn per
        batch (Python's ``random``, seeded by SpeechBrain's
        ``seed_everything``). Default: ``LOW_BITRATE_CODECS``.

    Example
    -------
    >>> t = torch.arange(16000) / 16000
    >>> tone = 0.5 * torch.sin(2 * 3.1416 * 440 * t)[None]
    >>> coded = LowBitrateCodec()(tone)
    >>> coded.shape, bool(0.5 < rms(coded) / rms(tone) < 1.5)
    (torch.Size([1, 16000]), True)
    """

    def __init__(self, sample_rate=16000, codecs=LOW_BITRATE_CODECS):
        super().__init__(sample_rate)
        self.codecs = [(fmt, sub, dict(opts)) for fmt, sub, opts in codecs]
        self.available_format_encoders = [(f, s) for f, s, _ in self.codecs]
        self.current = {}  # soundfile options of the codec in use

    def _encode_decode(self, waveform, format=None, encoder=None):
        """Round-trips one (N,) waveform at ``self.current``'s options."""
        buffer = io.BytesIO()
        sf.write(
            buffer,
            waveform.numpy(),
            self.sample_rate,
            format=format,
            subtype=encoder,
            **self.current,
        )
        buffer.seek(0)
        decoded, _ = sf.read(buffer, dtype="float32")
        return torch.from_numpy(decoded)

    def forward(self, waveform):
        """Codes the (B, N) batch with one codec drawn from ``codecs``."""
        fmt, sub, self.current = random.choice(self.codecs)
        return self.apply_codec(waveform, format=fmt, encoder=sub)


class UtteranceShare(torch.nn.Module):
    """Applies an augmentation to a drawn share of a batch's utterances,
    each on its own.

    SpeechBrain's ``Augmenter`` draws its augmentations per batch, among
    all of its list: with nine choices, one or two per batch and an
    ``augment_prob`` of 0.6, reverberation reaches about one batch in ten,
    and ``AddReverb`` gives all utterances of a batch the same room. This
    module gives the augmentation a share of its own: each utterance is
    drawn with probability ``share`` and augmented alone, so a reverberated
    batch mixes rooms, and clean and reverberant utterances share every
    batch. It runs before the ``Augmenter`` (``HarmoniFuseBrain`` applies
    the YAML's ``room_augment`` first); when disabled it returns its input
    and draws no random number, so switching it off keeps a run's random
    stream unchanged.

    Arguments
    ---------
    augmentation : torch.nn.Module
        Called on a (1, N) waveform (and ``lengths=`` (1,) when its
        ``forward`` takes them); must keep the shape.
    share : float
        Probability, in [0, 1], that an utterance is augmented.
    enabled : bool
        False: the module does nothing.

    Raises
    ------
    ValueError
        If ``share`` is outside [0, 1], or the augmentation changes an
        utterance's shape.

    Example
    -------
    >>> halve = lambda w: 0.5 * w
    >>> wavs, lens = torch.ones(1000, 4), torch.ones(1000)
    >>> out, out_lens = UtteranceShare(halve, share=0.25)(wavs, lens)
    >>> halved = (out[:, 0] == 0.5).float().mean().item()
    >>> 0.2 < halved < 0.3, bool(torch.equal(out_lens, lens))
    (True, True)
    >>> UtteranceShare(halve, enabled=False)(wavs, lens)[0] is wavs
    True
    """

    def __init__(self, augmentation, share=0.5, enabled=True):
        super().__init__()
        if not 0.0 <= share <= 1.0:
            raise ValueError(
                f"UtteranceShare: share={share} is not a probability; give "
                "a value in [0, 1]."
            )
        self.augmentation = augmentation
        self.share = share
        self.enabled = enabled
        forward = getattr(augmentation, "forward", augmentation)
        self.takes_lengths = "lengths" in inspect.signature(forward).parameters

    def forward(self, waveforms, lengths):
        """Returns ((B, N) waveforms, (B,) relative lengths, unchanged)."""
        if not self.enabled or self.share == 0.0:
            return waveforms, lengths
        drawn = torch.rand(waveforms.shape[0]) < self.share
        if not drawn.any():
            return waveforms, lengths
        out = waveforms.clone()
        for i in drawn.nonzero()[:, 0].tolist():
            one = waveforms[i : i + 1]
            if self.takes_lengths:
                wet = self.augmentation(one, lengths=lengths[i : i + 1])
            else:
                wet = self.augmentation(one)
            if isinstance(wet, tuple):
                wet = wet[0]
            if wet.shape != one.shape:
                raise ValueError(
                    f"UtteranceShare: {type(self.augmentation).__name__} "
                    f"turned a {tuple(one.shape)} waveform into "
                    f"{tuple(wet.shape)}; it must keep the shape."
                )
            out[i : i + 1] = wet
        return out, lengths


def _draw_rows(module, count):
    """``count`` rows of ``module.csv_file`` drawn uniformly, with
    replacement, with torch's generator (checkpointed by
    ``harmonifuse_sb.reproducibility``), padded: ((count, L, ...) signals,
    (count,) relative lengths). The CSV is read on the first draw (a
    recipe's preparation may write it after the module is built).
    """
    if getattr(module, "rows", None) is None:
        module.rows = ExtendedCSVDataset(
            csvpath=module.csv_file,
            output_keys=getattr(module, "csv_keys", None),
            sorting="original",
            replacements=module.replacements,
        )
    indices = torch.randint(len(module.rows), (count,)).tolist()
    return PaddedBatch([module.rows[i] for i in indices]).at_position(0)


class ResumableAddReverb(AddReverb):
    """SpeechBrain's ``AddReverb``, with rooms drawn from torch's generator.

    ``AddReverb`` (SpeechBrain 1.1.2) walks a shuffled data loader over its
    CSV and does not checkpoint where it is: a run resumed mid-training
    starts the walk again and reverberates with other rooms than the run it
    continues (the resume tests in ``tests/test_training.py`` caught it).
    Here each call draws one row uniformly, with replacement, with
    ``torch.randint``, whose state ``harmonifuse_sb.reproducibility``
    checkpoints. Same arguments as ``AddReverb`` (``sorting`` is not
    used).

    The convolution is linear, where ``AddReverb``'s is circular:
    SpeechBrain 1.1.2's ``reverberate`` multiplies the spectra at the
    waveform's own length, so the reverberant tail of the last samples
    wraps round onto the first ones (an impulse at sample 990 of 1000 with
    an echo 100 samples later puts the echo at sample 90). Here the FFT
    runs at the next power of two at or above N + L - 1 (N samples, an
    impulse response of L), the output is aligned on the direct path (the
    largest sample of the response) as ``AddReverb`` aligns it, the tail
    past the last sample is cut, and the average amplitude is restored as
    ``AddReverb`` restores it (``rescale_amp="avg"``).

    Example
    -------
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> rir = torch.zeros(1, 800); rir[0, 0] = 1.0; rir[0, 400] = 0.5
    >>> path = os.path.join(folder, "rir.wav")
    >>> sf.write(path, rir[0].numpy(), 16000)
    >>> with open(os.path.join(folder, "rirs.csv"), "w") as f:
    ...     print("ID,duration,wav,wav_format,wav_opts", file=f)
    ...     print(f"r0,0.05,{path},wav,", file=f)
    >>> reverb = ResumableAddReverb(os.path.join(folder, "rirs.csv"))
    >>> reverb(torch.randn(2, 16000)).shape
    torch.Size([2, 16000])
    """

    def _load_rir(self, waveforms):
        """One (1, L, 1) impulse response, drawn with torch's generator."""
        rir, _ = _draw_rows(self, 1)
        if rir.dim() == 2:
            rir = rir.unsqueeze(-1)
        return rir.type(waveforms.dtype).to(waveforms.device)

    def forward(self, waveforms):
        """Reverberates (B, N) or (B, N, C) waveforms in one drawn room.

        Returns
        -------
        torch.Tensor
            The reverberant waveforms, same shape, same average amplitude.
        """
        rates_differ = self.reverb_sample_rate != self.clean_sample_rate
        if rates_differ and not hasattr(self, "resampler"):  # built once
            self.resampler = Resample(
                self.reverb_sample_rate, self.clean_sample_rate
            )
        squeeze = waveforms.dim() == 2
        if squeeze:
            waveforms = waveforms.unsqueeze(-1)
        rir = self._load_rir(waveforms)
        if hasattr(self, "resampler"):
            rir = self.resampler(rir)
        if self.rir_scale_factor != 1:
            rir = torch.nn.functional.interpolate(
                rir.transpose(1, -1),
                scale_factor=self.rir_scale_factor,
                mode="linear",
                align_corners=False,
            ).transpose(1, -1)
        rir = rir[0, :, 0]  # (L,)
        n = waveforms.shape[1]
        direct = int(rir.abs().argmax())
        # >= N + L - 1, a power of two: torchaudio's fftconvolve runs at
        # N + L - 1 itself, 17 times as slow for 3 s in a 0.9 s room
        # (62,999 samples, 73 x 863: 22 ms against 1.3 ms)
        size = 1 << (n + rir.shape[0] - 2).bit_length()
        amplitude = compute_amplitude(waveforms, n, "avg")
        spectrum = torch.fft.rfft(waveforms, n=size, dim=1)
        spectrum = spectrum * torch.fft.rfft(rir, n=size)[None, :, None]
        wet = torch.fft.irfft(spectrum, n=size, dim=1)[:, direct : direct + n]
        wet = rescale(wet, n, amplitude, "avg")
        return wet.squeeze(-1) if squeeze else wet


class ResumableAddNoise(AddNoise):
    """SpeechBrain's ``AddNoise``, with noise clips drawn from torch's
    generator.

    ``AddNoise`` (SpeechBrain 1.1.2) walks a shuffled data loader over its
    CSV and does not checkpoint where it is; each new pass over the CSV
    also takes a seed from torch's generator. A run resumed mid-training
    therefore adds other noises than the run it continues, and from then
    on every torch draw (dropout masks, augmentations) differs too: the
    resume tests in ``tests/test_training.py`` caught it once the codecs
    made ``AddNoise`` come up twice before a checkpoint. Here each call
    draws one clip per utterance uniformly, with replacement, with
    ``torch.randint``, whose state ``harmonifuse_sb.reproducibility``
    checkpoints; the SNR, padding, start index and mixing are
    ``AddNoise``'s. Same arguments as ``AddNoise`` (``sorting`` and
    ``num_workers`` are not used); a ``csv_file`` is required.

    Example
    -------
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "hum.wav")
    >>> sf.write(path, 0.1 * np.random.randn(16000), 16000)
    >>> with open(os.path.join(folder, "noise.csv"), "w") as f:
    ...     print("ID,duration,wav,wav_format,wav_opts", file=f)
    ...     print(f"n0,1.0,{path},wav,", file=f)
    >>> noise = ResumableAddNoise(os.path.join(folder, "noise.csv"),
    ...                           snr_low=10, snr_high=10, pad_noise=True)
    >>> noise(torch.randn(2, 24000), torch.ones(2)).shape
    torch.Size([2, 24000])
    """

    def __init__(self, csv_file, **kwargs):
        if csv_file is None:
            raise ValueError(
                "ResumableAddNoise needs a csv_file of noise clips; for "
                "white noise use SpeechBrain's AddNoise without one."
            )
        super().__init__(csv_file, **kwargs)
        if self.noise_sample_rate != self.clean_sample_rate:
            self.resampler = Resample(
                self.noise_sample_rate, self.clean_sample_rate
            )
        # AddNoise builds (and starts walking) its loader on its first call
        # unless it has one; the clips are drawn below instead.
        self.data_loader = None

    def _load_noise_batch_of_size(self, batch_size):
        """(batch_size, L) clips drawn with torch's generator and their
        (batch_size,) relative lengths.
        """
        return _draw_rows(self, batch_size)


# Talker and microphone stay this far from the walls, in metres.
WALL_MARGIN = 0.5
# Rooms drawn when none is given: length, width, height ranges in metres
# (offices, meeting rooms, living rooms, classrooms).
ROOM_RANGES = ((4.5, 10.0), (4.5, 8.0), (2.4, 3.5))


def _draw_room(rng, rt60, distance):
    """A room in ``ROOM_RANGES`` that fits ``distance`` and can be as dry
    as ``rt60`` (Sabine: absorption at most 1).
    """
    import pyroomacoustics as pra

    for _ in range(10000):
        dims = [float(rng.uniform(*r)) for r in ROOM_RANGES]
        if max(dims[:2]) - 2 * WALL_MARGIN < distance:
            continue
        try:
            pra.inverse_sabine(rt60, dims)
        except ValueError:  # too large a room for so little reverberation
            continue
        return dims
    raise ValueError(
        f"No room in {ROOM_RANGES} m has an RT60 of {rt60} s with a talker "
        f"{distance} m away; give room_dim."
    )


def _place(rng, dims, distance):
    """Microphone (0.8-1.6 m high) and talker ``distance`` apart, inside
    the room, ``WALL_MARGIN`` from the walls.
    """
    low = np.full(3, WALL_MARGIN)
    high = np.array(dims) - WALL_MARGIN
    for _ in range(1000):
        mic = rng.uniform([low[0], low[1], 0.8], [high[0], high[1], 1.6])
        rise = rng.uniform(-0.3, 0.3) * min(1.0, distance)
        flat = np.sqrt(distance**2 - rise**2)
        angle = rng.uniform(0, 2 * np.pi)
        talker = mic + [flat * np.cos(angle), flat * np.sin(angle), rise]
        if np.all(talker >= low) and np.all(talker <= high):
            return mic, talker
    raise ValueError(
        f"A talker {distance} m from the microphone does not fit in a "
        f"{[round(d, 2) for d in dims]} m room {WALL_MARGIN} m from its "
        "walls: give a larger room or a shorter distance."
    )


def room_impulse_response(
    rt60,
    distance,
    room_dim=None,
    seed=0,
    sample_rate=16000,
    tolerance=0.15,
    max_corrections=3,
):
    """Impulse response from a talker to a microphone in a simulated room.

    A shoebox room with walls of one absorption coefficient, simulated with
    pyroomacoustics' image-source method (Allen and Berkley, "Image method
    for efficiently simulating small-room acoustics", JASA 1979);
    ``pyroomacoustics.inverse_sabine`` gives the absorption and reflection
    order of an RT60. With uniform walls the image method decays more
    slowly than Sabine's formula says (RT60 0.6-0.9 s asked gave 1.1-1.4 s
    measured), so the RT60 asked of Sabine is scaled by asked / measured
    until the measured one (``pyroomacoustics.experimental.measure_rt60``:
    Schroeder's backward integration, T30 extrapolated) is within
    ``tolerance`` of ``rt60``, at most ``max_corrections`` times.

    Arguments
    ---------
    rt60 : float
        Reverberation time wanted, in seconds.
    distance : float
        Talker-microphone distance, in metres.
    room_dim : list of float, optional
        Room length, width, height in metres; default: drawn from
        ``ROOM_RANGES``.
    seed : int
        Seeds the room and the positions: the same arguments give the same
        response.
    sample_rate : int
        In Hz.
    tolerance : float
        Relative RT60 error accepted.
    max_corrections : int
        Most re-simulations with a corrected RT60.

    Returns
    -------
    rir : torch.Tensor
        (L,) float32 response, peak 1.
    info : dict
        ``rt60`` (measured, s), ``distance`` (m), ``room_dim`` (m),
        ``microphone`` and ``talker`` positions (m).

    Raises
    ------
    ValueError
        If the talker does not fit in ``room_dim`` at ``distance``, or the
        room cannot be that dry.

    Example
    -------
    >>> rir, info = room_impulse_response(0.3, 1.0, seed=3)
    >>> abs(info["rt60"] - 0.3) <= 0.15 * 0.3, info["distance"]
    (True, 1.0)
    >>> int(rir.abs().argmax()) < 200  # the direct path comes first
    True
    """
    import pyroomacoustics as pra
    from pyroomacoustics.experimental import measure_rt60

    rng = np.random.default_rng(seed)
    dims = list(room_dim) if room_dim else _draw_room(rng, rt60, distance)
    mic, talker = _place(rng, dims, distance)
    asked, best = rt60, None
    for _ in range(max_corrections + 1):
        try:
            absorption, order = pra.inverse_sabine(asked, dims)
        except ValueError as err:
            if best is not None:  # the room is as dry as it gets
                break
            raise ValueError(
                f"A {dims} m room cannot have an RT60 of {rt60} s ({err}); "
                "give a smaller room."
            ) from err
        room = pra.ShoeBox(
            dims,
            fs=sample_rate,
            materials=pra.Material(absorption),
            max_order=order,
        )
        room.add_source(talker)
        room.add_microphone(mic)
        room.compute_rir()
        rir = np.asarray(room.rir[0][0])
        measured = float(measure_rt60(rir, sample_rate, decay_db=30))
        if best is None or abs(measured - rt60) < abs(best[1] - rt60):
            best = rir, measured
        if abs(measured - rt60) <= tolerance * rt60:
            break
        asked *= rt60 / measured
    rir, measured = best
    rir = torch.tensor(rir / np.abs(rir).max(), dtype=torch.float32)
    return rir, {
        "rt60": round(measured, 3),
        "distance": distance,
        "room_dim": [round(d, 2) for d in dims],
        "microphone": [round(float(x), 2) for x in mic],
        "talker": [round(float(x), 2) for x in talker],
    }
