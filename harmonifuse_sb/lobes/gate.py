"""Task gate: component selection of the speech features by task.

The gate decides, frame by frame and channel by channel, which components of
the speech features pass to the LLM for the task at hand. Two placements:

``fused`` (after the layer fusion)::

    G = sigmoid(W_f F_t + W_p p + b)            (B, T, D)
    X = G * F

``layers`` (before the fusion: a "gated speech encoder", each layer's
normalised hidden state gated by task before the weighted sum)::

    G_l = sigmoid(W_f H_l,t + U_l V p + b_l)    (L+1, B, T, D)
    H'_l = G_l * H_l

``W_f`` is shared by the layers; the task term of layer ``l`` goes through
a rank-``cond_rank`` bottleneck ``U_l V`` (so a 25-layer, 1024-wide
encoder with a 1536-wide prompt adds 0.9 M parameters, not 39 M).

The concatenation ``W_g [F_t ; p]`` of docs/design.md is computed as two linear
maps, the same function, with ``W_p p`` computed once per utterance. ``p``
is layer-normalised (no parameters) first, since the scale of token
embeddings differs between LLMs. The weights start at zero and ``b`` at
``init_bias``: at the default 4 the gate starts open (G = 0.98) and a
model starts as an ungated SLM; at 0 it starts neutral (G = 0.5).

Selection needs pressure: a cross-entropy loss alone keeps every useful
component open (measured: a gate started at 0.5 opened to a mean of 0.95
for ASR). :meth:`TaskGate.penalty` is a budget term on the mean gate value
of a task, ``w * relu(mean(G) - k_task)``: with ``k = 0`` it is an L1
penalty on G (G >= 0), with ``k > 0`` it only acts while more than a share
``k`` of the components is open (a keep-ratio budget per task, the
continuous counterpart of the hard-concrete L0 gates of Louizos et al.,
"Learning Sparse Neural Networks through L0 Regularization", ICLR 2018).

Authors
 * HarmoniFuse-SB developers 2026
"""

import torch
import torch.nn.functional as F

GATE_PLACEMENTS = ("fused", "layers")


