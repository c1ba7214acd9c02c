"""Voice activity, the no-speech rule and long recordings.

The VAD is tested on real synthesised speech (eSpeak NG, as in the
synthetic corpus) built into recordings whose utterance boundaries are
known (``benchmarks/bench_longform.build_recording``: pauses of 0.2-1.5 s,
noise-only stretches, a level per utterance, a noise floor). The interface
is tested with a tiny random model exported as an inference folder: its
outputs are arbitrary but deterministic, so each long-form result is
compared with the same audio decoded by the batch methods.
"""

import os
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from harmonifuse_sb.dataio import AudioError, load_audio
from harmonifuse_sb.inference import HarmoniFuseSLM
from harmonifuse_sb.longform import AudioStream, segment_file
from harmonifuse_sb.vad import SAMPLE_RATE, VoiceActivityDetector
from tests.longform_helpers import (
    EMOTIONS,
    ROOT,
    espeak_clips,
    export_untrained_model,
)

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from bench_longform import (  # noqa: E402
    boundary_errors,
    build_recording,
    pink_noise,
    speech_span,
)

TOLERANCE = 0.3  # seconds, the boundary target
PROB_TOL = 1e-5


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return espeak_clips(str(tmp_path_factory.mktemp("clips")))


@pytest.fixture(scope="module")
def recording(clips, tmp_path_factory):
    """~30 s: 8 utterances, pauses 0.2-1.5 s, 2 noise-only stretches."""
    path = str(tmp_path_factory.mktemp("rec") / "recording.wav")
    placed = build_recording(
        path, clips, None, np.random.default_rng(3), noise_stretches=2
    )
    assert len(placed) == len(clips)  # one pass over the clips
    return path, placed


@pytest.fixture(scope="module")
def slm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("model")
    folder = export_untrained_model(str(tmp / "model"), str(tmp / "work"))
    return HarmoniFuseSLM.from_hparams(
        source=folder, savedir=str(tmp / "savedir"), run_opts={"device": "cpu"}
    )


