"""Long recordings: block-wise reading, segments, and their merged result.

A recording of any length is decoded in two passes over the file, so that
memory does not grow with its length:

1. ``AudioStream.blocks`` reads it block by block (soundfile), downmixed
   and resampled to 16 kHz piece by piece, and the VAD
   (``harmonifuse_sb.vad``) turns it into speech probabilities: 4 bytes per
   32 ms;
2. the speech regions (at most ``max_segment_duration`` seconds each) are
   read back one batch at a time (``AudioStream.read``) and decoded by
   ``HarmoniFuseSLM``.

``merge_segments`` joins the segments' results into the file's: the
transcripts joined with spaces, the emotion probabilities averaged over the
segments weighted by their durations.

Authors
 * HarmoniFuse-SB developers 2026
"""

import math
import os

import soundfile as sf
import torch
import torchaudio

from harmonifuse_sb.dataio import AudioError, check_finite

SAMPLE_RATE = 16000
# Input samples read beyond each side of a piece before resampling: the
# sinc kernel of torchaudio's default resampler reaches about 6 periods of
# the lower rate (< 20 input samples for the usual rates), so 256 leave a
# wide margin and the pieces join into the whole file's resampled signal.
RESAMPLE_CONTEXT = 256


class AudioStream:
    """An audio file read as 16 kHz mono, any span at a time.

    ``read(start, end)`` gives samples ``start:end`` of what
    ``harmonifuse_sb.dataio.load_audio`` gives for the whole file (channels
    averaged, then resampled with torchaudio), reading only those samples
    and a small margin from the disk.

    Arguments
    ---------
    path : str
        Audio file (any format that soundfile reads).
    sample_rate : int
        Output sample rate.

    Raises
    ------
    AudioError
        If the file is missing, unreadable or holds no samples; ``read``
        and ``blocks``: if what they read holds NaN or infinite samples.

    Example
    -------
    >>> import tempfile, numpy, soundfile
    >>> path = tempfile.mktemp(suffix=".wav")
    >>> soundfile.write(path, numpy.zeros((44100, 2), "float32"), 44100)
    >>> stream = AudioStream(path)
    >>> stream.num_samples, stream.duration, stream.read(100, 300).shape
    (16000, 1.0, torch.Size([200]))
    """

    def __init__(self, path, sample_rate=SAMPLE_RATE):
        path = str(path)
        if not os.path.isfile(path):
            raise AudioError(f"Audio file not found: {path}")
        try:
            info = sf.info(path)
        except Exception as err:  # soundfile raises several error types
            raise AudioError(f"Cannot read audio file {path}: {err}") from err
        if info.frames <= 0:
            raise AudioError(f"Audio file {path} holds no samples.")
        self.path = path
        self.sample_rate = sample_rate
        self.file_rate = info.samplerate
        self.frames = info.frames
        gcd = math.gcd(self.file_rate, sample_rate)
        self.down = self.file_rate // gcd  # input samples per group
        self.up = sample_rate // gcd  # output samples per group
        # torchaudio.functional.resample gives ceil(N * up / down) samples.
        self.num_samples = -(-self.frames * self.up // self.down)
        self.context = self.down * -(-RESAMPLE_CONTEXT // self.down)

    @property
    def duration(self):
        """Length in seconds."""
        return self.num_samples / self.sample_rate

    def _read_frames(self, start, stop):
        try:
            with sf.SoundFile(self.path) as f:
                f.seek(start)
                data = f.read(stop - start, dtype="float32", always_2d=True)
        except Exception as err:
            raise AudioError(
                f"Cannot read audio file {self.path} (frames {start} to "
                f"{stop}): {err}"
            ) from err
        data = torch.from_numpy(data).T  # (C, n)
        # Checked as it is read, so that the VAD, which reads the file
        # first, never takes damaged audio for silence.
        check_finite(data, self.path, self.file_rate, start)
        return data.mean(dim=0)  # (n,) downmix

    def read(self, start, end):
        """Samples ``start:end`` (output rate) of the file.

        Arguments
        ---------
        start : int
            First sample (output rate), >= 0.
        end : int
            One past the last sample, <= ``num_samples``.

        Returns
        -------
        torch.Tensor
            (end - start,) float32 waveform.
        """
        start, end = max(0, int(start)), min(int(end), self.num_samples)
        if end <= start:
            return torch.zeros(0)
        if self.up == self.down:
            return self._read_frames(start, end)
        first_group = start // self.up
        last_group = -(-end // self.up)
        in_start = first_group * self.down
        in_end = min(last_group * self.down, self.frames)
        ext_start = max(0, in_start - self.context)
        ext_end = min(self.frames, in_end + self.context)
        wav = self._read_frames(ext_start, ext_end)
        out = torchaudio.functional.resample(wav, self.down, self.up)
        offset = (ext_start // self.down) * self.up  # out index of out[0]
        return out[start - offset : end - offset]

    def blocks(self, block_samples):
        """The whole file, ``block_samples`` output samples at a time.

        Arguments
        ---------
        block_samples : int
            Output samples per block (the last block may be shorter).

        Yields
        ------
        torch.Tensor
            (n,) consecutive pieces of the waveform.
        """
        for start in range(0, self.num_samples, block_samples):
            yield self.read(start, start + block_samples)


def segment_file(stream, vad):
    """Speech regions of a file, found block by block.

    Arguments
    ---------
    stream : AudioStream
        The file.
    vad : harmonifuse_sb.vad.VoiceActivityDetector
        Its options set the regions.

    Returns
    -------
    list of (int, int)
        (start, end) 16 kHz sample indices.
    """
    block = int(vad.block_duration * SAMPLE_RATE)
    probs = vad.stream_speech_probs(stream.blocks(block))
    return vad.regions(probs, stream.num_samples)


def batches_by_length(regions, batch_seconds, max_batch_size):
    """Groups segments of similar length into batches (less padding).

    Arguments
    ---------
    regions : list of (int, int)
        (start, end) samples.
    batch_seconds : float
        Most padded audio per batch (longest segment x batch size).
    max_batch_size : int
        Most segments per batch.

    Returns
    -------
    list of list of int
        Indices into ``regions``; each segment in one batch.

    Example
    -------
    >>> batches_by_length([(0, 16000), (0, 160000), (0, 32000)], 40, 8)
    [[1, 2, 0]]
    >>> batches_by_length([(0, 16000), (0, 160000), (0, 32000)], 15, 8)
    [[1], [2, 0]]
    """
    order = sorted(
        range(len(regions)),
        key=lambda i: regions[i][1] - regions[i][0],
        reverse=True,
    )
    batches, current = [], []
    for i in order:
        longest = (
            regions[current[0]][1] - regions[current[0]][0]
            if current
            else regions[i][1] - regions[i][0]
        )
        too_big = (len(current) + 1) * longest > batch_seconds * SAMPLE_RATE
        if current and (too_big or len(current) == max_batch_size):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def join_transcripts(segments, key="transcript"):
    """The segments' transcripts joined by spaces (``""`` without any).

    Example
    -------
    >>> join_transcripts([{"transcript": "hi "}, {"transcript": ""},
    ...                   {"transcript": "there"}])
    'hi there'
    """
    texts = [s[key].strip() for s in segments]
    return " ".join(t for t in texts if t)


def mean_probabilities(segments, key, labels):
    """The segments' class probabilities, weighted by their durations.

    Arguments
    ---------
    segments : list of dict
        ``start``, ``end`` (seconds) and ``key`` (label -> probability).
    key : str
        The probabilities' key in a segment.
    labels : list of str
        Class labels.

    Returns
    -------
    dict
        Label -> probability (6 decimals); ``{}`` without segments.

    Example
    -------
    >>> mean_probabilities([{"start": 0, "end": 1, "p": {"a": 1.0}},
    ...                     {"start": 1, "end": 4, "p": {"a": 0.0}}], "p", ["a"])
    {'a': 0.25}
    """
    total = sum(s["end"] - s["start"] for s in segments)
    if not segments or total <= 0:
        return {}
    return {
        label: round(
            sum(s[key][label] * (s["end"] - s["start"]) for s in segments)
            / total,
            6,
        )
        for label in labels
    }
