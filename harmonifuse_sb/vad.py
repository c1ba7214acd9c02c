"""Voice activity detection (VAD): where the speech is, with silero-vad.

A thin wrapper around the model that the ``silero-vad`` package ships inside
itself (MIT licence, no download). It serves two purposes:

- the **no-speech rule** of ``HarmoniFuseSLM``: audio in which the VAD finds
  no speech region gets the transcript ``""`` and no emotion, instead of
  whatever an ASR model hallucinates from silence or noise;
- **long recordings**: the speech regions of a file, cut to at most
  ``max_segment_duration`` seconds, are the segments that the model decodes
  (``harmonifuse_sb.longform``).

The rule, in full: silero-vad gives a speech probability for every window
of 512 samples (32 ms at 16 kHz). silero's own ``get_speech_timestamps``
hysteresis turns them into regions: a region starts at a window with
probability >= ``threshold``, ends when the probability stays below
``threshold - 0.15`` for ``min_pause`` seconds, is kept only if it lasts
``min_speech_duration`` seconds, and is padded by ``speech_pad`` seconds
on each side. Audio has speech if at least one region is kept. A region
longer than ``max_segment_duration`` is split, recursively, at its least
speech-like point: the window with the lowest speech probability (averaged
over ``smoothing`` windows) that leaves at least ``min_split_part`` seconds
on each side (ties: the lowest probability itself, then the window nearest
the middle).

silero-vad's probabilities depend on the level: eSpeak speech at -40 dB
(x 0.01) was missed in 29 of 40 clips even at 20 dB SNR. So the VAD sees
each waveform (a batch item, or a block of ``block_duration`` seconds of a
file) scaled to a peak of ``target_peak``, the peak being the 99.9th
percentile of the magnitude (a click does not set it), with a gain of at
most ``max_gain_db`` (digital silence stays silence). Measured with this:
0 of 24 silence/white/pink/brown noise clips from -90 to -3 dBFS counted as
speech, 0 of 20 speech clips missed at gains 1, 0.01, 0.001 and SNR 30, 10
and 0 dB.

Importing ``silero_vad`` sets torch's CPU thread count to 1 (a side effect
of its ``model`` module); the model is loaded here with the caller's thread
count restored.

Authors
 * HarmoniFuse-SB developers 2026
"""

import functools

import torch

SAMPLE_RATE = 16000
WINDOW = 512  # samples per speech probability at 16 kHz (32 ms)


@functools.lru_cache(maxsize=1)
def load_silero_vad():
    """The silero-vad TorchScript model (loaded once per process).

    Returns
    -------
    torch.jit.ScriptModule
        Called as ``model(chunk (B, 512), 16000) -> (B, 1)`` probabilities;
        it keeps a recurrent state between calls (``reset_states()``).

    Raises
    ------
    RuntimeError
        If the ``silero-vad`` package is not installed.
    """
    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad as _load
    except ImportError as err:
        raise RuntimeError(
            "Voice activity detection needs the 'silero-vad' package: "
            "pip install silero-vad"
        ) from err
    finally:
        torch.set_num_threads(threads)  # silero_vad.model sets it to 1
    model = _load(onnx=False)
    model.eval()
    return model