def noise_clips(seconds=2.0, seed=0):
    """Silence and white, pink and brown noise from -90 to -3 dBFS."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    clips = [torch.zeros(n)]
    for db in (-90, -60, -40, -20, -10, -3):
        brown = np.cumsum(rng.standard_normal(n))
        brown = (brown - brown.mean()) / brown.std()
        for shape in (rng.standard_normal(n), pink_noise(rng, n), brown):
            wav = np.clip(shape * 10 ** (db / 20), -1, 1)
            clips.append(torch.tensor(wav, dtype=torch.float32))
    return clips


# ---------------------------------------------------------------- reading
@pytest.mark.parametrize("rate,channels", [(44100, 2), (8000, 1), (16000, 2)])
def test_stream_reads_what_load_audio_reads(tmp_path, rate, channels):
    rng = np.random.default_rng(0)
    wav = 0.1 * rng.standard_normal((rate * 3 + 17, channels))
    path = str(tmp_path / "x.wav")
    sf.write(path, wav.astype("float32"), rate, subtype="FLOAT")
    whole = load_audio(path)
    stream = AudioStream(path)
    assert stream.num_samples == len(whole)
    joined = torch.cat(list(stream.blocks(7001)))
    assert joined.shape == whole.shape
    assert torch.allclose(joined, whole, atol=1e-6)
    for start, end in ((0, 10), (5000, 5001), (123, 40000), (40000, 10**9)):
        assert torch.allclose(
            stream.read(start, end), whole[start:end], atol=1e-6
        )


def test_stream_names_bad_files(tmp_path):
    missing = str(tmp_path / "missing.wav")
    corrupt = str(tmp_path / "corrupt.wav")
    with open(corrupt, "wb") as f:
        f.write(np.random.default_rng(0).bytes(3000))
    empty = str(tmp_path / "empty.wav")
    sf.write(empty, np.zeros(0, dtype="float32"), 16000)
    for path, message in (
        (missing, "not found"),
        (corrupt, "Cannot read"),
        (empty, "no samples"),
    ):
        with pytest.raises(AudioError, match=message) as err:
            AudioStream(path)
        assert path in str(err.value)


# ---------------------------------------------------------------- VAD
def test_stream_probs_equal_whole_waveform_probs(recording):
    path, _ = recording
    wav = load_audio(path)
    vad = VoiceActivityDetector(target_peak=None)  # same level everywhere
    whole = vad.speech_probs(wav)
    pieces = vad.stream_speech_probs(wav.split(10_001))  # not 512-aligned
    assert whole.shape == (-(-len(wav) // 512),)
    assert torch.allclose(pieces, whole, atol=1e-5)


def test_boundaries_of_espeak_utterances(recording):
    path, placed = recording
    vad = VoiceActivityDetector()
    regions = segment_file(AudioStream(path), vad)
    segments = [{"start": s / 16000, "end": e / 16000} for s, e in regions]
    # One region per utterance: pauses of 0.2 s are found, noise-only
    # stretches give none.
    assert len(segments) == len(placed)
    errors = boundary_errors(placed, segments)
    assert max(max(e) for e in errors) <= TOLERANCE, errors
    for utt, seg in zip(placed, segments):  # in order, one to one
        assert seg["start"] < utt["end"] and utt["start"] < seg["end"]


def test_long_speech_is_split_at_pauses(clips):
    """Pauses (0.4 s) shorter than min_pause: one stretch of > 10 s, cut
    in the pauses (the least speech-like points), pieces <= max."""
    pause = 1e-4 * torch.randn(6400)
    wavs, spans, pos = [], [], 0  # speech (start, end) of each clip, s
    for clip in clips[:5]:
        wav = load_audio(clip["wav"])
        start, end = speech_span(wav.numpy())
        spans.append((pos / 16000 + start, pos / 16000 + end))
        wavs += [wav, pause]
        pos += len(wav) + len(pause)
    gaps = [(a[1], b[0]) for a, b in zip(spans, spans[1:])]
    wav = torch.cat(wavs)
    assert len(wav) > 10 * 16000
    vad = VoiceActivityDetector(min_pause=1.0, max_segment_duration=4.0)
    regions = vad.regions(vad.speech_probs(wav), len(wav))
    assert len(regions) >= 3
    assert all(e - s <= 4.0 * 16000 for s, e in regions)
    assert all(a[1] == b[0] for a, b in zip(regions, regions[1:]))
    for _, cut in regions[:-1]:
        t = cut / 16000
        assert any(a - 0.1 <= t <= b + 0.1 for a, b in gaps), (t, gaps)


def test_no_speech_in_silence_and_noise(clips):
    vad = VoiceActivityDetector()
    noise = noise_clips()
    assert vad.has_speech(torch.stack(noise)) == [False] * len(noise)
    # Speech at any level is speech (the VAD's input is level-normalised).
    speech = load_audio(clips[0]["wav"])
    for gain in (1.0, 0.01, 0.001):
        assert vad.has_speech(gain * speech[None]) == [True]


def test_has_speech_sees_only_each_items_length(clips):
    vad = VoiceActivityDetector()
    speech = load_audio(clips[1]["wav"])
    batch = torch.zeros(2, len(speech) + 16000)
    batch[0, : len(speech)] = speech
    batch[1, 16000:] = speech  # speech only in item 1's padding
    assert vad.has_speech(
        batch, torch.tensor([1.0, 16000 / batch.shape[1]])
    ) == [True, False]


def test_bad_vad_options_are_refused():
    with pytest.raises(ValueError, match="threshold"):
        VoiceActivityDetector(threshold=1.5)
    with pytest.raises(ValueError, match="max_segment_duration"):
        VoiceActivityDetector(max_segment_duration=0.01)
    with pytest.raises(TypeError, match="Unknown VAD options"):
        VoiceActivityDetector().options(treshold=0.3)


# ---------------------------------------------------------------- interface
def test_no_speech_rule_in_batch_methods(slm, clips):
    speech = load_audio(clips[2]["wav"])
    silence, white = torch.zeros(16000), 0.3 * torch.randn(24000)
    items = [silence, speech, white]
    lengths = torch.tensor([len(w) for w in items]).float()
    batch = torch.zeros(3, int(lengths.max()))
    for row, wav in zip(batch, items):
        row[: len(wav)] = wav
    lens = lengths / lengths.max()

    alone = slm.analyze_batch(speech[None])[0]
    texts = slm.transcribe_batch(batch, lens)
    probs, labels = slm.classify_batch(batch, lens)
    results = slm.analyze_batch(batch, lens)
    assert texts[0] == texts[2] == ""
    assert labels[0] is labels[2] is None
    assert torch.equal(probs[0], torch.zeros(4))
    assert torch.equal(probs[2], torch.zeros(4))
    for i in (0, 2):
        assert results[i] == {
            "transcript": "",
            "emotion": None,
            "probabilities": {},
        }
    # The speech item decodes as it does alone.
    assert texts[1] == results[1]["transcript"] == alone["transcript"]
    assert labels[1] == results[1]["emotion"] == alone["emotion"]
    for emo in EMOTIONS:
        assert (
            abs(
                float(probs[1, EMOTIONS.index(emo)])
                - alone["probabilities"][emo]
            )
            < PROB_TOL
        )
    # A batch without any speech runs no model pass at all.
    calls = []
    encode = slm._encode
    slm._encode = lambda *a: calls.append(a) or encode(*a)
    try:
        assert slm.transcribe_batch(torch.stack([silence, silence])) == [
            "",
            "",
        ]
    finally:
        del slm._encode
    assert calls == []


def test_vad_options_yaml_constructor_and_call(slm, clips):
    folder = slm.hparams.model_dir
    with open(os.path.join(folder, "hyperparams.yaml"), encoding="utf-8") as f:
        text = f.read()
    assert "vad:\n  threshold: 0.5\n" in text  # exported from the YAML
    assert slm.vad.threshold == 0.5
    assert slm.vad.max_segment_duration == 20.0

    other = HarmoniFuseSLM.from_hparams(
        source=folder, vad={"threshold": 0.8, "max_segment_duration": 9}
    )
    assert (other.vad.threshold, other.vad.max_segment_duration) == (0.8, 9)
    assert other.vad.min_pause == slm.vad.min_pause

    # Off: noise is decoded like speech. Per call: the threshold decides.
    off = HarmoniFuseSLM.from_hparams(source=folder, vad=False)
    assert off.vad is None
    noise = 0.3 * torch.randn(1, 16000)
    assert (
        off.transcribe_batch(noise)
        == slm._decode(noise, torch.ones(1), ("asr",))["transcript"]
    )
    # Speech in noise (SNR -10 dB): its speech probability peaks below 1.
    speech = load_audio(clips[3]["wav"])
    noise = torch.randn(len(speech), generator=torch.Generator().manual_seed(0))
    noisy = (speech + noise * speech.pow(2).mean().sqrt() * 10**0.5)[None]
    peak = float(slm.vad.speech_probs(slm.vad.normalise(noisy)[0]).max())
    assert 0.05 < peak < 0.99
    assert slm.transcribe_batch(noisy, vad_threshold=peak + 0.005) == [""]
    decoded = slm._decode(noisy, torch.ones(1), ("asr",))["transcript"]
    assert slm.transcribe_batch(noisy, vad_threshold=peak - 0.04) == decoded
    with pytest.raises(ValueError, match="bad `vad` options"):
        HarmoniFuseSLM.from_hparams(source=folder, vad={"treshold": 0.8})


def test_long_recording_segments(slm, recording):
    path, placed = recording
    result = slm.analyze_file(path, batch_size=3)
    assert set(result) == {
        "transcript",
        "emotion",
        "probabilities",
        "segments",
    }
    segments = result["segments"]
    assert len(segments) == len(placed)
    errors = boundary_errors(placed, segments)
    assert max(max(e) for e in errors) <= TOLERANCE, errors
    assert [s["start"] for s in segments] == sorted(
        s["start"] for s in segments
    )
    # Each segment is its audio, with the decoding context around it,
    # decoded by analyze_batch.
    stream = AudioStream(path)
    regions = [
        (round(seg["start"] * 16000), round(seg["end"] * 16000))
        for seg in segments
    ]
    spans = slm._with_context(regions, stream.num_samples)
    assert all(a <= s and e <= b for (s, e), (a, b) in zip(regions, spans))
    for seg, (start, end) in zip(segments, spans):
        alone = slm.analyze_batch(stream.read(start, end)[None])[0]
        assert seg["transcript"] == alone["transcript"]
        assert seg["emotion"] == alone["emotion"]
        for emo in EMOTIONS:
            assert (
                abs(seg["probabilities"][emo] - alone["probabilities"][emo])
                < 1e-4
            )
    # The file's result: joined transcripts, duration-weighted emotion.
    assert result["transcript"] == " ".join(
        s["transcript"].strip() for s in segments if s["transcript"].strip()
    )
    weights = np.array([s["end"] - s["start"] for s in segments])
    for emo in EMOTIONS:
        mean = (
            sum(w * s["probabilities"][emo] for w, s in zip(weights, segments))
            / weights.sum()
        )
        assert abs(result["probabilities"][emo] - mean) < 1e-5
    assert result["emotion"] == max(
        result["probabilities"], key=result["probabilities"].get
    )
    assert slm.transcribe_file(path) == result["transcript"]
    label, probs = slm.classify_file(path)
    assert label == result["emotion"]
    assert probs == pytest.approx(result["probabilities"], abs=1e-5)


def test_long_file_is_read_in_bounded_pieces(slm, recording, monkeypatch):
    path, _ = recording
    spans = []
    read = AudioStream.read

    def spy(self, start, end):
        spans.append(min(end, self.num_samples) - start)
        return read(self, start, end)

    monkeypatch.setattr(AudioStream, "read", spy)
    slm.vad = slm.vad.options(block_duration=4.0)
    try:
        result = slm.analyze_file(path, max_segment_duration=3.0)
    finally:
        slm.vad = slm.vad.options(block_duration=30.0)
    assert len(result["segments"]) >= 8
    assert all(s["end"] - s["start"] <= 3.0 for s in result["segments"])
    assert max(spans) <= 4.0 * 16000  # never the whole 30 s file
    assert sum(spans) > 30 * 16000  # VAD pass + segments


def test_single_utterance_same_as_before(slm, clips, tmp_path):
    wav = load_audio(clips[4]["wav"])
    padded = torch.cat([torch.zeros(8000), wav, torch.zeros(4000)])
    path = str(tmp_path / "one.wav")
    sf.write(path, padded.numpy(), 16000, subtype="FLOAT")
    before = slm.analyze_batch(*slm.load_batch([path]))[0]
    result = slm.analyze_file(path)
    (segment,) = result.pop("segments")
    assert result == before
    assert segment["transcript"] == before["transcript"]
    start, end = speech_span(padded.numpy())
    assert abs(segment["start"] - start) <= TOLERANCE
    assert abs(segment["end"] - end) <= TOLERANCE
    assert slm.transcribe_file(path) == before["transcript"]
    assert slm.classify_file(path) == (
        before["emotion"],
        before["probabilities"],
    )


def test_file_without_speech(slm, tmp_path):
    rng = np.random.default_rng(1)
    for name, wav in (
        ("silence", np.zeros(48000)),
        ("white", 0.2 * rng.standard_normal(48000)),
        ("pink", 0.05 * pink_noise(rng, 48000)),
    ):
        path = str(tmp_path / f"{name}.wav")
        sf.write(path, wav.astype("float32"), 16000)
        assert slm.analyze_file(path) == {
            "transcript": "",
            "emotion": None,
            "probabilities": {},
            "segments": [],
        }
        assert slm.transcribe_file(path) == ""
        assert slm.classify_file(path) == (None, {})
