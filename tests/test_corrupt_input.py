"""Corrupt input raises before the VAD, in every ``*_file`` and ``*_batch``
method of ``HarmoniFuseSLM``, with the VAD on and off.

Without these checks the VAD ran first and took damaged audio for silence:
NaN samples in a file gave ``""`` and no emotion, a ``wav_lens`` of 0 gave
``""``, and a 1-D tensor failed with ``IndexError: tuple index out of
range`` (issue 20, item 5). The model is a tiny random one exported as an
inference folder (``tests.longform_helpers``).
"""

import numpy as np
import pytest
import soundfile as sf
import torch

from harmonifuse_sb.dataio import AudioError
from harmonifuse_sb.inference import HarmoniFuseSLM
from tests.longform_helpers import export_untrained_model

FILE_METHODS = ("transcribe_file", "classify_file", "analyze_file")
BATCH_METHODS = ("transcribe_batch", "classify_batch", "analyze_batch")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The same exported model with the VAD on and off."""
    tmp = tmp_path_factory.mktemp("corrupt")
    folder = export_untrained_model(str(tmp / "model"), str(tmp / "work"))
    on = HarmoniFuseSLM.from_hparams(source=folder, run_opts={"device": "cpu"})
    off = HarmoniFuseSLM.from_hparams(
        source=folder, run_opts={"device": "cpu"}, vad=False
    )
    assert on.vad is not None and off.vad is None
    return {"on": on, "off": off}


def _tone(seconds=3.0, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype("float32")


@pytest.fixture
def damaged(tmp_path):
    """A 3 s file whose samples at 2.5 s are NaN, and one with +Inf at 0 s:
    the first is in the VAD's last block, the second in its first."""
    nan = _tone()
    nan[40000:40010] = np.nan
    inf = _tone()
    inf[0] = np.inf
    paths = {}
    for name, audio in (("nan", nan), ("inf", inf)):
        paths[name] = str(tmp_path / f"{name}.wav")
        sf.write(paths[name], audio, 16000, subtype="FLOAT")
    return paths


@pytest.mark.parametrize("vad", ["on", "off"])
@pytest.mark.parametrize("method", FILE_METHODS)
def test_damaged_file_is_named(models, damaged, vad, method):
    slm = models[vad]
    with pytest.raises(AudioError) as err:
        getattr(slm, method)(damaged["nan"])
    message = str(err.value)
    assert damaged["nan"] in message
    assert "NaN or infinite samples (the first at 2.500 s)" in message
    with pytest.raises(AudioError, match=r"the first at 0\.000 s"):
        getattr(slm, method)(damaged["inf"])


@pytest.mark.parametrize("vad", ["on", "off"])
def test_damaged_file_in_a_list_is_named(models, damaged, tmp_path, vad):
    good = str(tmp_path / "good.wav")
    sf.write(good, _tone(1.0), 16000)
    with pytest.raises(AudioError) as err:
        models[vad].analyze_files([good, damaged["nan"]])
    message = str(err.value)
    assert message.startswith("List item 1: ")
    assert f"Audio file {damaged['nan']} holds 10 NaN" in message


def _batch_cases():
    nan = torch.zeros(3, 8000)
    nan[2, 100] = float("nan")
    inf = torch.zeros(2, 8000)
    inf[1, -1] = -float("inf")
    return [
        (nan, None, "Batch item 2 holds NaN or infinite samples"),
        (inf, None, "Batch item 1 holds NaN or infinite samples"),
        (
            torch.zeros(8000),
            None,
            r"wavs has shape \(8000,\); a batch is \(B, N\): for one "
            r"waveform, pass wavs.unsqueeze\(0\)",
        ),
        (
            torch.zeros(2, 8000),
            torch.tensor([1.0, 0.0]),
            r"wav_lens\[1\] = 0 is outside \(0, 1\]",
        ),
        (torch.zeros(2, 8000), torch.ones(3), r"wav_lens has shape \(3,\)"),
    ]


@pytest.mark.parametrize("vad", ["on", "off"])
@pytest.mark.parametrize("method", BATCH_METHODS)
@pytest.mark.parametrize("wavs, wav_lens, message", _batch_cases())
def test_corrupt_batch_raises_before_the_vad(
    models, vad, method, wavs, wav_lens, message, monkeypatch
):
    slm = models[vad]
    if slm.vad is not None:  # the VAD must not even be asked

        def no_vad(*args, **kwargs):
            raise AssertionError("the VAD ran on a corrupt batch")

        monkeypatch.setattr(type(slm.vad), "has_speech", no_vad)
    with pytest.raises(ValueError, match=message):
        getattr(slm, method)(wavs, wav_lens)


@pytest.mark.parametrize("vad", ["on", "off"])
def test_silence_still_passes_as_no_speech(models, vad):
    """The checks refuse damaged input only: a short, silent item of a
    valid batch keeps the no-speech result with the VAD on."""
    wavs = torch.zeros(2, 16000)
    wavs[0] = torch.from_numpy(_tone(1.0))
    lens = torch.tensor([1.0, 0.01])  # 160 samples of silence
    if vad == "on":
        probs, labels = models[vad].classify_batch(wavs, lens)
        assert labels[1] is None and probs[1].abs().sum() == 0
    else:  # decoded whole: too short for the encoder, and named
        with pytest.raises(ValueError, match="Batch item 1 has 160 samples"):
            models[vad].classify_batch(wavs, lens)
