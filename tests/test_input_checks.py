"""Bad input is stopped at the door with an error that names it.

Covers item 5 of the robustness work: NaN/Inf audio, malformed batches
(1-D tensors, ``wav_lens`` outside (0, 1] or of the wrong shape), and audio
shorter than the encoder's receptive field, in the model (training and
inference share ``HarmoniFuse.encode_speech``) and in data preparation.
The interface and the command line are tested in ``test_inference.py``.
"""

import json
import logging
import re

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

from harmonifuse_sb.dataio import (
    AudioError,
    ManifestError,
    check_batch,
    load_audio,
    load_manifest,
)
from harmonifuse_sb.lobes import (
    ConformerSpeechEncoder,
    HFSpeechEncoder,
    PromptAdaptiveFusion,
    SpeechLM,
    SpeechProjector,
    TaskGate,
)
from harmonifuse_sb.lobes.speech_lm import make_tiny_causal_lm
from harmonifuse_sb.model import HarmoniFuse


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("llm"))
    slm = SpeechLM(make_tiny_causal_lm(folder), num_classes=2, freeze=False)
    encoder = ConformerSpeechEncoder(
        n_mels=20, d_model=16, num_layers=2, nhead=2, d_ffn=32
    )
    return HarmoniFuse(
        encoder,
        PromptAdaptiveFusion(2, 32),
        TaskGate(16, 32),
        SpeechProjector(16, 32),
        slm,
        prompts={"asr": "transcribe", "ser": "emotion"},
        emotions=["a", "b"],
    ).eval()


@pytest.mark.parametrize(
    "wavs, wav_lens, message",
    [
        (torch.zeros(8000), None, r"shape \(8000,\); a batch is \(B, N\)"),
        (torch.zeros(2, 8000, 2), None, "downmix channels first"),
        (np.zeros((2, 8000)), None, "wavs is a ndarray"),
        (torch.zeros(2, 8000, dtype=torch.int16), None, "dtype torch.int16"),
        (torch.zeros(2, 8000), torch.ones(3), r"wav_lens has shape \(3,\)"),
        (
            torch.zeros(2, 8000),
            torch.ones(2, 1),
            r"wav_lens has shape \(2, 1\)",
        ),
        (torch.zeros(2, 8000), torch.tensor([1.0, 0.0]), r"wav_lens\[1\] = 0"),
        (
            torch.zeros(2, 8000),
            torch.tensor([1.5, 1.0]),
            r"wav_lens\[0\] = 1.5",
        ),
        (
            torch.zeros(2, 8000),
            torch.tensor([1.0, -0.2]),
            r"wav_lens\[1\] = -0.2",
        ),
    ],
)
def test_malformed_batches_are_named(model, wavs, wav_lens, message):
    with pytest.raises(ValueError, match=message):
        model.encode_speech(wavs, wav_lens)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_samples_name_the_item(model, value):
    wavs = torch.zeros(3, 8000)
    wavs[2, 100] = value
    with pytest.raises(ValueError, match="Batch item 2 holds NaN or infinite"):
        model.encode_speech(wavs, torch.ones(3))


def test_too_short_item_names_the_minimum(model):
    wavs = torch.randn(2, 8000)
    lens = torch.tensor([1.0, 0.03])  # 240 samples < 400 (one 25 ms window)
    assert model.encoder.min_samples == 400
    with pytest.raises(ValueError, match=r"Batch item 1 has 240 samples"):
        model.encode_speech(wavs, lens)
    with pytest.raises(ValueError, match=r"at least 400 \(25.0 ms\)"):
        model.encode_speech(wavs, lens)


def test_a_valid_batch_passes(model):
    hidden, lens = model.encode_speech(
        torch.randn(2, 8000), torch.tensor([1.0, 0.5])
    )
    assert hidden.shape[:2] == (3, 2)
    check_batch(torch.zeros(1, 400), min_samples=400)


def test_wavlm_large_receptive_field(tmp_path):
    """The WavLM Large CNN (7 convolutions) needs 400 samples; a 10 ms file
    used to fail inside torch with 'Kernel size can't be greater than actual
    input size'; now the batch check names the minimum first."""
    config = WavLMConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )  # default conv layout: WavLM Large's
    WavLMModel(config).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(
        return_attention_mask=True, do_normalize=True
    ).save_pretrained(tmp_path)
    encoder = HFSpeechEncoder(str(tmp_path))
    assert encoder.min_samples == 400
    with pytest.raises(ValueError, match=r"160 samples \(10.0 ms\)"):
        check_batch(torch.randn(1, 160), None, encoder.min_samples)
    hidden, _ = encoder(torch.randn(1, 400))
    assert hidden.shape[2] == 1  # exactly one frame at the minimum


def test_nan_file_is_named(tmp_path):
    path = str(tmp_path / "broken.wav")
    audio = np.zeros(16000, dtype="float32")
    audio[8000] = np.nan
    sf.write(path, audio, 16000, subtype="FLOAT")
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert path in str(err.value)
    assert "1 NaN or infinite samples (the first at 0.500 s)" in str(err.value)


def test_too_short_utterances_are_counted_and_left_out(tmp_path, caplog):
    manifest = {
        f"utt{i}": {"wav": "{data_root}/x.wav", "duration": d, "wrd": "a b"}
        for i, d in enumerate([1.0, 0.01, 2.0, 0.02])
    }
    path = tmp_path / "asr.json"
    path.write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        data = load_manifest(str(path), "asr", "/data", min_duration=0.025)
    assert sorted(data.data_ids) == ["utt0", "utt2"]
    assert re.search(
        r"asr.json: 2 of 4 utterances are shorter than 0.025 s.*"
        r"first: utt1, utt3",
        caplog.text,
    )
    path.write_text(json.dumps({"u": manifest["utt1"]}))
    with pytest.raises(ManifestError, match="every utterance is shorter"):
        load_manifest(str(path), "asr", "/data", min_duration=0.025)