class VoiceActivityDetector:
    """Finds speech regions in 16 kHz audio with silero-vad.

    All durations are in seconds. The defaults follow silero-vad's own
    (threshold 0.5, padding 30 ms, 250 ms shortest speech). ``min_pause``
    is 0.05 s, half of silero's 0.1 s: its probability stays high for about
    0.1 s after speech ends, so a 0.2 s pause between sentences shows as
    about 0.1 s of non-speech. On recordings of eSpeak sentences with pauses
    of 0.2-1.5 s, 0.1 s merged 2-7 % of the utterances with a neighbour,
    0.05 s none, and split none (165 utterances). Real conversational
    speech may want 0.2-0.3 s (longer segments).

    Arguments
    ---------
    threshold : float
        Speech probability from which a window is speech (0..1). Higher:
        fewer false alarms on noise, more missed quiet speech.
    min_pause : float
        Non-speech that ends a region.
    max_segment_duration : float
        Longest region; a longer one is split at its least speech-like
        point.
    min_speech_duration : float
        Shorter regions are dropped.
    speech_pad : float
        Added to each side of a region (less where two regions meet).
    min_split_part : float
        Shortest part left on each side of a split (capped at a quarter of
        ``max_segment_duration``).
    smoothing : int
        Windows over which the probability is averaged to find the split
        point.
    block_duration : float
        Audio read at once from a file (bounds memory; each block has its
        own level normalisation).
    target_peak : float or None
        Peak the VAD's input is scaled to; ``None``: no scaling.
    max_gain_db : float
        Largest gain of that scaling.

    Example
    -------
    >>> vad = VoiceActivityDetector()
    >>> silence = torch.zeros(16000)
    >>> vad.regions(vad.speech_probs(silence), len(silence))
    []
    >>> vad.has_speech(torch.zeros(2, 8000), torch.tensor([1.0, 0.5]))
    [False, False]
    """

    def __init__(
        self,
        threshold=0.5,
        min_pause=0.05,
        max_segment_duration=20.0,
        min_speech_duration=0.25,
        speech_pad=0.03,
        min_split_part=1.0,
        smoothing=5,
        block_duration=30.0,
        target_peak=0.5,
        max_gain_db=60.0,
    ):
        if not 0.0 < threshold < 1.0:
            raise ValueError(
                f"VAD threshold must lie in (0, 1), got {threshold}."
            )
        if max_segment_duration <= 2 * speech_pad + WINDOW / SAMPLE_RATE:
            raise ValueError(
                f"max_segment_duration {max_segment_duration} s is too short "
                "for a segment; give a few seconds or more."
            )
        for name, value in (
            ("min_pause", min_pause),
            ("min_speech_duration", min_speech_duration),
            ("speech_pad", speech_pad),
            ("min_split_part", min_split_part),
        ):
            if value < 0:
                raise ValueError(f"VAD {name} must be >= 0, got {value}.")
        if block_duration <= 0 or smoothing < 1:
            raise ValueError(
                "VAD block_duration must be > 0 and smoothing >= 1."
            )
        self.threshold = float(threshold)
        self.min_pause = float(min_pause)
        self.max_segment_duration = float(max_segment_duration)
        self.min_speech_duration = float(min_speech_duration)
        self.speech_pad = float(speech_pad)
        self.min_split_part = float(min_split_part)
        self.smoothing = int(smoothing)
        self.block_duration = float(block_duration)
        self.target_peak = None if target_peak is None else float(target_peak)
        self.max_gain_db = float(max_gain_db)

    def __repr__(self):
        return (
            f"VoiceActivityDetector(threshold={self.threshold}, "
            f"min_pause={self.min_pause}, "
            f"max_segment_duration={self.max_segment_duration})"
        )

    def options(self, **changes):
        """A copy with some options changed (``None`` keeps the value).

        Arguments
        ---------
        **changes : dict
            Constructor arguments.

        Returns
        -------
        VoiceActivityDetector

        Example
        -------
        >>> VoiceActivityDetector().options(threshold=0.7, min_pause=None)
        VoiceActivityDetector(threshold=0.7, min_pause=0.05, max_segment_duration=20.0)
        """
        kwargs = dict(vars(self))
        unknown = set(changes) - set(kwargs)
        if unknown:
            raise TypeError(f"Unknown VAD options {sorted(unknown)}.")
        kwargs.update({k: v for k, v in changes.items() if v is not None})
        return VoiceActivityDetector(**kwargs)

    def normalise(self, wavs, lengths=None):
        """Scales each waveform to ``target_peak`` (gain <= ``max_gain_db``).

        Arguments
        ---------
        wavs : torch.Tensor
            (B, N) waveforms.
        lengths : torch.Tensor, optional
            (B,) samples of each that are audio, not padding.

        Returns
        -------
        torch.Tensor
            (B, N) scaled waveforms.

        Example
        -------
        >>> vad = VoiceActivityDetector()
        >>> quiet = 0.001 * torch.sin(torch.arange(16000) / 5.0)
        >>> round(float(vad.normalise(quiet[None]).abs().max()), 2)
        0.5
        >>> float(vad.normalise(torch.zeros(1, 100)).abs().max())
        0.0
        """
        if self.target_peak is None:
            return wavs
        max_gain = 10 ** (self.max_gain_db / 20)
        gains = []
        for i, wav in enumerate(wavs):
            if lengths is not None:
                wav = wav[: int(lengths[i])]
            peak = (
                float(torch.quantile(wav.abs().float(), 0.999))
                if len(wav)
                else 0.0
            )
            gains.append(min(self.target_peak / max(peak, 1e-12), max_gain))
        return wavs * torch.tensor(gains, dtype=wavs.dtype).unsqueeze(1)

    @torch.no_grad()
    def speech_probs(self, wav):
        """Speech probability of each 32 ms window of one waveform.

        Arguments
        ---------
        wav : torch.Tensor
            (N,) 16 kHz waveform.

        Returns
        -------
        torch.Tensor
            (ceil(N / 512),) probabilities; the last window is zero-padded.
        """
        return self.batch_speech_probs(wav.reshape(1, -1))[0]

    @torch.no_grad()
    def batch_speech_probs(self, wavs, lengths=None):
        """Speech probabilities of a batch of waveforms, side by side.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, N) 16 kHz waveforms.
        lengths : torch.Tensor, optional
            (B,) samples of each that are audio (the level is measured on
            them); default: all N.

        Returns
        -------
        torch.Tensor
            (B, ceil(N / 512)) probabilities (those past an item's length
            mean nothing).
        """
        stream = SpeechProbStream()
        probs = stream.push(self.normalise(wavs, lengths))
        return torch.cat([probs, stream.flush(len(wavs))], dim=1)

    @torch.no_grad()
    def stream_speech_probs(self, blocks):
        """Speech probabilities of a waveform given block by block.

        The model's state runs on from block to block, so the result equals
        ``speech_probs`` of the whole waveform (but for the level, set per
        block) while only one block is in memory.

        Arguments
        ---------
        blocks : iterable of torch.Tensor
            (n,) consecutive 16 kHz pieces of one waveform.

        Returns
        -------
        torch.Tensor
            (ceil(N / 512),) probabilities.
        """
        stream = SpeechProbStream()
        probs = [
            stream.push(self.normalise(block.reshape(1, -1)))[0]
            for block in blocks
        ]
        probs.append(stream.flush(1)[0])
        return torch.cat(probs)

    def regions(self, probs, num_samples):
        """Speech regions from window probabilities.

        Arguments
        ---------
        probs : torch.Tensor
            (F,) probabilities of 512-sample windows.
        num_samples : int
            Length of the audio (16 kHz samples).

        Returns
        -------
        list of (int, int)
            (start, end) sample indices, in order, none longer than
            ``max_segment_duration``.

        Example
        -------
        >>> vad = VoiceActivityDetector(max_segment_duration=4.0)
        >>> probs = torch.zeros(400)  # 12.8 s
        >>> probs[50:300] = 0.9       # 1.6 .. 9.6 s: 8 s of speech
        >>> probs[170] = 0.6          # the least speech-like point
        >>> [(s / 16000, e / 16000) for s, e in vad.regions(probs, 204800)]
        [(1.57, 5.44), (5.44, 7.52), (7.52, 9.63)]
        """
        from silero_vad.utils_vad import get_speech_timestamps_from_probs

        found = get_speech_timestamps_from_probs(
            probs.tolist(),
            sampling_rate=SAMPLE_RATE,
            threshold=self.threshold,
            min_speech_duration_ms=1000 * self.min_speech_duration,
            min_silence_duration_ms=1000 * self.min_pause,
            speech_pad_ms=1000 * self.speech_pad,
            audio_length_samples=int(num_samples),
        )
        regions = []
        for region in found:
            regions += self._split(region["start"], region["end"], probs)
        return regions

    def _split(self, start, end, probs):
        """Splits a region at its least speech-like points until it fits."""
        max_len = int(self.max_segment_duration * SAMPLE_RATE)
        if end - start <= max_len:
            return [(start, end)]
        margin = int(
            min(self.min_split_part, self.max_segment_duration / 4)
            * SAMPLE_RATE
        )
        first = -(-(start + margin) // WINDOW)  # windows whose start may cut
        last = (end - margin) // WINDOW
        smooth = torch.nn.functional.avg_pool1d(
            probs.float().reshape(1, 1, -1),
            self.smoothing,
            stride=1,
            padding=self.smoothing // 2,
            count_include_pad=False,
        ).reshape(-1)
        # Ties (a plateau of the average) go to the lowest raw probability,
        # then to the window nearest the middle: balanced parts.
        middle = (start + end) / 2 / WINDOW
        window = min(
            range(first, last + 1),
            key=lambda i: (
                round(float(smooth[i]), 6),
                round(float(probs[i]), 6),
                abs(i - middle),
            ),
        )
        cut = window * WINDOW
        return self._split(start, cut, probs) + self._split(cut, end, probs)

    def has_speech(self, wavs, wav_lens=None):
        """Whether each waveform of a batch holds speech (the no-speech rule).

        Arguments
        ---------
        wavs : torch.Tensor
            (B, N) 16 kHz waveforms, zero-padded.
        wav_lens : torch.Tensor, optional
            (B,) relative lengths (default: all 1).

        Returns
        -------
        list of bool
        """
        wavs = wavs.detach().float().cpu()
        if wav_lens is None:
            wav_lens = torch.ones(len(wavs))
        lengths = (wav_lens.cpu().float() * wavs.shape[1]).round().long()
        probs = self.batch_speech_probs(wavs, lengths)  # (B, F)
        result = []
        for item_probs, length in zip(probs, lengths.tolist()):
            frames = -(-length // WINDOW)
            result.append(bool(self.regions(item_probs[:frames], length)))
        return result


class SpeechProbStream:
    """silero-vad over a stream: push pieces, get one probability per window.

    Keeps the model's recurrent state and the samples of an unfinished
    window between pushes. The model is shared by the process, so one stream
    must be finished (``flush``) before another starts.

    Example
    -------
    >>> stream = SpeechProbStream()
    >>> stream.push(torch.zeros(1, 700)).shape, stream.flush(1).shape
    (torch.Size([1, 1]), torch.Size([1, 1]))
    """

    def __init__(self):
        self.model = load_silero_vad()
        self.model.reset_states()
        self.rest = None  # (B, < 512) samples of an unfinished window

    @torch.no_grad()
    def push(self, wavs):
        """Probabilities of the windows completed by ``wavs`` (B, n)."""
        wavs = wavs.float()
        if self.rest is not None:
            wavs = torch.cat([self.rest, wavs], dim=1)
        whole = wavs.shape[1] // WINDOW * WINDOW
        self.rest = wavs[:, whole:]
        probs = [
            self.model(wavs[:, i : i + WINDOW], SAMPLE_RATE)
            for i in range(0, whole, WINDOW)
        ]
        if not probs:
            return torch.zeros(len(wavs), 0)
        return torch.cat(probs, dim=1)  # (B, whole / 512)

    @torch.no_grad()
    def flush(self, batch_size):
        """Probability of the zero-padded last window, if any: (B, 0 or 1)."""
        rest, self.rest = self.rest, None
        if rest is None or rest.shape[1] == 0:
            return torch.zeros(batch_size, 0)
        pad = torch.nn.functional.pad(rest, (0, WINDOW - rest.shape[1]))
        return self.model(pad, SAMPLE_RATE)
