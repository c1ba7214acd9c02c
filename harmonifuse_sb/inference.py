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

Files of any length: a voice activity detector (``harmonifuse_sb.vad``,
silero-vad) finds the speech, and a recording with several utterances is
decoded segment by segment (``harmonifuse_sb.longform``);
``analyze_file`` gives each segment's times, transcript and emotion. Audio
without speech gets the transcript ``""`` and no emotion (the no-speech
rule, in the file and the batch methods alike).

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
from speechbrain.utils.data_utils import batch_pad_right
from speechbrain.utils.fetching import LocalStrategy

from harmonifuse_sb.dataio import (
    SAMPLE_RATE,
    AudioError,
    check_batch,
    load_audio,
)
from harmonifuse_sb.longform import (
    AudioStream,
    batches_by_length,
    merge_segments,
    segment_file,
)
from harmonifuse_sb.vad import VoiceActivityDetector

MODEL_DIR_KEY = "model_dir"
TASKS = ("asr", "ser")


class HarmoniFuseSLM(Pretrained):
    """Transcribes speech and recognises emotion with a trained HarmoniFuse.

    The hyperparameters must define ``modules`` with a ``model``
    (``HarmoniFuse``) and ``sample_rate``; ``from_hparams`` checks it.

    **No-speech rule.** Before decoding, the voice activity detector
    (``self.vad``, see ``harmonifuse_sb.vad`` for the rule) looks for
    speech. An item or file without any gets the transcript ``""``, the
    emotion ``None`` and no probabilities (``{}``; a row of zeros in the
    tensor of ``classify_batch``), and costs no model pass. Its options
    come from the ``vad`` mapping of ``hyperparams.yaml`` (exported from the
    training YAML; a folder without it gets ``VoiceActivityDetector``'s
    defaults), from the ``vad`` argument here, or per call
    (``vad_threshold``, ``min_pause``, ``max_segment_duration``).
    ``vad: null`` in the YAML, or ``vad=False`` here, turns the VAD off:
    every input is decoded whole, as one utterance.

    Arguments
    ---------
    *args : tuple
        Passed to ``Pretrained``.
    vad : dict or VoiceActivityDetector or bool, optional
        VAD options overriding the YAML's (e.g. ``{"threshold": 0.6}``), a
        detector, or ``False`` for none.
    **kwargs : dict
        Passed to ``Pretrained``.
    """

    HPARAMS_NEEDED = ["sample_rate", "label_encoder"]
    MODULES_NEEDED = ["model"]

    def __init__(self, *args, vad=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.vad = self._build_vad(vad)
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

    def _build_vad(self, override):
        """The detector from the YAML's ``vad`` mapping and ``override``."""
        if isinstance(override, VoiceActivityDetector):
            return override
        hparams = vars(self.hparams)
        options = hparams.get("vad", {})
        if override is False or (options is None and not override):
            return None
        options = dict(options or {})
        options.update(override or {})
        try:
            return VoiceActivityDetector(**options)
        except TypeError as err:
            raise ValueError(
                f"HarmoniFuseSLM: bad `vad` options {options} ({err}); see "
                "harmonifuse_sb.vad.VoiceActivityDetector for the keys."
            ) from err

    def _call_vad(self, vad_threshold=None, **options):
        """The detector of one call: ``self.vad`` with options changed."""
        changes = dict(threshold=vad_threshold, **options)
        if self.vad is None:
            if all(v is None for v in changes.values()):
                return None
            return VoiceActivityDetector().options(**changes)
        return self.vad.options(**changes)

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
        return batch_pad_right(wavs)

    def _encode(self, wavs, wav_lens):
        wavs = wavs.to(self.device).float()
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0])
        return self.model.encode_speech(wavs, wav_lens.to(self.device))

    def _speech_items(self, wavs, wav_lens, vad_threshold):
        """The no-speech rule on a batch: which items to decode.

        Returns the indices of the items with speech and the batch of those
        items alone (trimmed to the longest of them, lengths relative to
        it), or ``None`` for the batch when no item has speech.
        """
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0])
        vad = self._call_vad(vad_threshold)
        if vad is None:
            return list(range(len(wavs))), (wavs, wav_lens)
        keep = [i for i, s in enumerate(vad.has_speech(wavs, wav_lens)) if s]
        if len(keep) == len(wavs):
            return keep, (wavs, wav_lens)
        if not keep:
            return keep, None
        lengths = (wav_lens.cpu().float() * wavs.shape[1]).round()[keep]
        longest = int(lengths.max())
        return keep, (wavs[keep, :longest], lengths / longest)

    def _decode(self, wavs, wav_lens, tasks, **generate_kwargs):
        """Both or one task on a batch that has speech, one encoder pass.

        Returns a dict with ``transcript`` (list of str) for ``"asr"`` and
        ``probs`` ((B, K) tensor) and ``emotion`` (list of str) for
        ``"ser"``.
        """
        hidden, lens = self._encode(wavs, wav_lens)
        out = {}
        if "asr" in tasks:
            feats = self.model.task_features(hidden, lens, "asr")
            # Seconds of audio: the token cap of length-aware decoding
            rel = torch.ones(len(wavs)) if wav_lens is None else wav_lens
            generate_kwargs.setdefault(
                "durations", rel.cpu().float() * wavs.shape[1] / SAMPLE_RATE
            )
            out["transcript"] = self.model.transcribe(feats, **generate_kwargs)
        if "ser" in tasks:
            out["probs"], out["emotion"] = self._classify(hidden, lens)
        return out

    def _decode_with_rule(self, wavs, wav_lens, tasks, vad_threshold, **kw):
        """``_decode`` of the items with speech; the others get the empty
        result: transcript ``""``, emotion ``None``, zero probabilities.
        """
        # Before the VAD, which would take a malformed or damaged batch for
        # one without speech (NaN, wav_lens 0) or fail obscurely (1-D);
        # the encoder's minimum length is checked on the items it decodes.
        check_batch(wavs, wav_lens, sample_rate=self.hparams.sample_rate)
        batch_size = wavs.shape[0]
        keep, batch = self._speech_items(wavs, wav_lens, vad_threshold)
        out = {}
        if "asr" in tasks:
            out["transcript"] = [""] * batch_size
        if "ser" in tasks:
            out["probs"] = torch.zeros(batch_size, len(self.model.emotions))
            out["emotion"] = [None] * batch_size
        if batch is not None:
            decoded = self._decode(*batch, tasks, **kw)
            for key, values in decoded.items():
                for i, value in zip(keep, values):
                    out[key][i] = value
        return out

    @torch.no_grad()
    def transcribe_batch(
        self, wavs, wav_lens=None, vad_threshold=None, **generate_kwargs
    ):
        """Transcribes a batch of 16 kHz waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, N) waveforms; one waveform is ``wav.unsqueeze(0)``.
        wav_lens : torch.Tensor, optional
            (B,) relative lengths in (0, 1] (default: all 1).
        vad_threshold : float, optional
            Speech threshold of the no-speech rule for this call.
        **generate_kwargs : dict
            ``max_new_tokens`` or ``num_beams`` overriding the model's.

        Returns
        -------
        list of str
            ``""`` for an item without speech.

        Raises
        ------
        ValueError
            Before the VAD (on or off), naming the argument or the batch
            item: ``wavs`` not a (B, N) float tensor (a 1-D tensor is
            refused, not guessed), ``wav_lens`` not (B,) or an entry
            outside (0, 1] (0 is no audio at all, not silence: drop the
            item), NaN or infinite samples.
        """
        return self._decode_with_rule(
            wavs, wav_lens, ("asr",), vad_threshold, **generate_kwargs
        )["transcript"]

    @torch.no_grad()
    def classify_batch(self, wavs, wav_lens=None, vad_threshold=None):
        """Recognises the emotion of a batch of 16 kHz waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, N) waveforms; one waveform is ``wav.unsqueeze(0)``.
        wav_lens : torch.Tensor, optional
            (B,) relative lengths in (0, 1].
        vad_threshold : float, optional
            Speech threshold of the no-speech rule for this call.

        Returns
        -------
        probs : torch.Tensor
            (B, K) class probabilities, in the order of ``emotions``; a row
            of zeros for an item without speech.
        labels : list of str or None
            The most probable emotion of each item; ``None`` without speech.

        Raises
        ------
        ValueError
            As ``transcribe_batch``, before the VAD.
        """
        out = self._decode_with_rule(wavs, wav_lens, ("ser",), vad_threshold)
        return out["probs"], out["emotion"]

    def _classify(self, hidden, lens):
        feats = self.model.task_features(hidden, lens, "ser")
        probs = self.model.ser_logits(feats).float().softmax(-1).cpu()
        labels = [self.model.emotions[i] for i in probs.argmax(-1).tolist()]
        return probs, labels

    @torch.no_grad()
    def analyze_batch(self, wavs, wav_lens=None, vad_threshold=None):
        """Transcript and emotion of each item from one encoder pass.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, N) waveforms; one waveform is ``wav.unsqueeze(0)``.
        wav_lens : torch.Tensor, optional
            (B,) relative lengths in (0, 1].
        vad_threshold : float, optional
            Speech threshold of the no-speech rule for this call.

        Returns
        -------
        list of dict
            ``transcript``, ``emotion`` and ``probabilities`` (label ->
            probability) per item; ``""``, ``None`` and ``{}`` without
            speech.

        Raises
        ------
        ValueError
            As ``transcribe_batch``, before the VAD.
        """
        out = self._decode_with_rule(wavs, wav_lens, TASKS, vad_threshold)
        return self._results(out, len(wavs))

    def _results(self, out, batch_size):
        """Per-item dicts from ``_decode``'s lists."""
        results = [{} for _ in range(batch_size)]
        for i, res in enumerate(results):
            if "transcript" in out:
                res["transcript"] = out["transcript"][i]
            if "emotion" in out:
                res["emotion"] = out["emotion"][i]
                res["probabilities"] = (
                    {}
                    if out["emotion"][i] is None
                    else self._prob_dict(out["probs"][i])
                )
        return results

    def _prob_dict(self, probs):
        return {
            e: round(float(p), 6) for e, p in zip(self.model.emotions, probs)
        }

    # Audio decoded around each VAD segment, in seconds: the models are
    # trained on utterances with silence around the speech (the quick-start
    # corpus: 0.05-0.5 s), so a segment cut at the VAD's boundaries loses
    # word edges (3-minute benchmark of an earlier quick-start model:
    # long-form WER 14.7 % with the VAD's 30 ms padding alone, 10.86 % with
    # 0.15 s; docs/longform.md, "Long recordings: measured").
    segment_context = 0.25

    def _with_context(self, regions, num_samples):
        """Regions widened by ``segment_context`` on each side, never past
        the middle of the pause to a neighbouring region or the file.

        Example
        -------
        >>> slm = HarmoniFuseSLM.__new__(HarmoniFuseSLM)
        >>> slm.hparams = type("H", (), {"sample_rate": 100})
        >>> slm._with_context([(50, 80), (90, 200)], 210)
        [(25, 85), (85, 210)]
        """
        pad = int(self.segment_context * self.hparams.sample_rate)
        spans = []
        for i, (start, end) in enumerate(regions):
            low = (regions[i - 1][1] + start) // 2 if i else 0
            high = (
                (end + regions[i + 1][0]) // 2
                if i + 1 < len(regions)
                else num_samples
            )
            spans.append((max(start - pad, low), min(end + pad, high)))
        return spans

    @torch.no_grad()
    def _analyze_long(self, path, tasks, vad, batch_size, progress=None):
        """Segments and merged result of a file of any length.

        Arguments
        ---------
        path : str
            Audio file.
        tasks : tuple of str
            ``"asr"`` and/or ``"ser"``.
        vad : VoiceActivityDetector or None
            None: the file is decoded whole, as one segment.
        batch_size : int
            Most segments per batch.
        progress : callable, optional
            Called with the seconds of the file done so far.

        Returns
        -------
        dict
            The merged result and ``segments``.
        """
        stream = AudioStream(path, self.hparams.sample_rate)
        whole = None
        if vad is None:
            whole = (0, stream.num_samples)
        else:
            regions = segment_file(stream, vad)
            if len(regions) == 1 and (
                stream.duration <= vad.max_segment_duration
            ):
                whole = regions[0]  # one utterance: decoded as before
        if whole is not None:
            out = self._decode(*self.load_batch([path]), tasks)
            regions, batches = [whole], [[0]]
        else:
            max_seconds = batch_size * vad.max_segment_duration
            batches = batches_by_length(regions, max_seconds, batch_size)
        rate = self.hparams.sample_rate
        segments = [
            {"start": round(s / rate, 3), "end": round(e / rate, 3)}
            for s, e in regions
        ]
        total = sum(e - s for s, e in regions)
        spans = self._with_context(regions, stream.num_samples)
        done = 0
        for batch in batches:
            if whole is None:
                wavs = [stream.read(*spans[i]) for i in batch]
                out = self._decode(*batch_pad_right(wavs), tasks)
            for i, res in zip(batch, self._results(out, len(batch))):
                segments[i].update(res)
            done += sum(regions[i][1] - regions[i][0] for i in batch)
            if progress is not None:
                progress(stream.duration * done / total)
        if progress is not None:
            progress(stream.duration)
        return {
            **merge_segments(segments, self.model.emotions),
            "segments": segments,
        }

    def transcribe_file(
        self,
        path,
        vad_threshold=None,
        max_segment_duration=None,
        min_pause=None,
        batch_size=8,
    ):
        """Transcript of one audio file of any length.

        A recording with several utterances is cut into segments by the VAD
        and each segment is transcribed; the transcripts are joined with
        spaces. A file without speech gives ``""``.

        Arguments
        ---------
        path : str
            Audio file.
        vad_threshold, max_segment_duration, min_pause : float, optional
            VAD options for this call (see ``VoiceActivityDetector``).
        batch_size : int
            Segments decoded at once.

        Returns
        -------
        str

        Raises
        ------
        AudioError
            As ``analyze_file``.
        """
        vad = self._call_vad(
            vad_threshold,
            max_segment_duration=max_segment_duration,
            min_pause=min_pause,
        )
        return self._analyze_long(path, ("asr",), vad, batch_size)["transcript"]

    def classify_file(
        self,
        path,
        vad_threshold=None,
        max_segment_duration=None,
        min_pause=None,
        batch_size=8,
    ):
        """Emotion of one audio file of any length.

        The probabilities are the segments' averaged with their durations as
        weights; the label is the most probable one.

        Arguments
        ---------
        path : str
            Audio file.
        vad_threshold, max_segment_duration, min_pause : float, optional
            VAD options for this call (see ``VoiceActivityDetector``).
        batch_size : int
            Segments decoded at once.

        Returns
        -------
        label : str or None
            ``None`` for a file without speech.
        probabilities : dict
            Label -> probability; ``{}`` without speech.

        Raises
        ------
        AudioError
            As ``analyze_file``.
        """
        vad = self._call_vad(
            vad_threshold,
            max_segment_duration=max_segment_duration,
            min_pause=min_pause,
        )
        res = self._analyze_long(path, ("ser",), vad, batch_size)
        return res["emotion"], res["probabilities"]

    def analyze_file(
        self,
        path,
        vad_threshold=None,
        max_segment_duration=None,
        min_pause=None,
        batch_size=8,
        progress=None,
    ):
        """Transcript and emotion of one audio file of any length, with
        segments.

        The VAD cuts the file into speech segments of at most
        ``max_segment_duration`` seconds, read from the disk a batch at a
        time (memory does not grow with the file's length); each segment
        gets a transcript and an emotion from one encoder pass. A file in
        which the VAD finds a single utterance, and that is no longer than
        ``max_segment_duration``, is decoded whole, exactly as one item of
        ``analyze_batch``.

        Arguments
        ---------
        path : str
            Audio file.
        vad_threshold, max_segment_duration, min_pause : float, optional
            VAD options for this call (see ``VoiceActivityDetector``).
        batch_size : int
            Segments decoded at once.
        progress : callable, optional
            Called with the seconds of the file done so far.

        Returns
        -------
        dict
            ``transcript``: the segments' transcripts joined by spaces;
            ``probabilities``: the segments' probabilities averaged with
            their durations as weights; ``emotion``: its most probable
            label; ``segments``: a list of ``{start, end, transcript,
            emotion, probabilities}`` in time order, times in seconds (the
            speech region, padded by the VAD's ``speech_pad``). Without
            speech: ``""``, ``None``, ``{}`` and no segments.

        Raises
        ------
        AudioError
            Naming the file: missing, unreadable, empty, or holding NaN or
            infinite samples (found as the VAD's pass reads it, or on
            loading with the VAD off).
        """
        vad = self._call_vad(
            vad_threshold,
            max_segment_duration=max_segment_duration,
            min_pause=min_pause,
        )
        return self._analyze_long(path, TASKS, vad, batch_size, progress)

    def analyze_files(self, paths, batch_size=8, **vad_options):
        """``analyze_file`` for many files, one after the other.

        Arguments
        ---------
        paths : list of str
            Audio files.
        batch_size : int
            Segments decoded at once.
        **vad_options : dict
            ``vad_threshold``, ``max_segment_duration``, ``min_pause``.

        Returns
        -------
        list of dict
            One result per file, in order, each with its ``file``.

        Raises
        ------
        AudioError
            Naming the file and its index in ``paths``.
        """
        results = []
        for i, path in enumerate(paths):
            try:
                res = self.analyze_file(
                    path, batch_size=batch_size, **vad_options
                )
            except AudioError as err:
                raise AudioError(f"List item {i}: {err}") from err
            results.append({"file": str(path), **res})
        return results

    def forward(self, wavs, wav_lens=None):
        """Same as ``analyze_batch``."""
        return self.analyze_batch(wavs, wav_lens)
