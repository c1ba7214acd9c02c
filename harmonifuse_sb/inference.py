"""HarmoniFuseSLM: the pre-trained interface for transcription and emotion.

Loads an inference folder written at the end of training
(``harmonifuse_sb.export``) the way SpeechBrain users load
``EncoderDecoderASR``::

    from harmonifuse_sb import HarmoniFuseSLM
    slm = HarmoniFuseSLM.from_hparams(source="results/.../inference",
                                      savedir="pretrained/harmonifuse")
    slm.transcribe_file("speech.wav")   # 'the cat sat'
    slm.classify_file("speech.wav")     # ('happy', {'neutral': 0.02, ...})
    slm.analyze_file("speech.wav")      # both, one encoder pass

Audio of any sample rate and channel count is read as 16 kHz mono with the
same function as in training. The model is the training module itself:
the interface calls ``HarmoniFuse``'s methods, so inference builds the LLM
input exactly as the test stage did.

Authors
 * HarmoniFuse-SB developers 2026
"""

import os

import torch
from speechbrain.inference.interfaces import Pretrained
from speechbrain.utils.fetching import LocalStrategy

from harmonifuse_sb.dataio import AudioError, load_audio

MODEL_DIR_KEY = "model_dir"


class HarmoniFuseSLM(Pretrained):
    """Transcribes speech and recognises emotion with a trained HarmoniFuse.

    The hyperparameters must define ``modules`` with a ``model``
    (``HarmoniFuse``) and ``sample_rate``; ``from_hparams`` checks it.

    Arguments
    ---------
    *args : tuple
        Passed to ``Pretrained``.
    **kwargs : dict
        Passed to ``Pretrained``.
    """

    HPARAMS_NEEDED = ["sample_rate", "label_encoder"]
    MODULES_NEEDED = ["model"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Pretrained never checks MODULES_NEEDED (SpeechBrain 1.1.2).
        missing = [m for m in self.MODULES_NEEDED if m not in self.mods]
        if missing:
            raise ValueError(
                f"HarmoniFuseSLM: the hyperparameters' `modules` lack "
                f"{missing}; an exported hyperparams.yaml has "
                "`modules: {model: ...}`."
            )
        self.model = self.mods.model
        labels = [
            self.hparams.label_encoder.ind2lab[i]
            for i in range(len(self.hparams.label_encoder))
        ]
        if labels != self.model.emotions:
            raise ValueError(
                f"label_encoder.txt lists {labels} but the model was built "
                f"for {self.model.emotions}."
            )

    @classmethod
    def from_hparams(
        cls, source, hparams_file="hyperparams.yaml", overrides=None, **kwargs
    ):
        """Loads an inference folder (a local path or a hub repository).

        Arguments
        ---------
        source : str
            Local folder or hub id of an exported model.
        hparams_file : str
            Name of the hyperparameters file in ``source``.
        overrides : dict, optional
            Overrides for the hyperparameters.
        **kwargs : dict
            ``savedir``, ``run_opts`` (e.g. ``{"device": "cuda"}``), ... as
            for SpeechBrain's ``Pretrained.from_hparams``.

        Returns
        -------
        HarmoniFuseSLM
        """
        looks_local = (
            source.startswith(("/", ".", "~")) or source.count("/") > 1
        )
        if looks_local and not os.path.isdir(source):
            raise FileNotFoundError(f"No inference folder at {source}.")
        if os.path.isdir(source):
            model_dir = os.path.abspath(source)
            # Read the files in place: with SpeechBrain's default (links in
            # savedir), a savedir used before for another model kept serving
            # that model's checkpoint.
            kwargs.setdefault("local_strategy", LocalStrategy.NO_LINK)
        else:  # the folder must be whole on disk: the LLM loads from it
            from huggingface_hub import snapshot_download

            model_dir = snapshot_download(
                source, local_dir=kwargs.get("savedir")
            )
        overrides = dict(overrides or {})
        overrides.setdefault(MODEL_DIR_KEY, model_dir)
        try:
            return super().from_hparams(
                model_dir,
                hparams_file=hparams_file,
                overrides=overrides,
                **kwargs,
            )
        except KeyError as err:
            # Pretrained.from_hparams reads hparams["pretrainer"] and
            # hparams["modules"] unchecked: name the file and the key.
            if err.args and err.args[0] in ("modules", "pretrainer"):
                raise ValueError(
                    f"HarmoniFuseSLM: {os.path.join(model_dir, hparams_file)}"
                    f" has no `{err.args[0]}` key; an exported "
                    "hyperparams.yaml has `modules: {model: ...}` and a "
                    "`pretrainer` (see harmonifuse_sb.export)."
                ) from err
            raise

    def load_audio(self, path, savedir=None):
        """Reads a file as a 16 kHz mono waveform; errors name the file.

        Arguments
        ---------
        path : str
            Audio file.
        savedir : str, optional
            Unused (kept for ``Pretrained`` compatibility).

        Returns
        -------
        torch.Tensor
            (N,) waveform.
        """
        del savedir
        return load_audio(str(path), self.hparams.sample_rate)

    def load_batch(self, paths, first_index=0):
        """Reads files into a padded batch; a bad file is named.

        Arguments
        ---------
        paths : list of str
            Audio files.
        first_index : int
            Index of ``paths[0]`` in a longer list that is decoded in
            chunks, so that an error gives the item's index in that list.

        Returns
        -------
        wavs : torch.Tensor
            (B, N) padded waveforms.
        wav_lens : torch.Tensor
            (B,) relative lengths.
        """
        wavs = []
        min_samples = getattr(self.model.encoder, "min_samples", 1)
        rate = self.hparams.sample_rate
        for i, path in enumerate(paths, start=first_index):
            try:
                wav = self.load_audio(path)
                if len(wav) < min_samples:
                    raise AudioError(
                        f"Audio file {path} lasts {1000 * len(wav) / rate:.1f}"
                        f" ms; the encoder needs at least "
                        f"{1000 * min_samples / rate:.1f} ms of audio."
                    )
            except AudioError as err:
                raise AudioError(f"Batch item {i}: {err}") from err
            wavs.append(wav)
        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.float)
        batch = torch.zeros(len(wavs), int(lengths.max()))
        for i, wav in enumerate(wavs):
            batch[i, : len(wav)] = wav
        return batch, lengths / lengths.max()

    def _encode(self, wavs, wav_lens):
        wavs = wavs.to(self.device).float()
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0])
        return self.model.encode_speech(wavs, wav_lens.to(self.device))

    @torch.no_grad()
    def transcribe_batch(self, wavs, wav_lens=None, **generate_kwargs):
        """Transcribes a batch of 16 kHz waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, N) waveforms.
        wav_lens : torch.Tensor, optional
            (B,) relative lengths (default: all 1).
        **generate_kwargs : dict
            ``max_new_tokens`` or ``num_beams`` overriding the model's.

        Returns
        -------
        list of str
        """
        hidden, lens = self._encode(wavs, wav_lens)
        feats = self.model.task_features(hidden, lens, "asr")
        return self.model.transcribe(feats, **generate_kwargs)

    @torch.no_grad()
    def classify_batch(self, wavs, wav_lens=None):
        """Recognises the emotion of a batch of 16 kHz waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, N) waveforms.
        wav_lens : torch.Tensor, optional
            (B,) relative lengths.

        Returns
        -------
        probs : torch.Tensor
            (B, K) class probabilities, in the order of ``emotions``.
        labels : list of str
            The most probable emotion of each item.
        """
        hidden, lens = self._encode(wavs, wav_lens)
        return self._classify(hidden, lens)

    def _classify(self, hidden, lens):
        feats = self.model.task_features(hidden, lens, "ser")
        probs = self.model.ser_logits(feats).float().softmax(-1).cpu()
        labels = [self.model.emotions[i] for i in probs.argmax(-1).tolist()]
        return probs, labels

    @torch.no_grad()
    def analyze_batch(self, wavs, wav_lens=None):
        """Transcript and emotion of each item from one encoder pass.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, N) waveforms.
        wav_lens : torch.Tensor, optional
            (B,) relative lengths.

        Returns
        -------
        list of dict
            ``transcript``, ``emotion`` and ``probabilities`` (label ->
            probability) per item.
        """
        hidden, lens = self._encode(wavs, wav_lens)
        asr_feats = self.model.task_features(hidden, lens, "asr")
        transcripts = self.model.transcribe(asr_feats)
        probs, labels = self._classify(hidden, lens)
        return [
            {
                "transcript": text,
                "emotion": label,
                "probabilities": self._prob_dict(p),
            }
            for text, label, p in zip(transcripts, labels, probs)
        ]

    def _prob_dict(self, probs):
        return {
            e: round(float(p), 6) for e, p in zip(self.model.emotions, probs)
        }

    def transcribe_file(self, path):
        """Transcript of one audio file."""
        return self.transcribe_batch(*self.load_batch([path]))[0]

    def classify_file(self, path):
        """Emotion of one audio file: ``(label, {label: probability})``."""
        probs, labels = self.classify_batch(*self.load_batch([path]))
        return labels[0], self._prob_dict(probs[0])

    def analyze_file(self, path):
        """Transcript, emotion and probabilities of one audio file."""
        return self.analyze_batch(*self.load_batch([path]))[0]

    def analyze_files(self, paths, batch_size=8):
        """``analyze_file`` for many files, decoded in batches.

        Arguments
        ---------
        paths : list of str
            Audio files.
        batch_size : int
            Files per batch.

        Returns
        -------
        list of dict
            One result per file, in order, each with its ``file``.
        """
        results = []
        for start in range(0, len(paths), batch_size):
            chunk = list(paths[start : start + batch_size])
            batch = self.load_batch(chunk, first_index=start)
            for path, res in zip(chunk, self.analyze_batch(*batch)):
                results.append({"file": str(path), **res})
        return results

    def forward(self, wavs, wav_lens=None):
        """Same as ``analyze_batch``."""
        return self.analyze_batch(wavs, wav_lens)
