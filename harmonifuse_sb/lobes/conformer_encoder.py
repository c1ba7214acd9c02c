"""A SpeechBrain Fbank + Conformer speech encoder for from-scratch runs.

``ConformerSpeechEncoder`` has the interface of ``HFSpeechEncoder``: waveforms
in, the hidden states of every layer out, ``(L+1, B, T, D)``, with the
relative lengths of the valid frames. It is small and fast enough to train
from scratch on a CPU (the tiny quick-start).

Pipeline: log-mel filterbanks (``speechbrain.lobes.features.Fbank``) ->
per-utterance mean/variance normalisation over the valid frames -> two
stride-2 ``Conv2d`` blocks (time subsampling by 4) and a linear projection to
``d_model`` (hidden state 0) -> ``num_layers`` SpeechBrain Conformer (or
Transformer) layers with relative positional encoding (``RelPosEncXL``) and
key padding masks (hidden states 1..L).

Padding invariance (an utterance gives the same features alone and inside a
zero-padded batch): every stage that looks at neighbouring frames sees zeros
beyond the end of an utterance in both cases. The STFT pads with zeros
(``pad_mode="constant"``) and the padded samples are zeroed; the
normalisation uses the exact number of valid frames (not a rounded relative
length); padded frames are zeroed before each subsampling convolution (whose
zero padding is what the alone case sees); and the Conformer convolution
module zeroes padded frames *before* its depthwise convolution (SpeechBrain's
masks only its output).

Pre-trained encoders: ``save_pretrained(folder)`` writes the weights
(``encoder.ckpt``) and the hyperparameters (``encoder_hyperparams.json``)
side by side; ``ConformerSpeechEncoder(source=folder, freeze=True)`` builds
the same encoder from them, frozen (eval mode, no gradients), as
``HFSpeechEncoder`` loads a hub model. The synthetic ablation setting
pre-trains one this way (``recipes/Synthetic/pretrain_encoder.py``).

Authors
-------
HarmoniFuse contributors
"""

import json
import os
import pydoc

import torch
from speechbrain.dataio.dataio import length_to_mask
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.transformer.Conformer import (
    ConformerEncoderLayer,
    ConvolutionModule,
)
from speechbrain.lobes.models.transformer.Transformer import (
    TransformerEncoderLayer,
)
from speechbrain.nnet.activations import Swish
from speechbrain.nnet.attention import RelPosEncXL

# Variance floor of the per-utterance feature normalisation.
NORM_EPS = 1e-5
ENCODER_TYPES = ("conformer", "transformer")
# sentence: per-utterance mean and variance over the valid frames; level:
# minus the utterance's speech level (one number for all filterbanks), which
# keeps the spectral shape and the loudness dynamics within the utterance;
# fixed: one affine map for all utterances (keeps the absolute level, which a
# microphone sets: not level-invariant). sentence and level give the same
# output for x and g * x.
FEATURE_NORMS = ("sentence", "level", "fixed")
# Quantile of the frame levels taken as the speech level by "level": high
# enough to ignore pauses and silence around the speech (up to 80 % of the
# frames), low enough to ignore a few loud frames.
LEVEL_QUANTILE = 0.8
ATTENTION_TYPE = "RelPosMHAXL"
# Files of a pre-trained encoder folder.
HPARAMS_FILE = "encoder_hyperparams.json"
WEIGHTS_FILE = "encoder.ckpt"
# Arguments that a pre-trained folder does not fix (no effect on the
# weights): the rest must match the folder or stay at their defaults.
FREE_ARGUMENTS = ("dropout",)


