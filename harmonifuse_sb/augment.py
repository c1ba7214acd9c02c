"""Augmentations that SpeechBrain's ``augment`` package does not have.

``TelephoneBand`` keeps only the band a telephone line carries: the
waveform is resampled to 8 kHz and back (torchaudio's windowed-sinc
resampler), so nothing above 4 kHz survives. It plugs into SpeechBrain's
``Augmenter`` next to ``SpeedPerturb``, ``AddNoise``...

Authors
 * HarmoniFuse-SB developers 2026
"""

import torch
import torchaudio


class TelephoneBand(torch.nn.Module):
    """Band-limits a batch of waveforms to a telephone's 8 kHz sampling.

    Arguments
    ---------
    orig_freq : int
        Sample rate of the input, in Hz.
    band_freq : int
        Sample rate of the simulated channel, in Hz (its Nyquist frequency
        is the cut-off).

    Example
    -------
    >>> import math
    >>> t = torch.arange(16000) / 16000
    >>> tones = torch.sin(2 * math.pi * 1000 * t) + torch.sin(2 * math.pi * 6000 * t)
    >>> out = TelephoneBand()(tones[None])
    >>> spectrum = torch.fft.rfft(out[0]).abs()
    >>> bool(spectrum[6000] < 0.01 * spectrum[1000])
    True
    """

    def __init__(self, orig_freq=16000, band_freq=8000):
        super().__init__()
        self.orig_freq = orig_freq
        self.band_freq = band_freq

    def forward(self, waveforms):
        """Returns the band-limited waveforms, shape (B, N) like the input."""
        narrow = torchaudio.functional.resample(
            waveforms, self.orig_freq, self.band_freq
        )
        wide = torchaudio.functional.resample(
            narrow, self.band_freq, self.orig_freq
        )
        return wide[..., : waveforms.shape[-1]]
