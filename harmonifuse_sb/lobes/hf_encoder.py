"""A pre-trained transformers speech encoder that returns every layer.

``HFSpeechEncoder`` wraps WavLM, HuBERT, wav2vec2 (anything ``AutoModel``
loads with a CNN feature encoder) or the encoder of Whisper, loaded from a hub
id or a local folder, and gives the hidden states of all its transformer
layers, ``(L+1, B, T, D)``, with the relative lengths of the valid frames.

Padding is handled so that an utterance gives the same features alone as in a
zero-padded batch:

- the waveform is normalised (zero mean, unit variance) over its valid samples
  only, and only when the model's feature extractor asks for it
  (``do_normalize``); padded samples are set to zero;
- models with a layer-norm CNN (``feat_extract_norm="layer"``: WavLM Large,
  HuBERT Large, wav2vec2-large-lv60) get an attention mask and run as one
  batch;
- models that cannot be padding-invariant in one batched call (a group-norm
  CNN, ``feat_extract_norm="group"``, as in wav2vec2-base and WavLM Base+, whose
  normalisation statistics span the padding, or a model whose feature
  extractor says it takes no attention mask) run utterance by utterance when
  the batch holds padding (``batching="auto"``); ``batching="padded"`` forces
  one call, faster but not padding-invariant;
- Whisper: the log-mel spectrogram of the feature extractor is computed in
  torch, each utterance padded with zeros to the 30 s the encoder's positional
  embeddings need (as ``WhisperFeatureExtractor`` does), and the outputs are
  trimmed to the real length. As every utterance sees the same 30 s input
  alone or in a batch, the batch changes only the float rounding.

Padded frames of every returned layer are zero.

Authors
-------
HarmoniFuse contributors
"""

import torch
import transformers
from speechbrain.utils.logger import get_logger
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel
from transformers.models.whisper.modeling_whisper import (
    WhisperForAudioClassification,
    _compute_mask_indices,
)

from harmonifuse_sb.lobes.checkpointing import PartialCheckpointMixin
from harmonifuse_sb.lobes.conformer_encoder import length_mask

logger = get_logger(__name__)

WHISPER = "whisper"
LAYER_NORM_CNN = "layer"

# Variance floor of Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm.
NORM_EPS = 1e-7

# Log-mel constants of WhisperFeatureExtractor (and of OpenAI's Whisper):
# power floor before log10, dynamic range kept below each utterance's peak
# (log10 units), then (log_spec + OFFSET) / SCALE.
WHISPER_POWER_FLOOR = 1e-10
WHISPER_DYNAMIC_RANGE = 8.0
WHISPER_LOG_OFFSET = 4.0
WHISPER_LOG_SCALE = 4.0

BATCHING_MODES = ("auto", "padded", "per_utterance")

# Default input level: every utterance is brought to this RMS (dBFS) over
# its valid samples before the model's own input processing, so that the
# encoder does not depend on the recording's gain (a microphone's setting).
# -26 dBFS is about the level of LibriSpeech's read speech.
INPUT_LEVEL_DB = -26.0
# RMS below which an input counts as digital silence and is left as it is.
SILENCE_RMS = 1e-8


def rms_normalize(wavs, n_samples, level_db=INPUT_LEVEL_DB):
    """Scales each waveform to an RMS of ``level_db`` dBFS over its valid
    samples, so that ``x`` and ``g * x`` give the same input; digital
    silence stays zero.

    Arguments
    ---------
    wavs : torch.Tensor
        Waveforms, zero-padded, shape (B, N).
    n_samples : torch.Tensor
        Number of valid samples of each waveform, shape (B,).
    level_db : float
        Target RMS in dB relative to full scale.

    Returns
    -------
    torch.Tensor
        Scaled waveforms, shape (B, N).

    Example
    -------
    >>> wavs = torch.tensor([[0.5, -0.5, 0.0], [0.1, -0.1, 0.1]])
    >>> rms_normalize(wavs, torch.tensor([2, 3]), level_db=-20.0)
    tensor([[ 0.1000, -0.1000,  0.0000],
            [ 0.1000, -0.1000,  0.1000]])
    """
    count = n_samples.to(wavs.dtype).unsqueeze(1)  # (B, 1)
    rms = torch.sqrt((wavs**2).sum(dim=1, keepdim=True) / count)  # (B, 1)
    gain = 10 ** (level_db / 20) / rms.clamp(min=SILENCE_RMS)
    return wavs * torch.where(rms > SILENCE_RMS, gain, torch.ones_like(gain))


