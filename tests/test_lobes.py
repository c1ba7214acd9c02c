"""Tests of the small lobes: prompt-adaptive fusion, task gate, projector.

Each test asserts a number or a behaviour of docs/design.md: the fusion weights
start uniform and become prompt-dependent when trained, the gate starts open,
the projector is padding invariant.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from harmonifuse_sb.lobes import PromptAdaptiveFusion, SpeechProjector, TaskGate

NUM_LAYERS, PROMPT_DIM, FEAT_DIM = 3, 16, 8


def two_prompts():
    """Two distinct prompt embeddings (2, P)."""
    torch.manual_seed(1)
    return torch.randn(2, PROMPT_DIM)


# --------------------------------------------------------------------------
# PromptAdaptiveFusion
# --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["prompt", "static"])
def test_fusion_starts_uniform_and_sums_to_one(mode):
    torch.manual_seed(0)
    fusion = PromptAdaptiveFusion(
        NUM_LAYERS, PROMPT_DIM, hidden_dim=32, mode=mode
    )
    hidden = torch.randn(NUM_LAYERS + 1, 3, 5, FEAT_DIM)
    prompts = torch.randn(3, PROMPT_DIM) * 10  # far apart: still uniform
    fused, weights = fusion(hidden, prompts)
    assert fused.shape == (3, 5, FEAT_DIM)
    assert weights.shape == (3, NUM_LAYERS + 1)
    # exactly 1 / (L + 1) at init, whatever the prompt
    assert torch.equal(
        weights, torch.full_like(weights, 1.0 / (NUM_LAYERS + 1))
    )
    assert torch.allclose(weights.sum(-1), torch.ones(3), atol=1e-6)
    # the fused output is the mean of the layer-normed hidden states
    expected = F.layer_norm(hidden, hidden.shape[-1:]).mean(0)
    assert torch.allclose(fused, expected, atol=1e-6)


def train_fusion(fusion, prompts, hidden, steps=20, lr=0.05):
    """Prompt 0 must reproduce layer 0, prompt 1 the last layer."""
    normed = F.layer_norm(hidden, hidden.shape[-1:])
    target = torch.stack([normed[0, 0], normed[-1, 1]])  # (2, T, D)
    optimizer = torch.optim.Adam(fusion.parameters(), lr=lr)
    for _ in range(steps):
        fused, _ = fusion(hidden, prompts)
        loss = F.mse_loss(fused, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return fusion(hidden, prompts)[1]


def fusion_toy_data():
    torch.manual_seed(0)
    hidden = torch.randn(NUM_LAYERS + 1, 2, 6, FEAT_DIM)
    return two_prompts(), hidden


def test_fusion_becomes_prompt_dependent():
    prompts, hidden = fusion_toy_data()
    torch.manual_seed(0)
    fusion = PromptAdaptiveFusion(NUM_LAYERS, PROMPT_DIM, hidden_dim=32)
    weights = train_fusion(fusion, prompts, hidden)
    assert torch.allclose(weights.sum(-1), torch.ones(2), atol=1e-6)
    # prompt A prefers layer 0, prompt B the top layer, by a clear margin
    assert weights[0].argmax() == 0
    assert weights[1].argmax() == NUM_LAYERS
    assert weights[0, 0] - weights[1, 0] > 0.3
    assert weights[1, -1] - weights[0, -1] > 0.3
    assert (weights[0] - weights[1]).abs().max() > 0.3


def test_fusion_static_is_prompt_independent():
    prompts, hidden = fusion_toy_data()
    fusion = PromptAdaptiveFusion(NUM_LAYERS, PROMPT_DIM, mode="static")
    weights = train_fusion(fusion, prompts, hidden)
    # trained away from uniform, but one vector for every prompt
    assert not torch.allclose(
        weights[0], torch.full_like(weights[0], 1 / (NUM_LAYERS + 1))
    )
    assert torch.equal(weights[0], weights[1])
    assert torch.allclose(weights.sum(-1), torch.ones(2), atol=1e-6)
    assert not hasattr(fusion, "mlp")


def test_fusion_last_returns_top_layer():
    torch.manual_seed(0)
    fusion = PromptAdaptiveFusion(
        NUM_LAYERS, PROMPT_DIM, mode="last", layer_norm=False
    )
    hidden = torch.randn(NUM_LAYERS + 1, 2, 5, FEAT_DIM)
    fused, weights = fusion(hidden, two_prompts())
    assert torch.equal(fused, hidden[-1])
    assert weights.tolist() == [[0.0] * NUM_LAYERS + [1.0]] * 2
    assert sum(p.numel() for p in fusion.parameters()) == 0
    # with layer norm: the normalised top layer
    normed = PromptAdaptiveFusion(NUM_LAYERS, PROMPT_DIM, mode="last")
    fused, _ = normed(hidden, two_prompts())
    assert torch.equal(fused, F.layer_norm(hidden[-1], (FEAT_DIM,)))


def test_fusion_wrong_number_of_states():
    fusion = PromptAdaptiveFusion(NUM_LAYERS, PROMPT_DIM)
    hidden = torch.randn(NUM_LAYERS, 2, 5, FEAT_DIM)  # one state short
    with pytest.raises(ValueError, match="num_layers"):
        fusion(hidden, two_prompts())


def test_fusion_tau_tempers_the_prompt_term_only():
    """tau divides MLP(p), not w0: the static weighting ignores it, the
    prompt-dependent part is flattened by it."""
    hidden = torch.randn(NUM_LAYERS + 1, 2, 5, FEAT_DIM)
    w0 = torch.linspace(-1.0, 1.0, NUM_LAYERS + 1)
    static = {}
    for tau in (1.0, 10.0):
        fusion = PromptAdaptiveFusion(
            NUM_LAYERS, PROMPT_DIM, mode="static", tau=tau
        )
        with torch.no_grad():
            fusion.w0.copy_(w0)
        static[tau] = fusion(hidden, two_prompts())[1]
    assert torch.allclose(static[1.0], static[10.0])
    assert torch.allclose(static[1.0][0], torch.softmax(w0, dim=0))

    spread = {}
    for tau in (1.0, 10.0):
        torch.manual_seed(0)
        fusion = PromptAdaptiveFusion(NUM_LAYERS, PROMPT_DIM, tau=tau)
        with torch.no_grad():
            fusion.w0.copy_(w0)
            fusion.mlp[-1].weight.normal_(0.0, 5.0)
        weights = fusion(hidden, two_prompts())[1]
        spread[tau] = (weights[0] - weights[1]).abs().sum()
        # a = softmax(w0 + MLP(p) / tau)
        logits = fusion.mlp(F.layer_norm(two_prompts(), (PROMPT_DIM,)))
        expected = torch.softmax(w0 + logits / tau, dim=-1)
        assert torch.allclose(weights, expected, atol=1e-6)
    assert spread[10.0] < spread[1.0]


def test_fusion_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        PromptAdaptiveFusion(NUM_LAYERS, PROMPT_DIM, mode="mean")
    with pytest.raises(ValueError, match="tau"):
        PromptAdaptiveFusion(NUM_LAYERS, PROMPT_DIM, tau=0.0)


# --------------------------------------------------------------------------
# TaskGate
# --------------------------------------------------------------------------


@pytest.mark.parametrize("init_bias", [4.0, 1.0])
def test_gate_starts_open(init_bias):
    torch.manual_seed(0)
    gate = TaskGate(FEAT_DIM, PROMPT_DIM, init_bias=init_bias)
    x = torch.randn(2, 7, FEAT_DIM) * 5
    gated, g = gate(x, two_prompts() * 10)
    opening = 1.0 / (1.0 + math.exp(-init_bias))
    assert g.shape == x.shape
    assert g.min().item() >= opening - 1e-6
    assert g.max().item() <= opening + 1e-6
    assert torch.allclose(gated, x * opening, atol=1e-5)


def test_gate_disabled_is_identity():
    gate = TaskGate(FEAT_DIM, PROMPT_DIM, enabled=False)
    x = torch.randn(2, 7, FEAT_DIM)
    gated, g = gate(x, two_prompts())
    assert gated is x or torch.equal(gated, x)
    assert torch.equal(g, torch.ones_like(x))
    assert sum(p.numel() for p in gate.parameters()) == 0


def train_gate_on_shared_features(gate, steps=20):
    """Both tasks see the same features; task 0 must keep them, task 1
    drop them: only the prompt term can tell the two rows apart."""
    torch.manual_seed(0)
    prompts = two_prompts()
    shape = (2, 10, FEAT_DIM)
    if gate.placement == "layers":
        shape = (NUM_LAYERS + 1, *shape)
    x = torch.randn(shape[:-3] + (1,) + shape[-2:]).expand(shape)
    keep = torch.tensor([1.0, 0.0]).view(2, 1, 1)  # (B, 1, 1)
    optimizer = torch.optim.Adam(
        [p for p in gate.parameters() if p.requires_grad], lr=0.1
    )
    for _ in range(steps):
        gated, _ = gate(x, prompts)
        loss = F.mse_loss(gated, x * keep)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        _, g = gate(x, prompts)
    b = g.dim() - 3  # the batch dimension (0, or 1 for "layers")
    return g.select(b, 0), g.select(b, 1)


@pytest.mark.parametrize("placement", ["fused", "layers"])
def test_gate_prompt_term_separates_the_tasks(placement):
    """On the same features, the two tasks' gates part by more than 0.5
    (task 0 opens, task 1 closes); with the prompt term frozen at its
    initial zero they cannot part at all."""
    kwargs = {"num_layers": NUM_LAYERS} if placement == "layers" else {}
    gate = TaskGate(FEAT_DIM, PROMPT_DIM, placement=placement, **kwargs)
    g0, g1 = train_gate_on_shared_features(gate)
    assert g0.mean() > 0.9 and g1.mean() < 0.4, (g0.mean(), g1.mean())
    assert (g0 - g1).min() > 0.5  # every channel of every frame
    frozen = TaskGate(FEAT_DIM, PROMPT_DIM, placement=placement, **kwargs)
    frozen.cond_proj.requires_grad_(False)
    g0, g1 = train_gate_on_shared_features(frozen)
    assert torch.equal(g0, g1)


# --------------------------------------------------------------------------
# SpeechProjector
# --------------------------------------------------------------------------


@pytest.mark.parametrize("stack", [1, 2, 3])
@pytest.mark.parametrize("time", [7, 9, 10])
def test_projector_lengths(stack, time):
    torch.manual_seed(0)
    proj = SpeechProjector(FEAT_DIM, 12, stack=stack)
    abs_lens = [time, time - 2, 1, (time + 1) // 2]
    x = torch.randn(len(abs_lens), time, FEAT_DIM)
    lens = torch.tensor(abs_lens, dtype=torch.float) / time
    out, out_lens = proj(x, lens)
    out_time = math.ceil(time / stack)
    assert out.shape == (len(abs_lens), out_time, 12)
    expected = [math.ceil(n / stack) for n in abs_lens]
    got = torch.round(out_lens * out_time).long().tolist()
    assert got == expected
    assert out_lens[0].item() == 1.0
    assert out_lens.dtype == lens.dtype


@pytest.mark.parametrize("stack", [1, 2, 3])
def test_projector_padding_invariance(stack):
    torch.manual_seed(0)
    proj = SpeechProjector(FEAT_DIM, 12, stack=stack, hidden_dim=20).eval()
    abs_lens = [11, 7, 5, 9]
    time = max(abs_lens)
    batch = torch.randn(len(abs_lens), time, FEAT_DIM)
    for i, n in enumerate(abs_lens):
        # padded frames hold garbage, not zeros
        batch[i, n:] = torch.randn(time - n, FEAT_DIM) * 1e3
    lens = torch.tensor(abs_lens, dtype=torch.float) / time
    out, out_lens = proj(batch, lens)
    for i, n in enumerate(abs_lens):
        alone, alone_lens = proj(batch[i : i + 1, :n], torch.ones(1))
        n_out = alone.shape[1]
        assert n_out == math.ceil(n / stack)
        assert round(out_lens[i].item() * out.shape[1]) == n_out
        assert alone_lens.item() == 1.0
        diff = (alone[0] - out[i, :n_out]).abs().max().item()
        assert diff < 1e-6, (i, diff)


def test_projector_bad_stack():
    with pytest.raises(ValueError, match="stack"):
        SpeechProjector(FEAT_DIM, 12, stack=0)
