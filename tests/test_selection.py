"""Tests of the readings of HarmoniFuse's selection and fusion (issue 17).

* The gate placed on the encoder layers gates each normalised hidden state
  before the weighted sum; the budget term is zero below the keep ratio
  and pushes the gate down to it when the loss does not need the
  components.
* The fusion of the LLM's layers changes what the SER classifier reads,
  and a wrong number of layers is refused by name.
* The nested, stratified training subsets of a data-size study.
* The brain's gate statistics over valid frames.
"""

import pytest
import torch
import torch.nn.functional as F

from harmonifuse_sb.brain import frame_mask, gate_counts
from harmonifuse_sb.lobes import PromptAdaptiveFusion, TaskGate
from harmonifuse_sb.lobes.gate import masked_gate_mean
from tests.test_speech_lm import EMOTIONS, audio, build_model, save_tiny_lm

NUM_LAYERS, PROMPT_DIM, FEAT_DIM = 3, 16, 8


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    """A tiny random Qwen2 and its word tokenizer, written once."""
    return save_tiny_lm(str(tmp_path_factory.mktemp("qwen2")), "qwen2")


def test_layer_gate_gates_each_state_before_the_sum():
    torch.manual_seed(0)
    gate = TaskGate(
        FEAT_DIM, PROMPT_DIM, placement="layers", num_layers=NUM_LAYERS
    )
    fusion = PromptAdaptiveFusion(NUM_LAYERS, PROMPT_DIM, mode="static")
    hidden = torch.randn(NUM_LAYERS + 1, 2, 5, FEAT_DIM)
    prompt = torch.randn(2, PROMPT_DIM)
    # Make layer 1 fully closed for every input: its bias very negative.
    with torch.no_grad():
        gate.bias[1] = -30.0
    normed = fusion.normalize(hidden)
    gated, g = gate(normed, prompt)
    assert g.shape == hidden.shape
    assert g[1].max() < 1e-12 and g[0].min() > 0.98
    fused, weights = fusion(gated, prompt, normalized=True)
    # uniform static weights: the mean of the three open states only
    expected = (normed[0] * g[0] + normed[2] * g[2] + normed[3] * g[3]) / 4
    assert torch.allclose(fused, expected, atol=1e-6)
    # normalized=True skips the layer norm: the states are not renormalised
    again, _ = fusion(normed, prompt, normalized=True)
    assert torch.allclose(again, fusion(hidden, prompt)[0], atol=1e-6)


def test_layer_gate_is_task_dependent_per_layer():
    torch.manual_seed(0)
    gate = TaskGate(
        FEAT_DIM,
        PROMPT_DIM,
        placement="layers",
        num_layers=NUM_LAYERS,
        init_bias=0.0,
    )
    with torch.no_grad():
        gate.cond_proj.weight.normal_()
    hidden = torch.randn(NUM_LAYERS + 1, 1, 5, FEAT_DIM).expand(-1, 2, -1, -1)
    _, g = gate(hidden, torch.randn(2, PROMPT_DIM))
    # two prompts, same audio: different gates, and different per layer
    assert (g[:, 0] - g[:, 1]).abs().max() > 0.1
    assert (g[0, 0] - g[1, 0]).abs().max() > 0.1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"placement": "layers"}, "needs num_layers"),
        ({"placement": "encoder"}, "placement 'encoder'"),
        ({"keep_target": {"ser": 1.5}}, "keep_target"),
        ({"sparsity_weight": -1.0}, "sparsity_weight"),
    ],
)
def test_gate_options_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TaskGate(FEAT_DIM, PROMPT_DIM, **kwargs)


def test_gate_refuses_features_of_the_wrong_shape():
    gate = TaskGate(FEAT_DIM, PROMPT_DIM, placement="layers", num_layers=2)
    with pytest.raises(ValueError, match=r"\(L\+1, B, T, D\) with L\+1 = 3"):
        gate(torch.randn(2, 5, FEAT_DIM), torch.randn(2, PROMPT_DIM))
    with pytest.raises(ValueError, match="got"):
        gate(torch.randn(4, 2, 5, FEAT_DIM), torch.randn(2, PROMPT_DIM))


def test_budget_term_is_a_hinge_on_the_mean_gate():
    gate = TaskGate(
        FEAT_DIM,
        PROMPT_DIM,
        sparsity_weight=2.0,
        keep_target={"asr": 0.25, "ser": 0.75},
    )
    g = torch.full((2, 4, FEAT_DIM), 0.5)
    g[1, 2:] = 1.0  # padding frames: not counted
    mask = frame_mask(torch.tensor([1.0, 0.5]), 4)
    assert masked_gate_mean(g, mask).item() == pytest.approx(0.5)
    assert gate.penalty(g, mask, "asr").item() == pytest.approx(2 * 0.25)
    assert gate.penalty(g, mask, "ser").item() == 0.0  # under budget
    assert gate.penalty(g, mask, "intent").item() == 0.0  # unnamed: k = 1
    off = TaskGate(FEAT_DIM, PROMPT_DIM)  # default: no budget
    assert off.penalty(g, mask, "asr").item() == 0.0


