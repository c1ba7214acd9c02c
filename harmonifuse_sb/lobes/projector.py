"""Speech projector: stacks k frames and maps them to the LLM's width.

Authors
 * HarmoniFuse-SB developers 2026
"""

import torch


class SpeechProjector(torch.nn.Module):
    """Downsamples speech features by stacking frames, then a 2-layer MLP.

    Frames past each utterance's length are zeroed before stacking, so the
    last stacked frame of an utterance is the same alone or in a padded batch.

    Arguments
    ---------
    input_dim : int
        Size D of the input features.
    output_dim : int
        Size E of the LLM's embeddings.
    stack : int
        Number k of consecutive frames stacked into one.
    hidden_dim : int
        Width of the MLP's hidden layer (default: ``output_dim``).
    dropout : float
        Dropout after the hidden layer.

    Example
    -------
    >>> proj = SpeechProjector(input_dim=8, output_dim=32, stack=2)
    >>> x = torch.randn(2, 7, 8)
    >>> lens = torch.tensor([1.0, 4 / 7])
    >>> out, out_lens = proj(x, lens)
    >>> out.shape, out_lens.tolist()
    (torch.Size([2, 4, 32]), [1.0, 0.5])
    """

    def __init__(
        self, input_dim, output_dim, stack=2, hidden_dim=None, dropout=0.0
    ):
        super().__init__()
        if stack < 1:
            raise ValueError(f"SpeechProjector: stack must be >= 1: {stack}")
        self.stack = stack
        hidden_dim = hidden_dim or output_dim
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(input_dim * stack, hidden_dim),
            torch.nn.GELU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden_dim, output_dim),
        )

    def forward(self, x, lengths):
        """Projects the features.

        Arguments
        ---------
        x : torch.Tensor
            Features (B, T, D).
        lengths : torch.Tensor
            Relative lengths (B,) in [0, 1].

        Returns
        -------
        out : torch.Tensor
            Projected features (B, ceil(T / k), E).
        out_lengths : torch.Tensor
            Relative lengths of the output (B,).
        """
        batch, time, dim = x.shape
        abs_lens = torch.round(lengths * time).long()  # (B,)
        valid = torch.arange(time, device=x.device)[None] < abs_lens[:, None]
        x = x * valid.unsqueeze(-1).to(x.dtype)
        pad = (-time) % self.stack
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        out_time = (time + pad) // self.stack
        x = x.reshape(batch, out_time, self.stack * dim)  # (B, T/k, k*D)
        out_lens = torch.div(
            abs_lens + self.stack - 1, self.stack, rounding_mode="floor"
        )
        return self.mlp(x), out_lens.to(lengths.dtype) / out_time
