"""Prompt-adaptive dynamic fusion of the encoder's transformer layers.

HarmoniFuse aggregates all hidden states of the speech encoder with layer
weights that depend on the task prompt, so that ASR can lean on the upper,
linguistic layers while SER also draws on the lower, paralinguistic ones:

    a = softmax(w0 + MLP(p) / tau)            (B, L+1)
    F = sum_l a_l * LN(H_l)                   (B, T, D)

``LN`` is a parameter-free layer norm per layer (as in SUPERB's weighted sum),
``p`` the prompt embedding, itself layer-normalised (no parameters) before
the MLP, since the scale of token embeddings differs between LLMs. The last layer of the MLP and ``w0`` start at zero,
so the weights start uniform and the module starts as a plain weighted-sum
SLM. Ablation modes: ``static`` (one learned vector ``w0`` shared by all
prompts, SUPERB style) and ``last`` (the top layer only).

``tau`` tempers the prompt-dependent term only. Under Adam each of the
MLP's hidden-to-logit weights moves by about the learning rate per step,
so MLP(p) can outgrow what the tasks tell apart and saturate both prompts'
weights on one layer (measured in hparams/ablation_synthetic.yaml: L1
distance 0.008 at tau 1); a larger tau slows it down without slowing the
static part ``w0``, so the ``static`` ablation does not depend on tau.

Authors
 * HarmoniFuse-SB developers 2026
"""

import torch
import torch.nn.functional as F

FUSION_MODES = ("prompt", "static", "last")


class PromptAdaptiveFusion(torch.nn.Module):
    """Fuses the L+1 hidden states of an encoder with prompt-dependent weights.

    Arguments
    ---------
    num_layers : int
        Number of transformer layers L of the encoder; the module fuses L+1
        hidden states (the input of the first layer and every layer's output).
    prompt_dim : int
        Size P of the prompt embedding.
    hidden_dim : int
        Width of the MLP that maps the prompt to layer logits.
    mode : str
        ``"prompt"`` (prompt-adaptive, the default), ``"static"`` (one learned
        weight vector for every prompt) or ``"last"`` (top layer only).
    tau : float
        Temperature of the prompt-dependent logits MLP(p) (> 0); ``w0`` is
        not divided by it.
    layer_norm : bool
        Whether to normalise each hidden state (no affine parameters) before
        the weighted sum.

    Example
    -------
    >>> fusion = PromptAdaptiveFusion(num_layers=4, prompt_dim=16)
    >>> hidden = torch.randn(5, 2, 30, 8)  # (L+1, B, T, D)
    >>> prompt = torch.randn(2, 16)  # (B, P)
    >>> fused, weights = fusion(hidden, prompt)
    >>> fused.shape, weights.shape
    (torch.Size([2, 30, 8]), torch.Size([2, 5]))
    >>> weights[0]
    tensor([0.2000, 0.2000, 0.2000, 0.2000, 0.2000], grad_fn=<SelectBackward0>)
    """

    def __init__(
        self,
        num_layers,
        prompt_dim,
        hidden_dim=256,
        mode="prompt",
        tau=1.0,
        layer_norm=True,
    ):
        super().__init__()
        if mode not in FUSION_MODES:
            raise ValueError(
                f"PromptAdaptiveFusion: mode '{mode}' is not one of "
                f"{FUSION_MODES}."
            )
        if tau <= 0:
            raise ValueError(f"PromptAdaptiveFusion: tau must be > 0: {tau}")
        self.num_states = num_layers + 1
        self.mode = mode
        self.tau = tau
        self.layer_norm = layer_norm
        if mode != "last":
            # w0: the prompt-independent part, zero so weights start uniform
            self.w0 = torch.nn.Parameter(torch.zeros(self.num_states))
        if mode == "prompt":
            self.mlp = torch.nn.Sequential(
                torch.nn.Linear(prompt_dim, hidden_dim),
                torch.nn.GELU(),
                torch.nn.Linear(hidden_dim, self.num_states),
            )
            # Neutral start: zero output layer, so MLP(p) = 0 for every p
            torch.nn.init.zeros_(self.mlp[-1].weight)
            torch.nn.init.zeros_(self.mlp[-1].bias)

    def layer_weights(self, prompt_emb):
        """Returns the fusion weights for each prompt.

        Arguments
        ---------
        prompt_emb : torch.Tensor
            Prompt embeddings (B, P).

        Returns
        -------
        torch.Tensor
            Weights (B, L+1) that sum to one over the layers.
        """
        batch = prompt_emb.shape[0]
        if self.mode == "last":
            weights = torch.zeros(
                batch, self.num_states, device=prompt_emb.device
            )
            weights[:, -1] = 1.0
            return weights
        logits = self.w0.expand(batch, -1)  # (B, L+1)
        if self.mode == "prompt":
            prompt_emb = F.layer_norm(prompt_emb, prompt_emb.shape[-1:])
            prompt_logits = self.mlp(prompt_emb.to(self.w0.dtype))
            logits = logits + prompt_logits / self.tau
        return torch.softmax(logits, dim=-1)

    def normalize(self, hidden_states):
        """The per-layer normalisation that precedes the weighted sum.

        For a gate placed on the layers (``TaskGate(placement="layers")``):
        a gate applied before this normalisation would see a uniform
        scaling of a layer undone by it.

        Arguments
        ---------
        hidden_states : torch.Tensor
            (L+1, B, T, D).

        Returns
        -------
        torch.Tensor
            (L+1, B, T, D), each state layer-normalised if ``layer_norm``.
        """
        if not self.layer_norm:
            return hidden_states
        return F.layer_norm(hidden_states, hidden_states.shape[-1:])

    def forward(self, hidden_states, prompt_emb, normalized=False):
        """Fuses the hidden states.

        Arguments
        ---------
        hidden_states : torch.Tensor
            All hidden states of the encoder (L+1, B, T, D).
        prompt_emb : torch.Tensor
            Prompt embeddings (B, P).
        normalized : bool
            True if ``hidden_states`` already went through
            :meth:`normalize`.

        Returns
        -------
        fused : torch.Tensor
            The weighted sum (B, T, D).
        weights : torch.Tensor
            The layer weights (B, L+1).
        """
        if hidden_states.shape[0] != self.num_states:
            raise ValueError(
                f"PromptAdaptiveFusion was built for {self.num_states} hidden "
                f"states (num_layers={self.num_states - 1}) but got "
                f"{hidden_states.shape[0]}: set num_layers to the encoder's "
                "number of transformer layers."
            )
        weights = self.layer_weights(prompt_emb)
        if not normalized:
            hidden_states = self.normalize(hidden_states)
        fused = torch.einsum(
            "lbtd,bl->btd", hidden_states, weights.to(hidden_states.dtype)
        )  # (B, T, D)
        return fused, weights
