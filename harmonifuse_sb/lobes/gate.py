"""Task gate: component selection of the fused acoustic features.

The gate decides, frame by frame and channel by channel, which components of
the fused speech features pass to the LLM for the task at hand:

    G = sigmoid(W_g [F_t ; p] + b_g)          (B, T, D)
    X = G * F

The concatenation is computed as two linear maps (``W_f F_t + W_p p``), which
is the same function and lets ``W_p p`` be computed once per utterance.
``p`` is layer-normalised (no parameters) first, since the scale of token
embeddings differs between LLMs. The
weights start at zero and ``b_g`` positive, so the gate starts open (G close to
1) and a model starts as an ungated SLM.

Authors
 * HarmoniFuse-SB developers 2026
"""

import torch
import torch.nn.functional as F


class TaskGate(torch.nn.Module):
    """Prompt-conditioned sigmoid gate over feature channels.

    Arguments
    ---------
    feat_dim : int
        Size D of the features to gate.
    cond_dim : int
        Size P of the conditioning vector (the prompt embedding).
    init_bias : float
        Initial value of ``b_g``; the gate starts at ``sigmoid(init_bias)``.
    enabled : bool
        If False (ablation "gate off"), the input passes unchanged and the
        gate returned is all ones.

    Example
    -------
    >>> gate = TaskGate(feat_dim=8, cond_dim=16)
    >>> x, p = torch.randn(2, 30, 8), torch.randn(2, 16)
    >>> gated, g = gate(x, p)
    >>> gated.shape, g.shape
    (torch.Size([2, 30, 8]), torch.Size([2, 30, 8]))
    >>> round(g.min().item(), 3)
    0.982
    """

    def __init__(self, feat_dim, cond_dim, init_bias=4.0, enabled=True):
        super().__init__()
        self.enabled = enabled
        if enabled:
            self.feat_proj = torch.nn.Linear(feat_dim, feat_dim)
            self.cond_proj = torch.nn.Linear(cond_dim, feat_dim, bias=False)
            torch.nn.init.zeros_(self.feat_proj.weight)
            torch.nn.init.zeros_(self.cond_proj.weight)
            torch.nn.init.constant_(self.feat_proj.bias, init_bias)

    def forward(self, x, cond):
        """Gates the features.

        Arguments
        ---------
        x : torch.Tensor
            Features (B, T, D).
        cond : torch.Tensor
            Conditioning vectors (B, P).

        Returns
        -------
        gated : torch.Tensor
            ``G * x`` (B, T, D).
        gate : torch.Tensor
            The gate values G (B, T, D).
        """
        if not self.enabled:
            return x, torch.ones_like(x)
        cond = F.layer_norm(cond, cond.shape[-1:]).to(x.dtype)
        cond = self.cond_proj(cond).unsqueeze(1)  # (B, 1, D)
        gate = torch.sigmoid(self.feat_proj(x) + cond)  # (B, T, D)
        return gate * x, gate