def test_budget_closes_the_components_the_task_does_not_need():
    """Only channel 0 carries the target: with the budget, the gate's mean
    is held near the keep ratio, by closing the other channels."""
    torch.manual_seed(0)
    x = torch.randn(8, 10, FEAT_DIM)
    target = x[..., :1] * 2.0  # needs channel 0 only
    prompt = torch.randn(8, PROMPT_DIM)
    mask = torch.ones(8, 10, dtype=torch.bool)
    means = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(1)
        gate = TaskGate(
            FEAT_DIM,
            PROMPT_DIM,
            init_bias=0.0,
            sparsity_weight=weight,
            keep_target=0.2,
        )
        readout = torch.nn.Linear(FEAT_DIM, 1)
        params = list(gate.parameters()) + list(readout.parameters())
        optimizer = torch.optim.Adam(params, lr=0.05)
        for _ in range(300):
            gated, g = gate(x, prompt)
            loss = F.mse_loss(readout(gated), target)
            loss = loss + gate.penalty(g, mask, "ser")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _, g = gate(x, prompt)
        means[weight] = g.mean(dim=(0, 1))  # per channel
    # Without pressure the gate stays more open (channel 0 too).
    assert means[0.0].mean() > means[1.0].mean() + 0.1
    assert means[0.0][0] > 0.5
    # With it, the mean is held near the budget, the useful channel stays
    # open and most of the others close.
    assert means[1.0].mean() < 0.3
    assert means[1.0][0] > 0.5
    assert (means[1.0][1:] < 0.5).float().mean() >= 0.8


def test_gate_counts_over_valid_frames():
    g = torch.tensor([[[0.2, 0.9], [0.4, 0.6], [0.0, 0.0]]])  # (1, 3, 2)
    mask = frame_mask(torch.tensor([2 / 3]), 3)
    total, closed, count = gate_counts(g, mask)
    assert count == 4.0
    assert total == pytest.approx(2.1)
    assert closed == 2.0  # 0.2 and 0.4; the padded frame is not counted
    layers = torch.stack([g, 1 - g])  # (L+1=2, B, T, D)
    total, closed, count = gate_counts(layers, mask)
    assert (count, closed) == (8.0, 4.0)
    assert total == pytest.approx(4.0)


# --------------------------------------------------------------------------
# Fusion of the LLM's layers for the SER classifier
# --------------------------------------------------------------------------


def with_llm_fusion(model, mode):
    layers = model.speech_lm.causal_lm.config.num_hidden_layers
    model.llm_fusion = PromptAdaptiveFusion(
        layers, model.speech_lm.hidden_size, hidden_dim=8, mode=mode
    )
    return model


def test_llm_fusion_reads_every_llm_layer(qwen_dir):
    torch.manual_seed(0)
    model = build_model(qwen_dir).eval()
    wavs, lens = audio()
    feats = model.task_features(*model.encode_speech(wavs, lens), "ser")
    last = model.ser_logits(feats)
    # mode last is the plain speech LM's classifier input, exactly
    with_llm_fusion(model, "last")
    assert torch.equal(model.ser_logits(feats), last)
    with_llm_fusion(model, "prompt")
    logits = model.ser_logits(feats)
    assert logits.shape == (2, len(EMOTIONS))
    assert not torch.allclose(logits, last)
    weights = feats["llm_fusion_weights"]
    layers = model.speech_lm.causal_lm.config.num_hidden_layers
    assert weights.shape == (2, layers + 1)
    # by hand: the uniform mean of the layer-normed pooled states
    out = model.speech_lm(
        feats["prompt_ids"], feats["speech"], feats["speech_lens"], layers=True
    )
    pooled = out["prefix_hidden_layers"]  # (N+1, B, H)
    assert torch.equal(pooled[-1], out["prefix_hidden"])
    expected = F.layer_norm(pooled, pooled.shape[-1:]).mean(0)
    assert torch.allclose(logits, model.heads["ser"](expected), atol=1e-5)
    # and the classifier's loss reaches the fusion's weights
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert model.llm_fusion.w0.grad.abs().sum() > 0


def test_llm_fusion_of_the_wrong_depth_is_refused(qwen_dir):
    from harmonifuse_sb.model import HarmoniFuse

    model = build_model(qwen_dir)
    layers = model.speech_lm.causal_lm.config.num_hidden_layers
    wrong = PromptAdaptiveFusion(layers + 2, model.speech_lm.hidden_size)
    with pytest.raises(ValueError, match=f"set its num_layers to {layers}"):
        HarmoniFuse(
            model.encoder,
            model.fusion,
            model.gate,
            model.projector,
            model.speech_lm,
            prompts=model.prompts,
            emotions=EMOTIONS,
            llm_fusion=wrong,
        )


