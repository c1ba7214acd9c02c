"""The memory options of the YAML, at toy size.

* ``HFSpeechEncoder(output_dtype="bfloat16")`` returns the float32 hidden
  states rounded to bfloat16, padding still zero.
* ``SpeechLM(gradient_checkpointing=True)`` recomputes each decoder layer in
  the backward pass and gives the same loss and gradients.
* ``hparams/harmonifuse.yaml``'s keys ``encoder_output_dtype`` and
  ``llm_gradient_checkpointing`` reach the lobes.
"""

import os
import tempfile

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

from harmonifuse_sb.lobes import HFSpeechEncoder, SpeechLM
from harmonifuse_sb.lobes.speech_lm import make_tiny_causal_lm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_WAVLM = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(32, 32, 32),
    conv_stride=(5, 8, 8),
    conv_kernel=(10, 8, 8),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    feat_extract_norm="layer",
    do_stable_layer_norm=True,
)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    wavlm = str(root / "wavlm")
    torch.manual_seed(0)
    WavLMModel(WavLMConfig(**TINY_WAVLM)).save_pretrained(wavlm)
    Wav2Vec2FeatureExtractor(
        return_attention_mask=True, do_normalize=True
    ).save_pretrained(wavlm)
    llm = make_tiny_causal_lm(str(root / "llm"), hidden_size=32, num_layers=2)
    return {"wavlm": wavlm, "llm": llm}


def test_encoder_outputs_in_bf16(sources):
    generator = torch.Generator().manual_seed(0)
    wavs = torch.randn(2, 8000, generator=generator)
    lens = torch.tensor([1.0, 0.6])
    full, full_lens = HFSpeechEncoder(sources["wavlm"])(wavs, lens)
    half, half_lens = HFSpeechEncoder(
        sources["wavlm"], output_dtype="bfloat16"
    )(wavs, lens)
    assert full.dtype == torch.float32 and half.dtype == torch.bfloat16
    assert half.shape == full.shape
    assert torch.equal(half_lens, full_lens)
    assert torch.equal(half, full.to(torch.bfloat16))
    n_valid = int(round(float(half_lens[1]) * half.shape[2]))
    assert n_valid < half.shape[2]
    assert not half[:, 1, n_valid:].any()  # padding stays zero


def test_encoder_rejects_unknown_output_dtype(sources):
    with pytest.raises(ValueError, match="output_dtype='bf16'"):
        HFSpeechEncoder(sources["wavlm"], output_dtype="bf16")


def counted(forward, calls):
    """``forward``, appending to ``calls`` at each run."""

    def wrapper(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    return wrapper


def llm_loss_and_grads(source, checkpointing):
    """Loss and gradients of a LoRA SpeechLM step; calls per layer."""
    torch.manual_seed(0)
    slm = SpeechLM(
        source,
        lora_config={"r": 4, "target_modules": ["q_proj", "v_proj"]},
        num_classes=2,
        gradient_checkpointing=checkpointing,
    )
    slm.train()
    calls = []
    layers = slm.causal_lm.get_decoder().layers
    for layer in layers:
        # Counts the MLP's runs (module hooks do not fire in the recompute).
        layer.mlp.forward = counted(layer.mlp.forward, calls)
    speech = torch.randn(2, 5, slm.hidden_size, requires_grad=True)
    prompts = slm.tokenize(["transcribe"] * 2)
    out = slm(
        prompts,
        speech,
        torch.tensor([5, 3]),
        slm.tokenize(["a b", "c"], add_eos=True),
    )
    out["loss"].backward()
    grads = {
        name: p.grad.clone()
        for name, p in slm.named_parameters()
        if p.requires_grad and p.grad is not None
    }
    grads["speech"] = speech.grad.clone()
    return out["loss"].detach(), grads, len(calls) / len(layers)


def test_llm_gradient_checkpointing_recomputes_with_the_same_gradients(
    sources,
):
    loss, grads, calls = llm_loss_and_grads(sources["llm"], False)
    loss_ckpt, grads_ckpt, calls_ckpt = llm_loss_and_grads(sources["llm"], True)
    assert calls == 1  # each layer's MLP once per step
    assert calls_ckpt == 2  # and once more in the backward pass
    torch.testing.assert_close(loss_ckpt, loss)
    assert sorted(grads_ckpt) == sorted(grads)
    assert any("lora_B" in name for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, msg=name)


def checkpointing(llm):
    """Whether activation checkpointing is on (transformers 5 or 4)."""
    if hasattr(llm, "is_activation_checkpointing"):
        return llm.is_activation_checkpointing
    return llm.is_gradient_checkpointing


def test_paper_yaml_memory_options_reach_the_lobes(sources):
    from train import build_model

    overrides = {
        "data_folder": "unused",
        "iemocap_folder": "unused",
        "output_folder": tempfile.mkdtemp(),
        "wavlm_source": sources["wavlm"],
        "llm_source": sources["llm"],
        "num_layers": 2,
        "enc_dim": 32,
        "llm_dim": 32,
        "llm_layers": 2,
        "llm_gradient_checkpointing": True,
        "encoder_output_dtype": "bfloat16",
    }
    with open(os.path.join(REPO, "hparams", "harmonifuse.yaml")) as f:
        hparams = load_hyperpyyaml(f, overrides)
    model = build_model(hparams)
    assert model.encoder.output_dtype == torch.bfloat16
    assert checkpointing(model.speech_lm.causal_lm)
    # and the defaults leave both off
    overrides.pop("llm_gradient_checkpointing")
    overrides.pop("encoder_output_dtype")
    with open(os.path.join(REPO, "hparams", "harmonifuse.yaml")) as f:
        hparams = load_hyperpyyaml(f, overrides)
    model = build_model(hparams)
    assert model.encoder.output_dtype is None
    assert not checkpointing(model.speech_lm.causal_lm)