def _class_path(cls):
    """``module.Name`` of a class, as stored in ``encoder_hyperparams.json``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def read_pretrained_hparams(source):
    """Reads the hyperparameters of a pre-trained encoder folder.

    Arguments
    ---------
    source : str
        A folder written by ``ConformerSpeechEncoder.save_pretrained``.

    Returns
    -------
    dict
        The constructor arguments (``activation`` as a class).

    Raises
    ------
    FileNotFoundError
        If the folder or its files are missing.
    """
    missing = [
        name
        for name in (HPARAMS_FILE, WEIGHTS_FILE)
        if not os.path.isfile(os.path.join(str(source), name))
    ]
    if missing:
        raise FileNotFoundError(
            f"ConformerSpeechEncoder: {source} has no {missing}: it is not a "
            "pre-trained encoder folder. Write one with save_pretrained "
            "(e.g. recipes/Synthetic/pretrain_encoder.py) first."
        )
    with open(os.path.join(source, HPARAMS_FILE), encoding="utf-8") as f:
        hparams = json.load(f)
    activation = pydoc.locate(hparams["activation"])
    if activation is None:
        raise ValueError(
            f"{os.path.join(source, HPARAMS_FILE)}: activation "
            f"{hparams['activation']!r} cannot be imported."
        )
    hparams["activation"] = activation
    return hparams


def length_mask(lengths, max_len):
    """Boolean mask, True on the first ``lengths[b]`` of ``max_len`` positions.

    SpeechBrain's ``length_to_mask`` with a boolean result.

    Example
    -------
    >>> length_mask(torch.tensor([2, 1]), 3)
    tensor([[ True,  True, False],
            [ True, False, False]])
    """
    return length_to_mask(lengths, max_len, dtype=torch.bool)


def sentence_norm(feats, lengths, eps=NORM_EPS):
    """Normalises each utterance's features to zero mean and unit variance
    per dimension over its valid frames; padded frames become zero.

    Arguments
    ---------
    feats : torch.Tensor
        Features, shape (B, T, F).
    lengths : torch.Tensor
        Valid frames, shape (B,).
    eps : float
        Added to the variance.

    Returns
    -------
    torch.Tensor
        Normalised features, shape (B, T, F).

    Example
    -------
    >>> feats = torch.tensor([[[1.0], [3.0], [9.0]]])
    >>> sentence_norm(feats, torch.tensor([2]), eps=0.0)
    tensor([[[-1.],
             [ 1.],
             [ 0.]]])
    """
    valid = length_mask(lengths, feats.shape[1]).unsqueeze(-1)  # (B, T, 1)
    mask = valid.to(feats.dtype)
    count = lengths.to(feats.dtype)[:, None, None]  # (B, 1, 1)
    mean = (feats * mask).sum(dim=1, keepdim=True) / count  # (B, 1, F)
    var = (((feats - mean) * mask) ** 2).sum(dim=1, keepdim=True) / count
    normed = (feats - mean) / torch.sqrt(var + eps)
    return torch.where(valid, normed, torch.zeros_like(normed))


def level_norm(feats, lengths, quantile=LEVEL_QUANTILE):
    """Subtracts each utterance's speech level from its log-mel features.

    The level is the ``quantile`` of the frame levels (mean over the
    filterbanks) over the valid frames: a gain ``g`` on the waveform adds
    ``20 log10 g`` dB to every log-mel value and to the level, so the output
    does not depend on it. Padded frames become zero.

    Arguments
    ---------
    feats : torch.Tensor
        Log-mel features in dB, shape (B, T, F).
    lengths : torch.Tensor
        Valid frames, shape (B,).
    quantile : float
        Quantile of the frame levels taken as the speech level.

    Returns
    -------
    torch.Tensor
        Features relative to the speech level (dB), shape (B, T, F).

    Example
    -------
    >>> feats = torch.tensor([[[0.0, 2.0], [10.0, 12.0], [5.0, 5.0]]])
    >>> level_norm(feats, torch.tensor([2]), quantile=1.0)
    tensor([[[-11.,  -9.],
             [ -1.,   1.],
             [  0.,   0.]]])
    """
    frame_level = feats.mean(dim=-1)  # (B, T)
    levels = torch.stack(
        [
            torch.quantile(frame_level[b, : int(n)], quantile)
            for b, n in enumerate(lengths)
        ]
    )  # (B,)
    normed = feats - levels[:, None, None]
    valid = length_mask(lengths, feats.shape[1]).unsqueeze(-1)  # (B, T, 1)
    return torch.where(valid, normed, torch.zeros_like(normed))


class MaskedConvolutionModule(ConvolutionModule):
    """SpeechBrain's Conformer convolution module, with padded frames set to
    zero before the depthwise convolution, so that the frames at the end of
    an utterance see the same zeros as the convolution's own padding.

    Arguments
    ---------
    *args : tuple
        Arguments of ``ConvolutionModule`` (non-causal only).
    **kwargs : dict
        Keyword arguments of ``ConvolutionModule``.

    Example
    -------
    >>> module = MaskedConvolutionModule(16, kernel_size=3).eval()
    >>> x = torch.rand(1, 5, 16)
    >>> padded = torch.cat([x, torch.rand(1, 3, 16)], dim=1)
    >>> mask = torch.arange(8)[None, :, None] >= 5
    >>> alone = module(x)
    >>> batch = module(padded, mask)[:, :5]
    >>> bool((alone - batch).abs().max() < 1e-6)
    True
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.causal:
            raise ValueError("MaskedConvolutionModule is non-causal only.")

    def forward(self, x, mask=None, dynchunktrain_config=None):
        """Applies the convolution module.

        Arguments
        ---------
        x : torch.Tensor
            Input, shape (B, T, D).
        mask : torch.Tensor, optional
            True on padded frames, shape (B, T, 1).
        dynchunktrain_config : None
            Streaming is not supported; must be None.

        Returns
        -------
        torch.Tensor
            Output, shape (B, T, D), zero on padded frames.
        """
        if dynchunktrain_config is not None:
            raise ValueError("MaskedConvolutionModule does not stream.")
        out = self.layer_norm(x).transpose(1, 2)  # (B, D, T)
        out = self.bottleneck(out)  # (B, D, T)
        if mask is not None:
            out = out.masked_fill(mask.transpose(1, 2), 0.0)
        out = self.conv(out).transpose(1, 2)  # (B, T, D)
        out = self.after_conv(out)
        if mask is not None:
            out = out.masked_fill(mask, 0.0)
        return out