def zero_mean_unit_var_norm(wavs, n_samples, eps=NORM_EPS):
    """Normalises each waveform over its valid samples, as
    ``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm`` does; padded samples
    become zero.

    Arguments
    ---------
    wavs : torch.Tensor
        Waveforms, shape (B, N).
    n_samples : torch.Tensor
        Number of valid samples of each waveform, shape (B,).
    eps : float
        Added to the variance.

    Returns
    -------
    torch.Tensor
        Normalised waveforms, shape (B, N).

    Example
    -------
    >>> wavs = torch.tensor([[1.0, 3.0, 0.0], [1.0, 2.0, 3.0]])
    >>> zero_mean_unit_var_norm(wavs, torch.tensor([2, 3]), eps=0.0)
    tensor([[-1.0000,  1.0000,  0.0000],
            [-1.2247,  0.0000,  1.2247]])
    """
    valid = length_mask(n_samples, wavs.shape[1])  # (B, N)
    mask = valid.to(wavs.dtype)
    count = n_samples.to(wavs.dtype).unsqueeze(1)  # (B, 1)
    mean = (wavs * mask).sum(dim=1, keepdim=True) / count
    var = (((wavs - mean) * mask) ** 2).sum(dim=1, keepdim=True) / count
    normed = (wavs - mean) / torch.sqrt(var + eps)
    return torch.where(valid, normed, torch.zeros_like(normed))


