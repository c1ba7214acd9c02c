"""Tests of the two speech encoder lobes: HFSpeechEncoder, ConformerSpeechEncoder.

Tiny random transformers models are built from configs, saved with
``save_pretrained`` and loaded by path, as a user loads a hub id. Audio is
random noise; the properties tested do not depend on it.
"""

import math
import os

import numpy as np
import pytest
import torch
from speechbrain.utils.checkpoints import Checkpointer
from transformers import (
    HubertConfig,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperModel,
)

from harmonifuse_sb.lobes import ConformerSpeechEncoder, HFSpeechEncoder
from harmonifuse_sb.lobes.checkpointing import trainable_state_dict
from harmonifuse_sb.lobes.conformer_encoder import level_norm
from harmonifuse_sb.lobes.hf_encoder import zero_mean_unit_var_norm

SAMPLE_RATE = 16000
TOLERANCE = 1e-4
# Lengths chosen not to divide the CNN strides or the STFT hop.
LENGTHS = (16000, 11003, 4997)

TINY_W2V = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(32, 32),
    conv_stride=(5, 4),
    conv_kernel=(10, 8),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)
# WavLM / HuBERT / wav2vec2 Large style: layer-norm CNN, attention masks.
LARGE_STYLE = dict(feat_extract_norm="layer", do_stable_layer_norm=True)
NO_DROPOUT = dict(
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    feat_proj_dropout=0.0,
    final_dropout=0.0,
)
TINY_WHISPER = dict(
    d_model=32,
    encoder_layers=2,
    decoder_layers=1,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    num_mel_bins=80,
    vocab_size=100,
    max_target_positions=32,
    decoder_start_token_id=1,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

W2V_KINDS = {
    # name: (config class, model class, extra config, extractor settings)
    "wavlm": (WavLMConfig, WavLMModel, LARGE_STYLE, dict(do_normalize=False)),
    "hubert": (HubertConfig, HubertModel, LARGE_STYLE, {}),
    "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model, LARGE_STYLE, {}),
    # wav2vec2-base style: group-norm CNN, trained without attention masks.
    "wav2vec2_base": (
        Wav2Vec2Config,
        Wav2Vec2Model,
        dict(feat_extract_norm="group", do_stable_layer_norm=False),
        dict(return_attention_mask=False),
    ),
}
MASKED_KINDS = ["wavlm", "hubert", "wav2vec2"]
ALL_KINDS = [*W2V_KINDS, "whisper"]


def save_w2v(folder, kind, extractor=True, **config_kwargs):
    """Saves a tiny model of ``kind`` (and its feature extractor)."""
    config_cls, model_cls, extra, extractor_kwargs = W2V_KINDS[kind]
    torch.manual_seed(0)
    config = config_cls(**TINY_W2V, **extra, **config_kwargs)
    model_cls(config).save_pretrained(folder)
    if extractor:
        settings = dict(return_attention_mask=True, do_normalize=True)
        settings.update(extractor_kwargs)
        Wav2Vec2FeatureExtractor(**settings).save_pretrained(folder)
    return str(folder)


def save_whisper(
    folder, model_cls=WhisperForConditionalGeneration, **config_kwargs
):
    """Saves a tiny Whisper as the hub does (with the decoder)."""
    torch.manual_seed(0)
    config = WhisperConfig(**TINY_WHISPER, **config_kwargs)
    model_cls(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """One saved folder per model kind."""
    root = tmp_path_factory.mktemp("hf_models")
    folders = {k: save_w2v(root / k, k) for k in W2V_KINDS}
    folders["whisper"] = save_whisper(root / "whisper")
    return folders


def make_batch(lengths=LENGTHS, seed=0):
    """Random utterances, zero-padded into a batch with relative lengths."""
    generator = torch.Generator().manual_seed(seed)
    utterances = [torch.randn(n, generator=generator) for n in lengths]
    longest = max(lengths)
    wavs = torch.stack(
        [torch.nn.functional.pad(u, (0, longest - len(u))) for u in utterances]
    )
    wav_lens = torch.tensor([n / longest for n in lengths])
    return utterances, wavs, wav_lens


def padding_error(encoder, lengths=LENGTHS):
    """Max abs difference on valid frames, alone vs in a padded batch."""
    utterances, wavs, wav_lens = make_batch(lengths)
    with torch.no_grad():
        batch_hidden, batch_lens = encoder(wavs, wav_lens)
        error = 0.0
        for i, utterance in enumerate(utterances):
            alone, alone_lens = encoder(utterance[None], torch.ones(1))
            frames = alone.shape[2]
            assert alone_lens.item() == 1.0
            batch_frames = round(batch_lens[i].item() * batch_hidden.shape[2])
            assert batch_frames == frames
            diff = batch_hidden[:, i, :frames] - alone[:, 0]
            error = max(error, diff.abs().max().item())
    return error


def expected_frames(kind, n_samples):
    """Valid output frames of the tiny models for ``n_samples`` samples."""
    if kind == "whisper":
        mel_frames = math.ceil(n_samples / 160)
        return (mel_frames - 1) // 2 + 1
    frames = n_samples
    for kernel, stride in zip(TINY_W2V["conv_kernel"], TINY_W2V["conv_stride"]):
        frames = (frames - kernel) // stride + 1
    return frames


def checkpoint_state(folder):
    """The state saved for the ``encoder`` recoverable of a Checkpointer."""
    checkpointer = Checkpointer(folder)
    ckpt = checkpointer.find_checkpoint()
    return torch.load(os.path.join(ckpt.path, "encoder.ckpt"))


# ---------------------------------------------------------------- HF encoder


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_shapes_and_lengths(sources, kind):
    encoder = HFSpeechEncoder(sources[kind])
    _, wavs, wav_lens = make_batch()
    hidden, out_lens = encoder(wavs, wav_lens)
    frames = [expected_frames(kind, n) for n in LENGTHS]
    assert encoder.num_layers == 2 and encoder.output_dim == 32
    assert hidden.shape == (3, 3, max(frames), 32)
    assert torch.equal(
        torch.round(out_lens * hidden.shape[2]).long(), torch.tensor(frames)
    )
    # Padded frames are zero in every layer, valid ones are not.
    for i, n in enumerate(frames):
        assert hidden[:, i, :n].abs().amax(dim=-1).min().item() > 0.0
        if n < max(frames):
            assert hidden[:, i, n:].abs().max().item() == 0.0


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_padding_invariance(sources, kind):
    encoder = HFSpeechEncoder(sources[kind])
    error = padding_error(encoder)
    print(f"{kind}: padding invariance max abs error {error:.2e}")
    # Whisper too: every utterance is padded to the same 30 s window alone
    # or in a batch, so at most float rounding differs (measured: 0 on CPU).
    assert error < TOLERANCE


def test_group_norm_runs_per_utterance(sources):
    """A group-norm CNN mixes padding into its statistics: one padded call
    is far off, the default per-utterance mode is exact.
    """
    auto = HFSpeechEncoder(sources["wav2vec2_base"])
    padded = HFSpeechEncoder(sources["wav2vec2_base"], batching="padded")
    assert not auto.use_attention_mask and not auto.batch_invariant
    assert padding_error(auto) < TOLERANCE
    assert padding_error(padded) > 100 * TOLERANCE


def test_whisper_log_mel_matches_feature_extractor(sources):
    encoder = HFSpeechEncoder(sources["whisper"])
    extractor = WhisperFeatureExtractor(feature_size=80)
    utterances, _, _ = make_batch()
    for utterance in utterances:
        reference = extractor(
            utterance.numpy(), sampling_rate=SAMPLE_RATE, return_tensors="pt"
        ).input_features  # (1, 80, 3000)
        padded = torch.nn.functional.pad(
            utterance, (0, encoder.max_samples - len(utterance))
        )
        ours = encoder.log_mel(padded[None])
        assert ours.shape == reference.shape
        assert (ours - reference).abs().max().item() < 1e-5


def test_whisper_loads_from_a_base_model_folder(tmp_path):
    """Both hub layouts load: WhisperModel and WhisperForConditionalGeneration."""
    folder = save_whisper(tmp_path, model_cls=WhisperModel)
    reference = WhisperModel.from_pretrained(folder).encoder
    encoder = HFSpeechEncoder(folder)
    for name, value in reference.state_dict().items():
        assert torch.equal(encoder.model.state_dict()[name], value)


def test_whisper_rejects_more_than_30_s(sources):
    encoder = HFSpeechEncoder(sources["whisper"])
    with pytest.raises(ValueError, match="Split long audio"):
        encoder(torch.zeros(1, encoder.max_samples + 1))


@pytest.mark.parametrize("kind", ["wavlm", "whisper"])
def test_frozen_encoder_has_no_gradient_and_empty_checkpoint(
    sources, kind, tmp_path
):
    encoder = HFSpeechEncoder(sources[kind], freeze=True)
    encoder.train()
    assert not encoder.model.training
    assert not any(p.requires_grad for p in encoder.parameters())
    _, wavs, wav_lens = make_batch()
    hidden, _ = encoder(wavs.requires_grad_(True), wav_lens)
    assert not hidden.requires_grad
    Checkpointer(tmp_path, recoverables={"encoder": encoder}).save_checkpoint()
    assert checkpoint_state(tmp_path) == {}


def top_layer_prefix(kind):
    """Names of the parameters that ``num_trainable_layers=1`` trains."""
    if kind == "whisper":
        return ("model.layers.1.", "model.layer_norm.")
    return ("model.encoder.layers.1.",)


@pytest.mark.parametrize("kind", ["wavlm", "hubert", "wav2vec2", "whisper"])
def test_top_layer_finetuning_and_checkpoint_round_trip(
    sources, kind, tmp_path
):
    encoder = HFSpeechEncoder(
        sources[kind], freeze=False, num_trainable_layers=1
    )
    encoder.train()
    layers = encoder._layers()
    assert layers[1].training and not layers[0].training
    _, wavs, wav_lens = make_batch()
    hidden, _ = encoder(wavs, wav_lens)
    hidden.pow(2).mean().backward()

    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    with_grad = {
        n
        for n, p in encoder.named_parameters()
        if p.grad is not None and p.grad.abs().sum() > 0
    }
    assert trainable and with_grad == trainable
    assert all(n.startswith(top_layer_prefix(kind)) for n in trainable)

    checkpointer = Checkpointer(tmp_path, recoverables={"encoder": encoder})
    checkpointer.save_checkpoint()
    saved = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    assert set(checkpoint_state(tmp_path)) == trainable

    with torch.no_grad():
        for param in encoder.parameters():
            if param.requires_grad:
                param.add_(1.0)
    checkpointer.recover_if_possible()
    for name, param in encoder.named_parameters():
        assert torch.equal(param, saved[name]), name


@pytest.mark.parametrize("kind", ["wavlm", "wav2vec2_base", "whisper"])
def test_full_finetuning_trains_every_used_weight(sources, kind):
    """freeze=False, num_trainable_layers=0: everything that reaches the
    hidden states trains, and nothing that does not (no unused parameters
    for DDP).
    """
    encoder = HFSpeechEncoder(sources[kind], freeze=False).train()
    _, wavs, wav_lens = make_batch()
    hidden, _ = encoder(wavs, wav_lens)
    hidden.pow(2).mean().backward()
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in encoder.named_parameters() if p.grad is not None}
    assert trainable == with_grad
    assert any("layers.0." in n for n in trainable)

    frozen_cnn = HFSpeechEncoder(
        sources[kind], freeze=False, freeze_feature_extractor=True
    )
    cnn = frozen_cnn._input_convs()
    assert not any(p.requires_grad for m in cnn for p in m.parameters())


def test_freeze_with_trainable_layers_is_an_error(sources):
    with pytest.raises(ValueError, match="freeze: False"):
        HFSpeechEncoder(sources["wavlm"], freeze=True, num_trainable_layers=1)
    with pytest.raises(ValueError, match="has 2 layers"):
        HFSpeechEncoder(sources["wavlm"], freeze=False, num_trainable_layers=3)


def test_normalisation_matches_the_feature_extractor():
    _, wavs, wav_lens = make_batch()
    n_samples = torch.round(wav_lens * wavs.shape[1]).long()
    mask = (torch.arange(wavs.shape[1]) < n_samples[:, None]).numpy()
    reference = Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm(
        list(wavs.numpy()), attention_mask=mask.astype(np.int32)
    )
    ours = zero_mean_unit_var_norm(wavs, n_samples)
    assert np.abs(ours.numpy() - np.stack(reference)).max() < 1e-5


@pytest.mark.parametrize("do_normalize", [True, False])
def test_normalisation_setting_is_respected(tmp_path, do_normalize):
    """With do_normalize the features ignore gain and DC offset."""
    folder = save_w2v(tmp_path, "wav2vec2")
    Wav2Vec2FeatureExtractor(
        return_attention_mask=True, do_normalize=do_normalize
    ).save_pretrained(folder)
    encoder = HFSpeechEncoder(folder)
    assert encoder.do_normalize is do_normalize
    _, wavs, wav_lens = make_batch()
    # Affine change of the valid samples; the padding stays zero.
    mask = torch.arange(wavs.shape[1]) < (wav_lens * wavs.shape[1])[:, None]
    shifted = (3.0 * wavs + 0.5) * mask
    with torch.no_grad():
        plain, _ = encoder(wavs, wav_lens)
        changed, _ = encoder(shifted, wav_lens)
    error = (plain - changed).abs().max().item()
    assert (error < TOLERANCE) is do_normalize


def test_settings_fall_back_to_the_config(tmp_path):
    layer = HFSpeechEncoder(save_w2v(tmp_path / "l", "wavlm", extractor=False))
    group = HFSpeechEncoder(
        save_w2v(tmp_path / "g", "wav2vec2_base", extractor=False)
    )
    assert layer.use_attention_mask and layer.batch_invariant
    assert not group.use_attention_mask and not group.batch_invariant
    assert padding_error(layer) < TOLERANCE


@pytest.mark.parametrize("kind", ["wavlm", "whisper"])
def test_spec_augment_only_when_asked(tmp_path, kind):
    """Without dropout, train and eval outputs differ only by SpecAugment."""
    masking = dict(mask_time_prob=0.5, mask_time_length=2)
    if kind == "whisper":
        folder = save_whisper(tmp_path, **masking)
    else:
        folder = save_w2v(tmp_path, kind, **masking, **NO_DROPOUT)
    _, wavs, wav_lens = make_batch()
    for apply, expect_change in [(False, False), (True, True)]:
        encoder = HFSpeechEncoder(
            folder, freeze=False, apply_spec_augment=apply
        )
        with torch.no_grad():
            evaluated, _ = encoder.eval()(wavs, wav_lens)
            trained, _ = encoder.train()(wavs, wav_lens)
        changed = (evaluated - trained).abs().max().item() > TOLERANCE
        assert changed is expect_change


# ---------------------------------------------------------- Conformer encoder

TINY_CONFORMER = dict(n_mels=40, d_model=32, num_layers=2, nhead=2, d_ffn=64)


def conformer_frames(n_samples, hop=160, blocks=2):
    """Valid frames: centred STFT, then stride-2 convolutions."""
    frames = n_samples // hop + 1
    for _ in range(blocks):
        frames = (frames - 1) // 2 + 1
    return frames


@pytest.mark.parametrize("encoder_type", ["conformer", "transformer"])
def test_conformer_shapes_and_lengths(encoder_type):
    torch.manual_seed(0)
    encoder = ConformerSpeechEncoder(
        **TINY_CONFORMER, encoder_type=encoder_type
    ).eval()
    _, wavs, wav_lens = make_batch()
    hidden, out_lens = encoder(wavs, wav_lens)
    frames = [conformer_frames(n) for n in LENGTHS]
    assert hidden.shape == (3, 3, max(frames), 32)
    assert encoder.num_layers == 2 and encoder.output_dim == 32
    assert torch.equal(
        torch.round(out_lens * hidden.shape[2]).long(), torch.tensor(frames)
    )
    assert hidden[:, 2, frames[2] :].abs().max().item() == 0.0


@pytest.mark.parametrize("encoder_type", ["conformer", "transformer"])
def test_conformer_padding_invariance(encoder_type):
    torch.manual_seed(0)
    encoder = ConformerSpeechEncoder(
        **TINY_CONFORMER, encoder_type=encoder_type
    ).eval()
    error = padding_error(encoder)
    print(f"{encoder_type}: padding invariance max abs error {error:.2e}")
    assert error < TOLERANCE


def test_conformer_default_size_padding_invariance():
    torch.manual_seed(0)
    encoder = ConformerSpeechEncoder().eval()
    error = padding_error(encoder, lengths=(32000, 20011, 7777))
    print(f"conformer (defaults): padding invariance max abs error {error:.2e}")
    assert error < TOLERANCE


def test_conformer_gradients_reach_every_layer():
    torch.manual_seed(0)
    encoder = ConformerSpeechEncoder(**TINY_CONFORMER).train()
    _, wavs, wav_lens = make_batch()
    hidden, _ = encoder(wavs, wav_lens)
    hidden[-1].pow(2).mean().backward()
    for name, param in encoder.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_conformer_is_deterministic_in_eval():
    torch.manual_seed(0)
    encoder = ConformerSpeechEncoder(**TINY_CONFORMER).eval()
    _, wavs, wav_lens = make_batch()
    with torch.no_grad():
        first, _ = encoder(wavs, wav_lens)
        second, _ = encoder(wavs, wav_lens)
    assert torch.equal(first, second)


# ---------------------------------------------------------------- level


LEVEL_TOLERANCE = 1e-4  # issue: same output for x and 0.1 x within 1e-4


def level_error(encoder, gain=0.1):
    """Largest output difference between a batch and the same batch scaled."""
    _, wavs, wav_lens = make_batch()
    with torch.no_grad():
        plain, _ = encoder(wavs, wav_lens)
        scaled, _ = encoder(gain * wavs, wav_lens)
    return (plain - scaled).abs().max().item()


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("gain", [0.1, 4.0])
def test_hf_encoders_are_level_invariant(sources, kind, gain):
    encoder = HFSpeechEncoder(sources[kind])
    error = level_error(encoder, gain)
    print(f"{kind}: x vs {gain} x max abs difference {error:.2e}")
    assert error < LEVEL_TOLERANCE


def test_hf_encoder_without_level_normalisation_hears_the_gain(sources):
    encoder = HFSpeechEncoder(sources["whisper"], input_level_db=None)
    assert level_error(encoder) > 1e-2


@pytest.mark.parametrize("feature_norm", ["level", "sentence"])
def test_conformer_is_level_invariant(feature_norm):
    torch.manual_seed(0)
    encoder = ConformerSpeechEncoder(
        **TINY_CONFORMER, feature_norm=feature_norm
    ).eval()
    error = level_error(encoder)
    print(f"conformer {feature_norm}: x vs 0.1 x max abs diff {error:.2e}")
    assert error < LEVEL_TOLERANCE


def test_conformer_fixed_norm_hears_the_gain():
    torch.manual_seed(0)
    encoder = ConformerSpeechEncoder(**TINY_CONFORMER, feature_norm="fixed")
    assert level_error(encoder.eval()) > 1e-2


def test_level_norm_ignores_silence_around_speech():
    """The speech level, not the amount of silence, sets the reference."""
    torch.manual_seed(0)
    frames = torch.randn(1, 50, 8) + 40.0  # speech frames at about 40 dB
    silence = torch.full((1, 30, 8), -20.0)
    padded = torch.cat([silence, frames, silence], dim=1)
    alone = level_norm(frames, torch.tensor([50]))
    inside = level_norm(padded, torch.tensor([110]))[:, 30:80]
    assert (alone - inside).abs().max().item() < 1.0


# ------------------------------------------------- pre-trained Conformer


def test_pretrained_conformer_round_trip(tmp_path):
    torch.manual_seed(0)
    encoder = ConformerSpeechEncoder(**TINY_CONFORMER, dropout=0.3)
    _, wavs, wav_lens = make_batch()
    with torch.no_grad():
        expected, expected_lens = encoder.eval()(wavs, wav_lens)
    folder = encoder.save_pretrained(str(tmp_path / "encoder"))
    assert sorted(os.listdir(folder)) == [
        "encoder.ckpt",
        "encoder_hyperparams.json",
    ]

    # Loaded to train: the very same network.
    trainable = ConformerSpeechEncoder(source=folder).eval()
    with torch.no_grad():
        hidden, lens = trainable(wavs, wav_lens)
    assert torch.equal(hidden, expected) and torch.equal(lens, expected_lens)
    assert all(p.requires_grad for p in trainable.parameters())
    assert trainable.hparams == encoder.hparams

    # Loaded frozen: no gradient, no dropout even in training mode (the
    # same outputs twice), the same outputs up to PyTorch's attention fast
    # path, and nothing of it in a checkpoint of a model that holds it.
    frozen = ConformerSpeechEncoder(source=folder, freeze=True).train()
    assert not frozen.training
    assert not any(p.requires_grad for p in frozen.parameters())
    first, _ = frozen(wavs.requires_grad_(True), wav_lens)
    second, _ = frozen(wavs, wav_lens)
    assert not first.requires_grad
    assert torch.equal(first, second)
    assert (first - expected).abs().max() < 1e-5
    state = trainable_state_dict(torch.nn.ModuleDict({"encoder": frozen}))
    assert not any(k.endswith("weight") for k in state), sorted(state)


def test_pretrained_conformer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a pre-trained encoder"):
        ConformerSpeechEncoder(source=str(tmp_path))
    folder = ConformerSpeechEncoder(**TINY_CONFORMER).save_pretrained(
        str(tmp_path / "encoder")
    )
    # An argument that contradicts the folder is named; dropout may differ.
    d_model = TINY_CONFORMER["d_model"] * 2
    with pytest.raises(ValueError, match=f"d_model={d_model}"):
        ConformerSpeechEncoder(source=folder, d_model=d_model)
    loaded = ConformerSpeechEncoder(source=folder, dropout=0.5)
    assert loaded.hparams["dropout"] == 0.5
    assert loaded.output_dim == TINY_CONFORMER["d_model"]