class ConvSubsampling(torch.nn.Module):
    """Stride-2 ``Conv2d`` blocks over (time, mel) and a linear projection,
    with padded frames zeroed before each convolution.

    Arguments
    ---------
    n_mels : int
        Input feature dimension.
    d_model : int
        Output dimension.
    channels : int
        Channels of each convolution.
    num_blocks : int
        Number of convolutions; time is divided by ``stride ** num_blocks``.
    kernel_size : int
        Convolution kernel size (odd).
    stride : int
        Stride of each convolution, in time and frequency.
    activation : type
        Activation class applied after each convolution.

    Example
    -------
    >>> sub = ConvSubsampling(n_mels=40, d_model=16, channels=8)
    >>> x, lengths = sub(torch.rand(2, 101, 40), torch.tensor([101, 50]))
    >>> x.shape, lengths
    (torch.Size([2, 26, 16]), tensor([26, 13]))
    """

    def __init__(
        self,
        n_mels,
        d_model,
        channels=32,
        num_blocks=2,
        kernel_size=3,
        stride=2,
        activation=Swish,
    ):
        super().__init__()
        padding = kernel_size // 2
        self.convs = torch.nn.ModuleList(
            torch.nn.Conv2d(
                1 if i == 0 else channels,
                channels,
                kernel_size,
                stride=stride,
                padding=padding,
            )
            for i in range(num_blocks)
        )
        self.activation = activation()
        out_mels = n_mels
        for conv in self.convs:
            out_mels = self._out_length(conv, out_mels)
        self.proj = torch.nn.Linear(channels * out_mels, d_model)

    @staticmethod
    def _out_length(conv, length):
        """Output length of ``conv`` along an axis of length ``length``."""
        (kernel, _), (stride, _), (padding, _) = (
            conv.kernel_size,
            conv.stride,
            conv.padding,
        )
        return (length + 2 * padding - kernel) // stride + 1

    def forward(self, x, lengths):
        """Subsamples the features.

        Arguments
        ---------
        x : torch.Tensor
            Features, zero on padded frames, shape (B, T, F).
        lengths : torch.Tensor
            Valid frames, shape (B,).

        Returns
        -------
        x : torch.Tensor
            Subsampled features, shape (B, T', d_model).
        lengths : torch.Tensor
            Valid subsampled frames, shape (B,).
        """
        x = x.unsqueeze(1)  # (B, 1, T, F)
        for conv in self.convs:
            x = self.activation(conv(x))  # (B, C, T/s, F/s)
            lengths = self._out_length(conv, lengths)
            mask = length_mask(lengths, x.shape[2])  # (B, T/s)
            x = x * mask[:, None, :, None].to(x.dtype)
        batch, channels, frames, mels = x.shape
        x = x.transpose(1, 2).reshape(batch, frames, channels * mels)
        return self.proj(x), lengths  # (B, T', d_model)