class HFSpeechEncoder(PartialCheckpointMixin, torch.nn.Module):
    """A transformers speech encoder giving all its layers' hidden states.

    Freezing (checked in this order):

    - ``freeze=True``: nothing trains; the model stays in eval mode and runs
      under ``torch.no_grad``. ``num_trainable_layers`` must then be 0.
    - ``freeze=False, num_trainable_layers=k > 0``: only the top ``k``
      transformer layers train (for Whisper also the encoder's final layer
      norm, which is part of its top output). Everything below stays in eval
      mode, so it is deterministic.
    - ``freeze=False, num_trainable_layers=0``: the whole encoder trains,
      except the CNN feature extractor when ``freeze_feature_extractor``, and
      the weights that never reach the returned hidden states (the
      post-encoder layer norm of stable-layer-norm models, Whisper's fixed
      positional table, the SpecAugment mask embedding when it is off).

    A SpeechBrain checkpoint of this lobe holds only the trainable weights
    (and persistent buffers): a frozen encoder writes an empty file, and the
    frozen weights come back from ``source``.

    The model's own SpecAugment (wav2vec2 family: on the CNN features;
    Whisper: on the log-mel, as ``WhisperModel`` does) runs only with
    ``apply_spec_augment=True`` and only in training with ``freeze=False``;
    LayerDrop is always off, so a fixed input gives a fixed set of L+1 layers.
    The hidden states are those of transformers' ``output_hidden_states``:
    index 0 is the input of the first transformer layer, index ``l`` the
    output of layer ``l`` (for Whisper the last one after the final layer
    norm; for stable-layer-norm wav2vec2 models before it).

    Arguments
    ---------
    source : str
        Hub id or local folder of the model (and of its feature extractor
        settings, ``preprocessor_config.json``).
    save_path : str, optional
        Cache folder for downloads (``cache_dir`` of ``from_pretrained``).
    freeze : bool
        Whether the whole encoder is frozen.
    num_trainable_layers : int
        With ``freeze=False``: how many top transformer layers train; 0
        means all of the encoder.
    freeze_feature_extractor : bool
        With ``freeze=False, num_trainable_layers=0``: keep the CNN feature
        extractor (wav2vec2 family) or the two input convolutions (Whisper)
        frozen.
    apply_spec_augment : bool
        Whether to apply the model's own SpecAugment in training, with the
        probabilities of its config (``mask_time_prob``...).
    batching : str
        ``"auto"``: one batched call when the model is padding-invariant
        with an attention mask, else one call per utterance when the batch
        holds padding. ``"padded"``: always one call (fast; not
        padding-invariant for group-norm models). ``"per_utterance"``:
        always one call per utterance.
    do_normalize : bool, optional
        Override of the feature extractor's ``do_normalize``.
    use_attention_mask : bool, optional
        Override of the feature extractor's ``return_attention_mask``.
    output_dtype : str or torch.dtype, optional
        Dtype of the returned hidden states (e.g. ``"bfloat16"``): each
        layer is cast as it is stacked, so an (L+1, B, T, D) tensor is never
        held in float32. Halves the memory of the hidden states that the
        fusion reads (25 x 1,024 values per frame for WavLM Large). None:
        the model's dtype (float32).
    sample_rate : int
        Sampling rate of the input; must match the feature extractor's.
    input_level_db : float or None
        Each utterance is scaled to this RMS (dBFS) over its valid samples
        before the model's input processing (``rms_normalize``), so the
        output does not depend on the recording's gain; None feeds the
        waveform as it comes.

    Example
    -------
    >>> import tempfile
    >>> from transformers import WavLMConfig, WavLMModel
    >>> from transformers import Wav2Vec2FeatureExtractor
    >>> folder = tempfile.mkdtemp()
    >>> config = WavLMConfig(
    ...     hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...     intermediate_size=64, conv_dim=(32, 32), conv_stride=(5, 4),
    ...     conv_kernel=(10, 8), num_conv_pos_embeddings=16,
    ...     num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
    ...     do_stable_layer_norm=True,
    ... )
    >>> WavLMModel(config).save_pretrained(folder)
    >>> _ = Wav2Vec2FeatureExtractor(
    ...     return_attention_mask=True, do_normalize=True
    ... ).save_pretrained(folder)
    >>> encoder = HFSpeechEncoder(folder)
    >>> wavs = torch.randn(2, 16000)
    >>> hidden, lens = encoder(wavs, torch.tensor([1.0, 0.5]))
    >>> hidden.shape
    torch.Size([3, 2, 798, 32])
    >>> lens
    tensor([1.0000, 0.4987])
    >>> encoder.num_layers, encoder.output_dim, encoder.min_samples
    (2, 32, 45)
    """

    def __init__(
        self,
        source,
        save_path=None,
        freeze=True,
        num_trainable_layers=0,
        freeze_feature_extractor=False,
        apply_spec_augment=False,
        batching="auto",
        do_normalize=None,
        use_attention_mask=None,
        output_dtype=None,
        sample_rate=16000,
        input_level_db=INPUT_LEVEL_DB,
    ):
        super().__init__()
        if batching not in BATCHING_MODES:
            raise ValueError(
                f"HFSpeechEncoder: batching={batching!r}; use one of "
                f"{BATCHING_MODES}."
            )
        if freeze and num_trainable_layers:
            raise ValueError(
                "HFSpeechEncoder: freeze=True freezes the whole encoder, but "
                f"num_trainable_layers={num_trainable_layers}. Set freeze: "
                "False to fine-tune the top layers."
            )
        self.source = source
        self.freeze = freeze
        self.num_trainable_layers = num_trainable_layers
        self.freeze_feature_extractor = freeze_feature_extractor
        self.apply_spec_augment = apply_spec_augment
        self.batching = batching
        if isinstance(output_dtype, str):
            if not isinstance(getattr(torch, output_dtype, None), torch.dtype):
                raise ValueError(
                    f"HFSpeechEncoder: output_dtype={output_dtype!r} is not a "
                    "torch dtype; use e.g. 'bfloat16', or null."
                )
            output_dtype = getattr(torch, output_dtype)
        self.output_dtype = output_dtype
        self.sample_rate = sample_rate
        self.input_level_db = input_level_db

        config = AutoConfig.from_pretrained(source, cache_dir=save_path)
        self.is_whisper = config.model_type == WHISPER
        if self.is_whisper:
            config.encoder_layerdrop = 0.0
            self.model = _load_whisper_encoder(source, config, save_path)
            self.num_layers = config.encoder_layers
            self.output_dim = config.d_model
        else:
            config.layerdrop = 0.0
            config.apply_spec_augment = apply_spec_augment
            self.model = AutoModel.from_pretrained(
                source, config=config, cache_dir=save_path, dtype=torch.float32
            )
            self.num_layers = config.num_hidden_layers
            self.output_dim = config.hidden_size
        self.config = config
        if not 0 <= num_trainable_layers <= self.num_layers:
            raise ValueError(
                f"HFSpeechEncoder: num_trainable_layers={num_trainable_layers}"
                f" but {source} has {self.num_layers} layers."
            )

        self._read_feature_extractor(
            source, save_path, do_normalize, use_attention_mask
        )
        self.min_samples = self._receptive_field()
        self._set_trainable()
        self.train(self.training)

    def _receptive_field(self):
        """Fewest input samples that give one output frame: the CNN's
        receptive field (wav2vec2 family; 400 for WavLM Large), or one STFT
        window (Whisper).
        """
        if self.is_whisper:
            return self.n_fft
        field, jump = 1, 1
        for kernel, stride in zip(
            self.config.conv_kernel, self.config.conv_stride
        ):
            field += (kernel - 1) * jump
            jump *= stride
        return field

    def _read_feature_extractor(
        self, source, save_path, do_normalize, use_attention_mask
    ):
        """Reads the input settings from the model's feature extractor, or,
        when the source has none, from the config.
        """
        try:
            extractor = AutoFeatureExtractor.from_pretrained(
                source, cache_dir=save_path
            )
        except OSError:
            extractor = None
            logger.warning(
                "HFSpeechEncoder: %s has no preprocessor_config.json; "
                "input settings come from the config (pass do_normalize / "
                "use_attention_mask to override).",
                source,
            )

        cnn_norm = getattr(self.config, "feat_extract_norm", None)
        if extractor is None:
            # Wav2Vec2FeatureExtractor's rule: layer-norm CNN models were
            # trained with attention masks, group-norm ones without.
            default_mask = cnn_norm == LAYER_NORM_CNN
            # Wav2Vec2FeatureExtractor normalises by default; Whisper's not.
            default_normalize = not self.is_whisper
            if self.is_whisper:
                extractor = transformers.WhisperFeatureExtractor(
                    feature_size=self.config.num_mel_bins
                )
        else:
            default_mask = extractor.return_attention_mask
            default_normalize = getattr(extractor, "do_normalize", False)
            rate = extractor.sampling_rate
            if rate != self.sample_rate:
                raise ValueError(
                    f"HFSpeechEncoder: {source} expects {rate} Hz audio but "
                    f"sample_rate={self.sample_rate}. Resample the data."
                )

        self.do_normalize = (
            default_normalize if do_normalize is None else do_normalize
        )
        self.use_attention_mask = (
            default_mask if use_attention_mask is None else use_attention_mask
        )
        # One batched call is padding-invariant only with a per-frame CNN
        # norm and an attention mask; Whisper always pads to its full window.
        self.batch_invariant = self.is_whisper or (
            cnn_norm == LAYER_NORM_CNN and self.use_attention_mask
        )
        if self.batching == "padded" and not self.batch_invariant:
            logger.warning(
                "HFSpeechEncoder: %s (feat_extract_norm=%s, attention mask: "
                "%s) is not padding-invariant with batching='padded'.",
                source,
                cnn_norm,
                self.use_attention_mask,
            )

        if self.is_whisper:
            self.n_fft = extractor.n_fft
            self.hop_length = extractor.hop_length
            mel_filters = torch.as_tensor(
                extractor.mel_filters, dtype=torch.float32
            )  # (n_fft // 2 + 1, n_mels)
            self.register_buffer("mel_filters", mel_filters, persistent=False)
            self.register_buffer(
                "window", torch.hann_window(self.n_fft), persistent=False
            )
            # The positional embeddings fix the input length: 30 s.
            self.num_mel_frames = (
                self.config.max_source_positions
                * self.model.conv1.stride[0]
                * self.model.conv2.stride[0]
            )
            self.max_samples = self.num_mel_frames * self.hop_length

    def _layers(self):
        """Returns the ``ModuleList`` of transformer layers."""
        if self.is_whisper:
            return self.model.layers
        return self.model.encoder.layers

    def _input_convs(self):
        """Returns the modules before the transformer (the CNN)."""
        if self.is_whisper:
            return [self.model.conv1, self.model.conv2]
        return [self.model.feature_extractor]

    def _set_trainable(self):
        """Sets ``requires_grad`` as documented in the class docstring."""
        self.model.requires_grad_(False)
        if not self.is_whisper:
            # Clears the CNN's flag that makes its input require grad (for
            # gradient checkpointing); parameter flags are set below.
            self.model.feature_extractor._freeze_parameters()
        if self.freeze:
            return
        if self.num_trainable_layers > 0:
            for layer in self._layers()[-self.num_trainable_layers :]:
                layer.requires_grad_(True)
            if self.is_whisper:
                self.model.layer_norm.requires_grad_(True)
            return

        self.model.requires_grad_(True)
        if self.freeze_feature_extractor:
            for module in self._input_convs():
                module.requires_grad_(False)
        if self.is_whisper:
            self.model.embed_positions.requires_grad_(False)
            return
        if self.config.do_stable_layer_norm:
            # Applied after the last layer only to last_hidden_state, which
            # this lobe does not return.
            self.model.encoder.layer_norm.requires_grad_(False)
        if getattr(self.model, "adapter", None) is not None:
            self.model.adapter.requires_grad_(False)
        spec_embed = getattr(self.model, "masked_spec_embed", None)
        if spec_embed is not None and not self.apply_spec_augment:
            spec_embed.requires_grad_(False)

    def train(self, mode=True):
        """Sets training mode; frozen parts always stay in eval mode.

        Arguments
        ---------
        mode : bool
            Training (True) or evaluation (False).

        Returns
        -------
        HFSpeechEncoder
            self.
        """
        super().train(mode)
        if not mode:
            return self
        if self.freeze:
            self.model.eval()
        elif self.num_trainable_layers > 0:
            self.model.eval()
            for layer in self._layers()[-self.num_trainable_layers :]:
                layer.train(mode)
            # The wav2vec2 family checks the top model's flag for SpecAugment.
            self.model.training = mode
        elif self.freeze_feature_extractor:
            for module in self._input_convs():
                module.eval()
        return self

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
        batch, max_samples = wavs.shape
        if wav_lens is None:
            wav_lens = torch.ones(batch, device=wavs.device)
        n_samples = torch.round(wav_lens * max_samples).long()
        n_samples = n_samples.clamp(min=1, max=max_samples)  # (B,)

        with torch.set_grad_enabled(
            torch.is_grad_enabled() and not self.freeze
        ):
            wavs = wavs * length_mask(n_samples, max_samples)  # (B, N)
            if self.input_level_db is not None:
                wavs = rms_normalize(wavs, n_samples, self.input_level_db)
            if self.is_whisper:
                hidden, n_frames = self._encode_whisper(wavs, n_samples)
            elif self._per_utterance(n_samples, max_samples):
                hidden, n_frames = self._encode_one_by_one(wavs, n_samples)
            else:
                hidden, n_frames = self._encode(wavs, n_samples)
            num_frames = hidden.shape[2]
            frame_mask = length_mask(n_frames, num_frames)  # (B, T)
            frame_mask = frame_mask[None, :, :, None]  # (1, B, T, 1)
            if hidden.requires_grad:
                hidden = hidden * frame_mask  # (L+1, B, T, D)
            else:  # frozen: no second copy of all the layers
                hidden = hidden.mul_(frame_mask)
        return hidden, n_frames.to(wav_lens.dtype) / num_frames

    def _per_utterance(self, n_samples, max_samples):
        """Whether this batch must run one utterance at a time."""
        if self.batching == "per_utterance":
            return True
        if self.batching == "padded" or self.batch_invariant:
            return False
        return bool((n_samples < max_samples).any())

    def _stack(self, hidden_states):
        """Stacks the layers' outputs, each cast to ``output_dtype``."""
        if self.output_dtype is not None:
            hidden_states = [h.to(self.output_dtype) for h in hidden_states]
        return torch.stack(hidden_states)

    def _encode(self, wavs, n_samples):
        """Runs the wav2vec2-family model once on a (padded) batch.

        Arguments
        ---------
        wavs : torch.Tensor
            Waveforms with zero padding, shape (B, N).
        n_samples : torch.Tensor
            Valid samples, shape (B,).

        Returns
        -------
        hidden : torch.Tensor
            Shape (L+1, B, T, D).
        n_frames : torch.Tensor
            Valid frames, shape (B,).
        """
        if self.do_normalize:
            wavs = zero_mean_unit_var_norm(wavs, n_samples)
        attention_mask = None
        if self.use_attention_mask:
            attention_mask = length_mask(n_samples, wavs.shape[1]).long()
        out = self.model(
            wavs, attention_mask=attention_mask, output_hidden_states=True
        )
        hidden = self._stack(out.hidden_states)  # (L+1, B, T, D)
        n_frames = self.model._get_feat_extract_output_lengths(n_samples)
        return hidden, n_frames.long()

    def _encode_one_by_one(self, wavs, n_samples):
        """Runs each utterance alone, without padding, and pads the outputs.

        Arguments
        ---------
        wavs : torch.Tensor
            Waveforms with zero padding, shape (B, N).
        n_samples : torch.Tensor
            Valid samples, shape (B,).

        Returns
        -------
        hidden : torch.Tensor
            Shape (L+1, B, T, D).
        n_frames : torch.Tensor
            Valid frames, shape (B,).
        """
        outputs = [
            self._encode(wav[None, :length], length[None])
            for wav, length in zip(wavs, n_samples)
        ]
        n_frames = torch.cat([frames for _, frames in outputs])  # (B,)
        num_frames = int(n_frames.max())
        hidden = torch.cat(
            [
                torch.nn.functional.pad(h, (0, 0, 0, num_frames - h.shape[2]))
                for h, _ in outputs
            ],
            dim=1,
        )  # (L+1, B, T, D)
        return hidden, n_frames

    def log_mel(self, wavs):
        """Whisper's log-mel spectrogram, as ``WhisperFeatureExtractor``
        computes it (each utterance scaled to its own peak).

        Arguments
        ---------
        wavs : torch.Tensor
            Zero-padded waveforms, shape (B, N).

        Returns
        -------
        torch.Tensor
            Log-mel features, shape (B, n_mels, N // hop_length).
        """
        stft = torch.stft(
            wavs,
            self.n_fft,
            self.hop_length,
            window=self.window,
            return_complex=True,
        )  # (B, n_fft // 2 + 1, N // hop + 1)
        # The extractor drops the last frame: N samples give N // hop frames.
        power = stft[..., :-1].abs() ** 2
        mel = self.mel_filters.T @ power  # (B, n_mels, N // hop)
        log_spec = torch.clamp(mel, min=WHISPER_POWER_FLOOR).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)  # (B, 1, 1)
        log_spec = torch.maximum(log_spec, peak - WHISPER_DYNAMIC_RANGE)
        return (log_spec + WHISPER_LOG_OFFSET) / WHISPER_LOG_SCALE

    def _encode_whisper(self, wavs, n_samples):
        """Runs the Whisper encoder on 30 s windows and trims the outputs.

        Arguments
        ---------
        wavs : torch.Tensor
            Waveforms with zero padding, shape (B, N).
        n_samples : torch.Tensor
            Valid samples, shape (B,).

        Returns
        -------
        hidden : torch.Tensor
            Shape (L+1, B, T, D), T the longest valid output.
        n_frames : torch.Tensor
            Valid frames, shape (B,).
        """
        longest = int(n_samples.max())
        if longest > self.max_samples:
            raise ValueError(
                f"HFSpeechEncoder: an utterance has {longest} samples, more "
                f"than the {self.max_samples} the Whisper encoder of "
                f"{self.source} takes. Split long audio into chunks first."
            )
        wavs = wavs[:, : self.max_samples]
        if self.do_normalize:
            wavs = zero_mean_unit_var_norm(wavs, n_samples)
        pad = self.max_samples - wavs.shape[1]
        wavs = torch.nn.functional.pad(wavs, (0, pad))  # (B, 30 s)
        features = self.log_mel(wavs)  # (B, n_mels, frames)

        # A mel frame is valid when its centre sample is (extractor's mask).
        n_mel = torch.div(
            n_samples + self.hop_length - 1,
            self.hop_length,
            rounding_mode="floor",
        )
        if self.training and self.apply_spec_augment and not self.freeze:
            features = self._spec_augment(features, n_mel)
        out = self.model(features, output_hidden_states=True)
        hidden = self._stack(out.hidden_states)  # (L+1, B, 1500, D)
        n_frames = self.model._get_feat_extract_output_lengths(n_mel).long()
        return hidden[:, :, : int(n_frames.max())], n_frames

    def _spec_augment(self, features, n_mel):
        """Zeroes random time spans and mel bands, as
        ``WhisperModel._mask_input_features`` does.

        Arguments
        ---------
        features : torch.Tensor
            Log-mel features, shape (B, n_mels, frames).
        n_mel : torch.Tensor
            Valid mel frames, shape (B,).

        Returns
        -------
        torch.Tensor
            Masked features, shape (B, n_mels, frames).
        """
        config = self.config
        batch, n_mels, frames = features.shape
        features = features.clone()
        if config.mask_time_prob > 0:
            valid = length_mask(n_mel, frames).long().cpu()
            spans = _compute_mask_indices(
                (batch, frames),
                mask_prob=config.mask_time_prob,
                mask_length=config.mask_time_length,
                attention_mask=valid,
                min_masks=config.mask_time_min_masks,
            )
            spans = torch.as_tensor(spans, device=features.device)  # (B, T)
            features = features.masked_fill(spans[:, None, :], 0.0)
        if config.mask_feature_prob > 0:
            bands = _compute_mask_indices(
                (batch, n_mels),
                mask_prob=config.mask_feature_prob,
                mask_length=config.mask_feature_length,
                min_masks=config.mask_feature_min_masks,
            )
            bands = torch.as_tensor(bands, device=features.device)  # (B, F)
            features = features.masked_fill(bands[:, :, None], 0.0)
        return features


def _load_whisper_encoder(source, config, save_path):
    """Loads only the encoder of a Whisper checkpoint.

    ``WhisperForAudioClassification`` is the transformers class made of the
    Whisper encoder alone; loading through it skips the decoder's weights
    (half of the model). Its load report lists every skipped decoder weight,
    so it is silenced, and the encoder weights are checked here instead.

    Arguments
    ---------
    source : str
        Hub id or folder of any Whisper checkpoint.
    config : transformers.WhisperConfig
        Its (edited) config.
    save_path : str or None
        Cache folder.

    Returns
    -------
    transformers.models.whisper.modeling_whisper.WhisperEncoder
        The encoder, in float32.
    """
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model, info = WhisperForAudioClassification.from_pretrained(
            source,
            config=config,
            cache_dir=save_path,
            dtype=torch.float32,
            output_loading_info=True,
        )
    finally:
        transformers.logging.set_verbosity(verbosity)
    missing = [k for k in info["missing_keys"] if k.startswith("encoder.")]
    if missing:
        raise RuntimeError(
            f"HFSpeechEncoder: {source} lacks Whisper encoder weights "
            f"{missing[:5]}. Is it a Whisper checkpoint?"
        )
    return model.encoder