def test_model_with_layer_gate_trains(qwen_dir):
    model = build_model(qwen_dir)
    model.gate = TaskGate(
        model.encoder.output_dim,
        model.speech_lm.hidden_size,
        placement="layers",
        num_layers=model.encoder.num_layers,
        init_bias=0.0,
        sparsity_weight=1.0,
        keep_target=0.3,
    )
    wavs, lens = audio()
    out = model(asr=(wavs, lens, ["a b", "c"]), ser=(wavs, lens))
    gate = out["ser"]["feats"]["gate"]
    assert gate.shape[0] == model.encoder.num_layers + 1
    mask = frame_mask(out["ser"]["feats"]["lens"], gate.shape[-2])
    penalty = model.gate.penalty(gate, mask, "ser")
    assert penalty.item() == pytest.approx(0.2, abs=1e-4)  # 0.5 - 0.3
    (out["asr"]["loss"] + penalty).backward()
    assert model.gate.cond_proj.weight.grad.abs().sum() > 0
    assert model.gate.bias.grad.abs().sum() > 0


# --------------------------------------------------------------------------
# Training subsets of a data-size study
# --------------------------------------------------------------------------


class FakeDataset:
    """What ``train_subset_ids`` reads of a DynamicItemDataset."""

    def __init__(self, data):
        self.data = data
        self.data_ids = list(data)


def fake_ser_set(voices=6, per_class=5, labels=("a", "b", "c", "d")):
    data = {}
    for v in range(voices):
        for label in labels:
            for i in range(per_class):
                data[f"{v}_{label}_{i}"] = {"emo": label, "spk_id": f"v{v}"}
    return FakeDataset(data)


def test_train_subsets_are_nested_and_balanced():
    from train import train_subset_ids

    data = fake_ser_set()
    small = train_subset_ids(data, 24, 7, "emo")
    big = train_subset_ids(data, 48, 7, "emo")
    assert len(small) == 24 and len(big) == 48
    assert small < big  # nested
    for subset, n in ((small, 24), (big, 48)):
        labels = [data.data[i]["emo"] for i in subset]
        assert {labels.count(x) for x in "abcd"} == {n // 4}
        voices = [data.data[i]["spk_id"] for i in subset]
        counts = [voices.count(f"v{v}") for v in range(6)]
        assert max(counts) - min(counts) <= 4  # spread over the voices
    # seeded: the same seed gives the same subset, another seed another
    assert train_subset_ids(data, 24, 7, "emo") == small
    assert train_subset_ids(data, 24, 8, "emo") != small
    assert train_subset_ids(data, 120, 7, "emo") == set(data.data_ids)


@pytest.mark.parametrize("size", [0, 121, 2.5])
def test_train_subset_of_a_wrong_size_is_named(size):
    from train import train_subset_ids

    with pytest.raises(ValueError, match="between 1 and 120, the size of "):
        train_subset_ids(fake_ser_set(), size, 1, "emo", "ser_train.json")


def test_train_subset_needs_its_seed():
    from train import train_subset_ids

    with pytest.raises(KeyError, match="train_subset_seed"):
        train_subset_ids(fake_ser_set(), 10, None, "emo")


def test_paper_param_groups_cover_every_option(qwen_dir):
    """The paper YAML's parameter groups hold every trainable parameter of a
    model with every lobe option on: the LLM-layer fusion, the gate on the
    layers, the CTC head (a parameter no group matches is an error)."""
    from harmonifuse_sb.lobes import SpeechLM
    from tests.test_paper_recipe import group_brain

    model = build_model(qwen_dir, lora=True)
    model.gate = TaskGate(
        model.encoder.output_dim,
        model.speech_lm.hidden_size,
        placement="layers",
        num_layers=model.encoder.num_layers,
    )
    with_llm_fusion(model, "prompt")
    model.ctc_head = torch.nn.Linear(model.encoder.output_dim, 5)
    model.encoder.requires_grad_(False)  # frozen, as the paper YAML has it
    assert isinstance(model.speech_lm, SpeechLM)
    brain = group_brain(model)
    groups = {g["name"]: g for g in brain.optimizer.param_groups}
    grouped = {id(p) for g in groups.values() for p in g["params"]}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(trainable)
    names = {id(p): n for n, p in model.named_parameters()}
    adapter = {names[id(p)].split(".")[0] for p in groups["adapter"]["params"]}
    assert adapter == {"projector", "fusion", "llm_fusion", "gate"}
    heads = {names[id(p)] for p in groups["heads"]["params"]}
    assert "ctc_head.weight" in heads