class ConformerSpeechEncoder(torch.nn.Module):
    """Fbank + convolutional subsampling + Conformer layers, giving every
    layer's hidden states.

    Arguments
    ---------
    n_mels : int
        Number of mel filterbanks.
    d_model : int
        Model (output) dimension D.
    num_layers : int
        Number of Conformer layers L.
    nhead : int
        Attention heads.
    d_ffn : int
        Hidden size of the feed-forward modules.
    kernel_size : int
        Kernel of the Conformer depthwise convolution (odd).
    dropout : float
        Dropout of the layers and after the input projection.
    sample_rate : int
        Sampling rate of the input.
    n_fft : int
        FFT size of the filterbank.
    win_length : float
        Window length of the filterbank, in ms.
    hop_length : float
        Hop of the filterbank, in ms.
    subsampling_channels : int
        Channels of the subsampling convolutions.
    subsampling_blocks : int
        Number of stride-2 subsampling convolutions (2: time / 4).
    subsampling_kernel_size : int
        Kernel of the subsampling convolutions.
    encoder_type : str
        ``"conformer"`` or ``"transformer"`` (pre-norm Transformer layers
        with the same relative positional attention).
    activation : type
        Activation class of the layers and the subsampling.
    feature_norm : str
        ``"sentence"``: each utterance's filterbanks to zero mean and unit
        variance over its valid frames; ``"level"``: minus the utterance's
        speech level (``level_norm``), divided by ``fixed_std``, which keeps
        the spectral shape and the loudness dynamics; ``"fixed"``:
        ``(feats - fixed_mean) / fixed_std`` for every utterance, which keeps
        the absolute level (set by the microphone: not level-invariant).
        ``"sentence"`` and ``"level"`` give the same output for a waveform
        and a scaled copy.
    fixed_mean : float
        Mean of the log-mel filterbanks (dB) for ``"fixed"``.
    fixed_std : float
        Their standard deviation (dB) for ``"fixed"`` and ``"level"``.
    source : str, optional
        A folder written by ``save_pretrained``: the encoder is built with
        its hyperparameters and loads its weights. Arguments left at their
        defaults take the folder's values; one that is set and differs from
        the folder's raises ``ValueError`` (``dropout`` excepted).
    freeze : bool
        Nothing trains: no gradients, eval mode (no dropout) whatever
        ``train()`` asks, and the forward pass runs under
        ``torch.no_grad``. Checkpoints of a model that holds it (see
        ``PartialCheckpointMixin``) then leave its weights out: they come
        back from ``source``.

    Example
    -------
    >>> encoder = ConformerSpeechEncoder(
    ...     n_mels=40, d_model=32, num_layers=2, nhead=2, d_ffn=64
    ... ).eval()
    >>> wavs = torch.rand(3, 16000)
    >>> hidden, lens = encoder(wavs, torch.tensor([1.0, 0.6, 0.3]))
    >>> hidden.shape
    torch.Size([3, 3, 26, 32])
    >>> lens
    tensor([1.0000, 0.6154, 0.3077])
    >>> encoder.num_layers, encoder.output_dim, encoder.min_samples
    (2, 32, 400)

    Saved and loaded frozen, it gives the same outputs (up to the rounding
    of PyTorch's attention fast path, which frozen weights enable):

    >>> import tempfile
    >>> folder = encoder.save_pretrained(tempfile.mkdtemp())
    >>> frozen = ConformerSpeechEncoder(source=folder, freeze=True).train()
    >>> again, _ = frozen(wavs, torch.tensor([1.0, 0.6, 0.3]))
    >>> torch.allclose(again, hidden, atol=1e-5), frozen.training
    (True, False)
    >>> again.requires_grad
    False
    """

    def __init__(
        self,
        n_mels=80,
        d_model=144,
        num_layers=4,
        nhead=4,
        d_ffn=576,
        kernel_size=15,
        dropout=0.1,
        sample_rate=16000,
        n_fft=400,
        win_length=25,
        hop_length=10,
        subsampling_channels=32,
        subsampling_blocks=2,
        subsampling_kernel_size=3,
        encoder_type="conformer",
        activation=Swish,
        feature_norm="sentence",
        fixed_mean=-15.0,
        fixed_std=20.0,
        source=None,
        freeze=False,
    ):
        super().__init__()
        self.hparams = dict(
            n_mels=n_mels,
            d_model=d_model,
            num_layers=num_layers,
            nhead=nhead,
            d_ffn=d_ffn,
            kernel_size=kernel_size,
            dropout=dropout,
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=win_length,
            hop_length=hop_length,
            subsampling_channels=subsampling_channels,
            subsampling_blocks=subsampling_blocks,
            subsampling_kernel_size=subsampling_kernel_size,
            encoder_type=encoder_type,
            activation=activation,
            feature_norm=feature_norm,
            fixed_mean=fixed_mean,
            fixed_std=fixed_std,
        )
        if source is not None:
            self.hparams = self._merge_pretrained(source, self.hparams)
        (
            n_mels,
            d_model,
            num_layers,
            nhead,
            d_ffn,
            kernel_size,
            dropout,
            sample_rate,
            n_fft,
            win_length,
            hop_length,
            subsampling_channels,
            subsampling_blocks,
            subsampling_kernel_size,
            encoder_type,
            activation,
            feature_norm,
            fixed_mean,
            fixed_std,
        ) = self.hparams.values()
        if encoder_type not in ENCODER_TYPES:
            raise ValueError(
                f"ConformerSpeechEncoder: encoder_type={encoder_type!r}; use "
                f"one of {ENCODER_TYPES}."
            )
        if kernel_size % 2 == 0 or subsampling_kernel_size % 2 == 0:
            raise ValueError(
                "ConformerSpeechEncoder: kernel_size and "
                "subsampling_kernel_size must be odd (centred convolutions "
                "keep the frame count)."
            )
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(
                f"ConformerSpeechEncoder: feature_norm={feature_norm!r}; use "
                f"one of {FEATURE_NORMS}."
            )
        self.num_layers = num_layers
        self.output_dim = d_model
        self.sample_rate = sample_rate
        self.feature_norm = feature_norm
        self.fixed_mean = fixed_mean
        self.fixed_std = fixed_std
        self.fbank = Fbank(
            sample_rate=sample_rate,
            n_fft=n_fft,
            n_mels=n_mels,
            win_length=win_length,
            hop_length=hop_length,
        )
        self.hop_samples = self.fbank.compute_STFT.hop_length
        # Shortest input with one whole analysis window.
        self.min_samples = self.fbank.compute_STFT.win_length
        self.subsampling = ConvSubsampling(
            n_mels=n_mels,
            d_model=d_model,
            channels=subsampling_channels,
            num_blocks=subsampling_blocks,
            kernel_size=subsampling_kernel_size,
            activation=activation,
        )
        self.input_dropout = torch.nn.Dropout(dropout)
        self.pos_enc = RelPosEncXL(d_model)
        self.layers = torch.nn.ModuleList(
            self._make_layer(
                encoder_type,
                d_model,
                nhead,
                d_ffn,
                kernel_size,
                dropout,
                activation,
            )
            for _ in range(num_layers)
        )
        self.source = source
        self.freeze = freeze
        if source is not None:
            state = torch.load(
                os.path.join(source, WEIGHTS_FILE),
                map_location="cpu",
                weights_only=True,
            )
            self.load_state_dict(state)
        if freeze:
            self.requires_grad_(False)
            self.eval()

    @classmethod
    def _merge_pretrained(cls, source, given):
        """The folder's hyperparameters, checked against the given ones."""
        import inspect

        saved = read_pretrained_hparams(source)
        defaults = {
            name: param.default
            for name, param in inspect.signature(cls).parameters.items()
        }
        merged = {}
        for name, value in given.items():
            if name not in saved:
                raise ValueError(
                    f"{os.path.join(source, HPARAMS_FILE)} lacks {name!r}; "
                    "was it written by another version? Pre-train again."
                )
            if name in FREE_ARGUMENTS and value != defaults[name]:
                merged[name] = value
            elif value != defaults[name] and value != saved[name]:
                raise ValueError(
                    f"ConformerSpeechEncoder: {name}={value!r}, but the "
                    f"pre-trained encoder in {source} has {name}="
                    f"{saved[name]!r}. Leave {name} out (it comes from the "
                    "folder) or use another source."
                )
            else:
                merged[name] = saved[name]
        return merged

    def save_pretrained(self, folder):
        """Writes the weights and hyperparameters into ``folder``.

        ``ConformerSpeechEncoder(source=folder)`` builds the same encoder.

        Arguments
        ---------
        folder : str
            Created if missing; its encoder files are replaced.

        Returns
        -------
        str
            ``folder``.
        """
        os.makedirs(folder, exist_ok=True)
        hparams = dict(self.hparams)
        hparams["activation"] = _class_path(hparams["activation"])
        torch.save(self.state_dict(), os.path.join(folder, WEIGHTS_FILE))
        with open(
            os.path.join(folder, HPARAMS_FILE), "w", encoding="utf-8"
        ) as f:
            json.dump(hparams, f, indent=2)
        return folder

    def train(self, mode=True):
        """Sets training mode; a frozen encoder always stays in eval mode.

        Arguments
        ---------
        mode : bool
            Training (True) or evaluation (False).

        Returns
        -------
        ConformerSpeechEncoder
            self.
        """
        return super().train(mode and not self.freeze)

    @staticmethod
    def _make_layer(
        encoder_type, d_model, nhead, d_ffn, kernel_size, dropout, activation
    ):
        """Builds one encoder layer with relative positional attention."""
        if encoder_type == "transformer":
            return TransformerEncoderLayer(
                d_ffn=d_ffn,
                nhead=nhead,
                d_model=d_model,
                dropout=dropout,
                activation=activation,
                normalize_before=True,
                attention_type=ATTENTION_TYPE,
            )
        layer = ConformerEncoderLayer(
            d_model=d_model,
            d_ffn=d_ffn,
            nhead=nhead,
            kernel_size=kernel_size,
            activation=activation,
            dropout=dropout,
            attention_type=ATTENTION_TYPE,
        )
        layer.convolution_module = MaskedConvolutionModule(
            d_model, kernel_size, activation=activation, dropout=dropout
        )
        return layer

    def forward(self, wavs, wav_lens=None):
        """Encodes a batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            Waveforms at ``sample_rate``, shape (B, N).
        wav_lens : torch.Tensor, optional
            Relative lengths in [0, 1], shape (B,).

        Returns
        -------
        hidden_states : torch.Tensor
            Every layer, shape (L+1, B, T, D); zero on padded frames.
        out_lens : torch.Tensor
            Relative lengths of the valid frames, shape (B,).
        """
        with torch.set_grad_enabled(
            torch.is_grad_enabled() and not self.freeze
        ):
            return self._encode(wavs, wav_lens)

    def _encode(self, wavs, wav_lens):
        """``forward`` without the gradient switch."""
        batch, max_samples = wavs.shape
        if wav_lens is None:
            wav_lens = torch.ones(batch, device=wavs.device)
        n_samples = torch.round(wav_lens * max_samples).long()
        n_samples = n_samples.clamp(min=1, max=max_samples)  # (B,)
        wavs = wavs * length_mask(n_samples, max_samples)  # (B, N)

        feats = self.fbank(wavs)  # (B, N // hop + 1, n_mels)
        # A centred STFT gives n // hop + 1 frames for n samples.
        n_frames = torch.div(n_samples, self.hop_samples, rounding_mode="floor")
        n_frames = n_frames + 1
        if self.feature_norm == "sentence":
            feats = sentence_norm(feats, n_frames)
        elif self.feature_norm == "level":
            feats = level_norm(feats, n_frames) / self.fixed_std
        else:  # fixed: keeps the absolute level of the utterance
            feats = (feats - self.fixed_mean) / self.fixed_std
            feats = feats * length_mask(n_frames, feats.shape[1]).unsqueeze(-1)
        x, n_frames = self.subsampling(feats, n_frames)  # (B, T, D)
        x = self.input_dropout(x)

        valid = length_mask(n_frames, x.shape[1])  # (B, T)
        keep = valid.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        x = x * keep
        pos_embs = self.pos_enc(x)  # (1, 2T - 1, D)
        hidden = [x]
        for layer in self.layers:
            x, _ = layer(x, src_key_padding_mask=~valid, pos_embs=pos_embs)
            x = x * keep
            hidden.append(x)
        out_lens = n_frames.to(wav_lens.dtype) / x.shape[1]
        return torch.stack(hidden), out_lens  # (L+1, B, T, D), (B,)