class TaskGate(torch.nn.Module):
    """Prompt-conditioned sigmoid gate over feature channels.

    Arguments
    ---------
    feat_dim : int
        Size D of the features to gate.
    cond_dim : int
        Size P of the conditioning vector (the prompt embedding).
    init_bias : float
        Initial value of ``b``; the gate starts at ``sigmoid(init_bias)``.
    enabled : bool
        If False (ablation "gate off"), the input passes unchanged, the gate
        returned is all ones and the penalty is zero.
    placement : str
        ``"fused"`` (gate the fused features, (B, T, D)) or ``"layers"``
        (gate every hidden state before the fusion, (L+1, B, T, D); needs
        ``num_layers``).
    num_layers : int, optional
        Number of transformer layers L of the encoder (``layers``
        placement: the gate has one bias and task term per hidden state).
    cond_rank : int
        Rank of the per-layer task term (``layers`` placement).
    sparsity_weight : float
        Weight ``w`` of the budget term :meth:`penalty` (0: none).
    keep_target : float or dict
        Keep ratio ``k`` in [0, 1] of the budget term: one for every task,
        or task name -> ratio (a task not named gets 1: no pressure).

    Example
    -------
    >>> gate = TaskGate(feat_dim=8, cond_dim=16)
    >>> x, p = torch.randn(2, 30, 8), torch.randn(2, 16)
    >>> gated, g = gate(x, p)
    >>> gated.shape, g.shape
    (torch.Size([2, 30, 8]), torch.Size([2, 30, 8]))
    >>> round(g.min().item(), 3)
    0.982
    >>> layer_gate = TaskGate(8, 16, placement="layers", num_layers=3,
    ...                       init_bias=0.0)
    >>> gated, g = layer_gate(torch.randn(4, 2, 30, 8), p)  # (L+1, B, T, D)
    >>> g.shape, round(g.mean().item(), 2)
    (torch.Size([4, 2, 30, 8]), 0.5)
    """

    def __init__(
        self,
        feat_dim,
        cond_dim,
        init_bias=4.0,
        enabled=True,
        placement="fused",
        num_layers=None,
        cond_rank=32,
        sparsity_weight=0.0,
        keep_target=0.0,
    ):
        super().__init__()
        if placement not in GATE_PLACEMENTS:
            raise ValueError(
                f"TaskGate: placement '{placement}' is not one of "
                f"{GATE_PLACEMENTS}."
            )
        if placement == "layers" and not num_layers:
            raise ValueError(
                "TaskGate: placement 'layers' needs num_layers (the "
                "encoder's number of transformer layers)."
            )
        if sparsity_weight < 0:
            raise ValueError(
                f"TaskGate: sparsity_weight must be >= 0: {sparsity_weight}"
            )
        targets = (
            keep_target.values()
            if isinstance(keep_target, dict)
            else [keep_target]
        )
        for value in targets:
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(
                    f"TaskGate: keep_target {keep_target!r} must be a "
                    "ratio in [0, 1] (or task -> ratio)."
                )
        self.enabled = enabled
        self.placement = placement
        self.sparsity_weight = float(sparsity_weight)
        self.keep_target = keep_target
        self.num_states = (num_layers + 1) if placement == "layers" else None
        if not enabled:
            return
        if placement == "fused":
            # b is the bias of W_f (the layout of earlier checkpoints)
            self.feat_proj = torch.nn.Linear(feat_dim, feat_dim)
            self.cond_proj = torch.nn.Linear(cond_dim, feat_dim, bias=False)
            torch.nn.init.zeros_(self.feat_proj.weight)
            torch.nn.init.zeros_(self.cond_proj.weight)
            torch.nn.init.constant_(self.feat_proj.bias, init_bias)
            return
        self.feat_proj = torch.nn.Linear(feat_dim, feat_dim, bias=False)
        torch.nn.init.zeros_(self.feat_proj.weight)
        # V: P -> r (random, so U_l gets gradients), U: r -> (L+1) D (zero,
        # so the gate starts at sigmoid(init_bias) everywhere)
        self.cond_down = torch.nn.Linear(cond_dim, cond_rank, bias=False)
        self.cond_proj = torch.nn.Linear(
            cond_rank, self.num_states * feat_dim, bias=False
        )
        torch.nn.init.zeros_(self.cond_proj.weight)
        self.bias = torch.nn.Parameter(
            torch.full((self.num_states, feat_dim), float(init_bias))
        )

    def forward(self, x, cond):
        """Gates the features.

        Arguments
        ---------
        x : torch.Tensor
            Features (B, T, D) (``fused``) or hidden states (L+1, B, T, D)
            (``layers``).
        cond : torch.Tensor
            Conditioning vectors (B, P).

        Returns
        -------
        gated : torch.Tensor
            ``G * x``, the shape of ``x``.
        gate : torch.Tensor
            The gate values G, the shape of ``x``.

        Raises
        ------
        ValueError
            If ``x`` has not the shape of the placement.
        """
        if not self.enabled:
            return x, torch.ones_like(x)
        expected = 3 if self.placement == "fused" else 4
        if x.dim() != expected or (
            self.num_states is not None and x.shape[0] != self.num_states
        ):
            shape = "(B, T, D)" if expected == 3 else "(L+1, B, T, D)"
            raise ValueError(
                f"TaskGate(placement='{self.placement}') expects features "
                f"{shape}"
                + (f" with L+1 = {self.num_states}" if self.num_states else "")
                + f", got {tuple(x.shape)}."
            )
        cond = F.layer_norm(cond, cond.shape[-1:]).to(x.dtype)
        if self.placement == "fused":
            task = self.cond_proj(cond).unsqueeze(1)  # (B, 1, D)
        else:
            task = self.cond_proj(self.cond_down(cond))  # (B, (L+1) D)
            task = task.view(cond.shape[0], self.num_states, -1)
            task = task.transpose(0, 1).unsqueeze(2)  # (L+1, B, 1, D)
            task = task + self.bias[:, None, None, :]
        gate = torch.sigmoid(self.feat_proj(x) + task)
        return gate * x, gate

    def target_for(self, task):
        """The keep ratio ``k`` of a task's budget term.

        Arguments
        ---------
        task : str
            The task name.

        Returns
        -------
        float
        """
        if isinstance(self.keep_target, dict):
            return float(self.keep_target.get(task, 1.0))
        return float(self.keep_target)

    def penalty(self, gate, frame_mask, task):
        """Budget term ``w * relu(mean(G) - k_task)`` over the valid frames.

        Arguments
        ---------
        gate : torch.Tensor
            Gate values (B, T, D) or (L+1, B, T, D), as ``forward`` returns.
        frame_mask : torch.Tensor
            (B, T) booleans: the valid frames.
        task : str
            The task of the batch (for its keep ratio).

        Returns
        -------
        torch.Tensor
            A scalar (0 when disabled or ``sparsity_weight`` is 0).
        """
        if not self.enabled or self.sparsity_weight == 0:
            return gate.new_zeros(())
        mean = masked_gate_mean(gate, frame_mask)
        return self.sparsity_weight * F.relu(mean - self.target_for(task))


def masked_gate_mean(gate, frame_mask):
    """Mean of gate values over the valid frames (and every layer, channel).

    Arguments
    ---------
    gate : torch.Tensor
        (B, T, D) or (L+1, B, T, D).
    frame_mask : torch.Tensor
        (B, T) booleans.

    Returns
    -------
    torch.Tensor
        A scalar.

    Example
    -------
    >>> g = torch.tensor([[[1.0], [0.0]]])  # (B=1, T=2, D=1)
    >>> masked_gate_mean(g, torch.tensor([[True, False]])).item()
    1.0
    """
    mask = frame_mask.to(gate.dtype).unsqueeze(-1)  # (B, T, 1)
    if gate.dim() == 4:
        mask = mask.unsqueeze(0)  # (1, B, T, 1)
    layers = gate.shape[0] if gate.dim() == 4 else 1
    count = mask.sum() * gate.shape[-1] * layers
    return (gate * mask).sum() / count.clamp(min=1)
