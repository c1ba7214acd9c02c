"""The HarmoniFuse model: encoder, fusion, gate, projector and speech LM.

One module composes the lobes along docs/design.md's data flow. Training
(``HarmoniFuseBrain``) and inference (``HarmoniFuseSLM``) call the same
methods, so the LLM input is built by one function in both:

    wav -> encoder -> H (L+1, B, T, D)                       encode_speech
    H, p -> fusion -> gate -> projector -> S                 task_features
    [prompt ; S ; response] -> LLM -> loss / text / emotion  asr_* / ser_*

``encode_speech`` does not depend on the task, so ``analyze`` runs the
encoder once for both tasks.

Authors
 * HarmoniFuse-SB developers 2026
"""

import math

import torch
from transformers import LogitsProcessorList

from harmonifuse_sb.ctc_decoding import CTCPrefixScorer, TokenCharacters
from harmonifuse_sb.dataio import check_batch
from harmonifuse_sb.decoding import LengthLoopGuard, token_caps, trim_loop
from harmonifuse_sb.lobes.checkpointing import PartialCheckpointMixin
from harmonifuse_sb.tasks import (
    CLASSIFICATION,
    bind_tasks,
    default_tasks,
    first_of_kind,
)

# Checkpoints of the two-task code kept the SER head inside the speech LM;
# it is now the ``ser`` task's head (``load_trainable_state_dict`` maps it).
LEGACY_KEY_PREFIXES = {"speech_lm.ser_head.": "heads.ser."}


class HarmoniFuse(PartialCheckpointMixin, torch.nn.Module):
    """The multi-task speech LM: one model, a head per task.

    Checkpoints hold the trainable weights only (adapters, heads, fusion,
    gate, projector, trained encoder layers); frozen weights come back from
    the encoder's and LLM's sources.

    Arguments
    ---------
    encoder : torch.nn.Module
        Speech encoder returning ``(hidden (L+1, B, T, D), rel_lens)``, with
        an ``output_dim`` attribute (``HFSpeechEncoder`` or
        ``ConformerSpeechEncoder``).
    fusion : PromptAdaptiveFusion
        Layer fusion.
    gate : TaskGate
        Component selection.
    projector : SpeechProjector
        Maps the gated features to the LLM's width.
    speech_lm : SpeechLM
        The LLM and its tokenizer. A SER head built into it
        (``num_classes``, the two-task layout) becomes the ``ser`` head.
    tasks : dict, optional
        Task name -> ``harmonifuse_sb.tasks.Transcription`` or
        ``Classification`` (the YAML's ``tasks:``), in order. Each
        classification task in ``classifier`` mode gets a head in
        ``heads``. None: the two tasks ``asr`` and ``ser`` built from
        ``prompts``, ``emotions``, ``ser_mode``, ``ser_pooling`` and
        ``label_words`` (the two-task arguments, which exported models of
        the two-task code still give).
    prompts : dict, optional
        Two-task layout: prompt texts of ``"asr"`` and ``"ser"``.
    emotions : list of str, optional
        Two-task layout: emotion labels in class-index order.
    ser_mode : str
        Two-task layout: ``"classifier"`` (head on the hidden state before
        the response) or ``"lm_scoring"`` (log-probability of each label
        word under the LM).
    label_words : dict, optional
        Two-task layout: word the LM scores for each label in
        ``lm_scoring`` mode (default: the label itself).
    ctc_alphabet : str, optional
        Characters of an auxiliary CTC head on the gated encoder features
        (e.g. ``"abcdefghijklmnopqrstuvwxyz' "``). Characters rather than
        the LLM's tokens: the head stays small for a 150k-token LLM, and an
        encoder trained from scratch learns sounds faster from shared
        characters than from whole-word tokens. None: no CTC head.
    max_new_tokens : int
        Longest transcript generated.
    num_beams : int
        Beam size for transcription (1: greedy).
    ctc_decode_weight : float
        Weight of the CTC head in joint CTC/LLM decoding
        (``harmonifuse_sb.ctc_decoding``; needs ``ctc_alphabet``); 0: the
        LLM alone.
    ctc_decode_top_k : int
        Next tokens per hypothesis and step scored by CTC.
    ser_pooling : str
        Two-task layout: what the SER classifier reads: ``"last"`` the
        LLM's last hidden state at the last position before the response;
        ``"mean"`` its mean over the prompt and speech positions, which
        gives every speech position a direct gradient (an LLM trained from
        scratch learns the task faster).
    llm_fusion : PromptAdaptiveFusion, optional
        Fusion of the LLM's layers for the classifiers (built with
        ``num_layers`` = the LLM's decoder layers): the head reads the
        prompt-weighted sum of every layer's pooled hidden state instead of
        the last layer's. This is the reading of the paper in which the
        prompt-adaptive layer fusion sits between the multimodal LM and
        the task-specific output layers. None (or ``mode="last"``): the
        last layer, as a plain speech LM.
    length_cap : dict, optional
        Length-aware decoding (``harmonifuse_sb.decoding``): utterance i
        gets at most ``min(max_new_tokens, ceil(tokens_per_second *
        seconds_i) + margin)`` tokens. Keys ``tokens_per_second`` (None:
        measured by ``train.py`` on the training transcripts and set with
        ``set_tokens_per_second``; kept in checkpoints) and ``margin``.
        None: the fixed ``max_new_tokens`` only.
    repetition_guard : dict, optional
        ``max_ngram`` and ``max_repeats``: a hypothesis whose last tokens
        are one n-gram repeated ``max_repeats`` times ends there, and one
        copy is kept (``decoding.LengthLoopGuard``). None: no guard.
    heads : dict, optional
        Task name -> classifier head, built beforehand (``build_harmonifuse``
        builds them right after the LLM, where the two-task code drew
        their initial weights); missing ones are built here.
    ctc_upsample : int
        CTC outputs per encoder frame: the head maps each frame of
        dimension D to ``ctc_upsample`` frames of log-probabilities, so the
        CTC sequence has ``ctc_upsample`` x T frames. 1: one per frame. At
        40 ms a frame, read speech gives about 14 characters a second to
        25 frames, so a CTC path must emit a character on more than half
        of the frames; 2 halves that density (the state upsampling of
        Libovicky & Helcl, "End-to-End Non-Autoregressive Neural Machine
        Translation with Connectionist Temporal Classification", EMNLP
        2018, here as one wider linear layer). On the quick-start 2 made
        the CTC start reading later than 1 (docs/design.md).

    Example
    -------
    >>> import tempfile
    >>> from harmonifuse_sb.lobes import (ConformerSpeechEncoder, TaskGate,
    ...     PromptAdaptiveFusion, SpeechProjector, SpeechLM)
    >>> from harmonifuse_sb.lobes.speech_lm import make_tiny_causal_lm
    >>> slm = SpeechLM(make_tiny_causal_lm(tempfile.mkdtemp()),
    ...                num_classes=2, freeze=False)
    >>> enc = ConformerSpeechEncoder(n_mels=20, d_model=16, num_layers=2,
    ...                              nhead=2, d_ffn=32)
    >>> model = HarmoniFuse(
    ...     enc, PromptAdaptiveFusion(2, 32), TaskGate(16, 32),
    ...     SpeechProjector(16, 32), slm,
    ...     prompts={"asr": "transcribe", "ser": "emotion"},
    ...     emotions=["a", "b"], ctc_alphabet="abcd ")
    >>> wavs, lens = torch.randn(2, 8000), torch.tensor([1.0, 0.7])
    >>> feats = model.task_features(*model.encode_speech(wavs, lens), "ser")
    >>> model.classify(feats, "ser").shape
    torch.Size([2, 2])
    >>> list(model.tasks), sorted(model.heads)
    (['asr', 'ser'], ['ser'])
    """

    def __init__(
        self,
        encoder,
        fusion,
        gate,
        projector,
        speech_lm,
        prompts=None,
        emotions=None,
        ser_mode="classifier",
        label_words=None,
        ctc_alphabet=None,
        max_new_tokens=64,
        num_beams=1,
        ctc_decode_weight=0.0,
        ctc_decode_top_k=10,
        ser_pooling="last",
        llm_fusion=None,
        length_cap=None,
        repetition_guard=None,
        tasks=None,
        heads=None,
        ctc_upsample=1,
    ):
        super().__init__()
        if tasks is None:
            tasks = default_tasks(
                prompts, emotions, ser_mode, ser_pooling, label_words
            )
        elif prompts is not None or emotions is not None:
            raise ValueError(
                "HarmoniFuse: give either tasks or the two-task prompts/"
                "emotions, not both: prompts and labels belong to the tasks."
            )
        elif (ser_mode, ser_pooling, label_words) != (
            "classifier",
            "last",
            None,
        ):
            # An override such as --model="{ser_mode: ...}" must not be
            # ignored: the head's options are the task's now.
            raise ValueError(
                "HarmoniFuse: ser_mode, ser_pooling and label_words are "
                "options of a classification task now: set its mode, "
                "pooling or label_words in `tasks` (e.g. "
                '--tasks="{ser: {mode: lm_scoring}}").'
            )
        self.tasks = bind_tasks(tasks)
        self.encoder = encoder
        self.fusion = fusion
        self.gate = gate
        self.projector = projector
        self.speech_lm = speech_lm
        self.heads = build_heads(self.tasks, speech_lm, heads)
        # Token ids of the label words of each LM-scored task
        self.label_ids = {
            name: speech_lm.tokenize(
                [task.label_words.get(x, x) for x in task.labels],
                add_eos=True,
            )
            for name, task in self.tasks.items()
            if task.kind == CLASSIFICATION
        }
        self.ctc_head = None
        self.ctc_alphabet = ctc_alphabet
        if int(ctc_upsample) != ctc_upsample or ctc_upsample < 1:
            raise ValueError(
                f"HarmoniFuse: ctc_upsample={ctc_upsample!r}: give a whole "
                "number of CTC frames per encoder frame, 1 or more."
            )
        self.ctc_upsample = int(ctc_upsample)
        if ctc_alphabet:
            if len(set(ctc_alphabet)) != len(ctc_alphabet):
                raise ValueError(
                    f"ctc_alphabet {ctc_alphabet!r} repeats a character."
                )
            self.ctc_index = {c: i for i, c in enumerate(ctc_alphabet)}
            # One output per character plus the CTC blank (the last index),
            # ctc_upsample times per encoder frame
            self.ctc_head = torch.nn.Linear(
                encoder.output_dim, self.ctc_upsample * (len(ctc_alphabet) + 1)
            )
        if ctc_decode_weight and self.ctc_head is None:
            raise ValueError(
                f"HarmoniFuse: ctc_decode_weight={ctc_decode_weight} needs a "
                "CTC head: set ctc_alphabet."
            )
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.ctc_decode_weight = ctc_decode_weight
        self.ctc_decode_top_k = ctc_decode_top_k
        if llm_fusion is not None and llm_fusion.mode != "last":
            n_llm = speech_lm.causal_lm.config.get_text_config()
            n_llm = n_llm.num_hidden_layers + 1
            if llm_fusion.num_states != n_llm:
                raise ValueError(
                    f"HarmoniFuse: llm_fusion fuses {llm_fusion.num_states} "
                    f"hidden states but the LLM gives {n_llm}: set its "
                    f"num_layers to {n_llm - 1}, the LLM's decoder layers."
                )
            if not self.heads:
                raise ValueError(
                    "HarmoniFuse: llm_fusion feeds the classifier heads; no "
                    "task has one (every classification task has mode "
                    "'lm_scoring')."
                )
        self.llm_fusion = llm_fusion
        self.length_cap = dict(length_cap) if length_cap else None
        self.repetition_guard = dict(repetition_guard or {})
        if self.length_cap is not None:
            rate = self.length_cap.get("tokens_per_second")
            # A buffer: a rate measured at training reaches the exported
            # model. NaN until then.
            self.register_buffer(
                "decode_tokens_per_second",
                torch.tensor(float("nan") if rate is None else float(rate)),
            )

    @property
    def prompts(self):
        """Task name -> its prompt text."""
        return {name: task.prompt for name, task in self.tasks.items()}

    @property
    def emotions(self):
        """The labels of the first classification task (two-task API)."""
        task = first_of_kind(self.tasks, CLASSIFICATION)
        return None if task is None else list(task.labels)

    @staticmethod
    def upgrade_state(state):
        """Renames the entries of a checkpoint of the two-task code.

        Its SER head was ``speech_lm.ser_head.*``; it is now the ``ser``
        task's ``heads.ser.*``. ``load_trainable_state_dict`` calls this
        before loading, so old checkpoints and inference folders load.

        Arguments
        ---------
        state : dict
            A saved state dict.

        Returns
        -------
        dict
            The state with current names.

        Example
        -------
        >>> sorted(HarmoniFuse.upgrade_state({"speech_lm.ser_head.1.bias": 0}))
        ['heads.ser.1.bias']
        """
        renamed = {}
        for key, value in state.items():
            for old, new in LEGACY_KEY_PREFIXES.items():
                if key.startswith(old):
                    key = new + key[len(old) :]
            renamed[key] = value
        return renamed

    @property
    def ctc_blank(self):
        """Index of the CTC blank: after every character."""
        return len(self.ctc_alphabet)

    def ctc_targets(self, transcripts):
        """Character indices of transcripts for the CTC head.

        Arguments
        ---------
        transcripts : list of str
            Reference transcripts.

        Returns
        -------
        list of list of int
        """
        targets = []
        for text in transcripts:
            unknown = sorted(set(text) - set(self.ctc_index))
            if unknown:
                raise ValueError(
                    f"Transcript {text!r} has characters {unknown} outside "
                    f"ctc_alphabet {self.ctc_alphabet!r}: extend the "
                    "alphabet or normalise the transcripts."
                )
            targets.append([self.ctc_index[c] for c in text])
        return targets

    def ctc_greedy_transcribe(self, ctc_logp, lens):
        """Transcripts from the CTC head by greedy decoding.

        The best character per frame, repeats merged, blanks removed
        (``speechbrain.decoders.ctc_greedy_decode``): a cheap transcript
        for validation epochs without autoregressive decoding.

        Arguments
        ---------
        ctc_logp : torch.Tensor
            CTC log-probabilities (B, T, C+1), as ``asr_forward`` returns.
        lens : torch.Tensor
            Relative lengths of the frames (B,).

        Returns
        -------
        list of str
        """
        from speechbrain.decoders import ctc_greedy_decode

        if self.ctc_head is None:
            raise RuntimeError(
                "ctc_greedy_transcribe: the model has no CTC head; set "
                "ctc_alphabet in the model's YAML."
            )
        sequences = ctc_greedy_decode(ctc_logp, lens, self.ctc_blank)
        texts = ["".join(self.ctc_alphabet[i] for i in s) for s in sequences]
        return [" ".join(text.split()) for text in texts]

    def encode_speech(self, wavs, wav_lens):
        """Runs the speech encoder (task independent).

        Arguments
        ---------
        wavs : torch.Tensor
            Waveforms at 16 kHz (B, N).
        wav_lens : torch.Tensor
            Relative lengths (B,).

        Returns
        -------
        hidden : torch.Tensor
            All hidden states (L+1, B, T, D).
        lens : torch.Tensor
            Relative lengths of the frames (B,).

        Raises
        ------
        ValueError
            From ``check_batch``: a tensor of the wrong shape or dtype,
            ``wav_lens`` outside (0, 1], NaN or infinite samples, or an item
            shorter than the encoder's ``min_samples``.
        """
        check_batch(wavs, wav_lens, getattr(self.encoder, "min_samples", 1))
        return self.encoder(wavs, wav_lens)

    def task_features(self, hidden, lens, task, prompt=None):
        """Fusion, gate and projection for one task.

        Arguments
        ---------
        hidden : torch.Tensor
            Encoder hidden states (L+1, B, T, D).
        lens : torch.Tensor
            Relative lengths (B,).
        task : str
            A task name (a key of ``tasks``).
        prompt : str, optional
            A prompt text other than the task's default.

        Returns
        -------
        dict
            ``speech`` (B, T', E) and ``speech_lens`` (absolute, B) for the
            LLM; ``prompt_ids``; ``prompt_emb`` p (B, P);
            ``fusion_weights`` (B, L+1); ``gate`` (B, T, D), or
            (L+1, B, T, D) for a gate placed on the layers; ``features``
            X (B, T, D) with ``lens``.
        """
        if task not in self.tasks:
            raise ValueError(
                f"Unknown task '{task}': expected one of {list(self.tasks)}."
            )
        text = prompt if prompt is not None else self.tasks[task].prompt
        batch = hidden.shape[1]
        prompt_emb = self.speech_lm.prompt_embedding([text])  # (1, P)
        prompt_emb = prompt_emb.expand(batch, -1)  # (B, P)
        if getattr(self.gate, "placement", "fused") == "layers":
            hidden = self.fusion.normalize(hidden)
            hidden, gate = self.gate(hidden, prompt_emb)  # (L+1, B, T, D)
            features, weights = self.fusion(
                hidden, prompt_emb, normalized=True
            )  # (B, T, D)
        else:
            fused, weights = self.fusion(hidden, prompt_emb)  # (B, T, D)
            features, gate = self.gate(fused, prompt_emb)  # (B, T, D)
        speech, speech_lens = self.projector(features, lens)  # (B, T', E)
        abs_lens = torch.round(speech_lens * speech.shape[1]).long()
        return {
            "speech": speech,
            "speech_lens": abs_lens,
            "prompt_ids": self.speech_lm.prompt_ids([text]) * batch,
            "prompt_emb": prompt_emb,
            "fusion_weights": weights,
            "gate": gate,
            "features": features,
            "lens": lens,
        }

    def forward(self, **inputs):
        """Training forward of the tasks present in a batch.

        One call covers a whole batch (every part in the ``mixed``
        schedule), so a DDP wrapper sees exactly one forward per step.

        Arguments
        ---------
        **inputs : tuple
            Task name -> ``(wavs, wav_lens, targets)`` of that task's batch
            part; ``targets`` are the transcripts of a transcription task
            (a classification task ignores them and may leave them out).

        Returns
        -------
        dict
            Task name -> the task's ``forward`` output plus ``feats``
            (transcription: ``asr_forward``'s; classification: ``logits``
            (B, K)), in the order of ``tasks``.
        """
        unknown = sorted(set(inputs) - set(self.tasks))
        if unknown:
            raise ValueError(
                f"HarmoniFuse.forward: unknown tasks {unknown}; the model "
                f"has {list(self.tasks)}."
            )
        out = {}
        for name, task in self.tasks.items():
            if name not in inputs:
                continue
            wavs, wav_lens, *targets = inputs[name]
            feats = self.task_features(
                *self.encode_speech(wavs, wav_lens), name
            )
            out[name] = dict(task.forward(self, feats, *targets), feats=feats)
        return out

    def asr_forward(self, feats, transcripts):
        """Teacher-forced ASR: token cross-entropy and CTC log-probs.

        Arguments
        ---------
        feats : dict
            Output of ``task_features`` for a transcription task.
        transcripts : list of str
            Reference transcripts.

        Returns
        -------
        dict
            ``loss`` (token cross-entropy), ``ctc_logp`` (B, T, C+1) and
            ``ctc_targets`` (character indices) or None.
        """
        tokens = self.speech_lm.tokenize(transcripts)
        for text, seq in zip(transcripts, tokens):
            if not seq:
                raise ValueError(f"Empty transcript: {text!r}.")
        out = self.speech_lm(
            feats["prompt_ids"],
            feats["speech"],
            feats["speech_lens"],
            [seq + [self.speech_lm.eos_id] for seq in tokens],
        )
        ctc_logp = ctc_targets = None
        if self.ctc_head is not None:
            ctc_logp = self._ctc_logits(feats["features"]).log_softmax(-1)
            ctc_targets = self.ctc_targets(transcripts)
        return {
            "loss": out["loss"],
            "ctc_logp": ctc_logp,
            "ctc_targets": ctc_targets,
        }

    def ctc_log_probs(self, feats):
        """Log-probabilities of the CTC head over its alphabet and blank.

        Arguments
        ---------
        feats : dict
            Output of ``task_features(..., "asr")``.

        Returns
        -------
        logp : torch.Tensor
            (B, T, C+1) log-probabilities, the blank last.
        lens : torch.Tensor
            (B,) valid frames.
        """
        logits = self._ctc_logits(feats["features"])  # (B, k T, C+1)
        logp = logits.float().log_softmax(-1)
        lens = torch.round(feats["lens"] * logits.shape[1]).long()
        return logp, lens

    def _ctc_logits(self, features):
        """(B, T, D) encoder features -> (B, ctc_upsample x T, C+1) logits;
        the k outputs of frame t are CTC frames k t ... k t + k - 1.
        """
        logits = self.ctc_head(features)
        batch, frames, _ = logits.shape
        return logits.reshape(batch, frames * self.ctc_upsample, -1)

    def set_tokens_per_second(self, rate):
        """Sets the rate of length-aware decoding (e.g. a measured one)."""
        self.decode_tokens_per_second.fill_(float(rate))

    def transcribe(
        self,
        feats,
        max_new_tokens=None,
        num_beams=None,
        ctc_weight=None,
        ctc_top_k=None,
        durations=None,
    ):
        """Decodes transcripts with the KV cache, jointly with the CTC head
        when ``ctc_decode_weight`` (or ``ctc_weight``) is above 0.

        Arguments
        ---------
        feats : dict
            Output of ``task_features(..., "asr")``.
        max_new_tokens : int, optional
            Overrides the model's default.
        num_beams : int, optional
            Overrides the model's default.
        ctc_weight : float, optional
            Overrides ``ctc_decode_weight``.
        ctc_top_k : int, optional
            Overrides ``ctc_decode_top_k``.
        durations : torch.Tensor, optional
            (B,) audio durations in seconds: with ``length_cap``, each
            utterance's token cap follows its duration.

        Returns
        -------
        list of str
        """
        num_beams = num_beams or self.num_beams
        if ctc_weight is None:
            ctc_weight = self.ctc_decode_weight
        kwargs = {}
        if ctc_weight > 0:
            if self.ctc_head is None:
                raise ValueError(
                    "Joint CTC decoding needs a CTC head: set ctc_alphabet."
                )
            logp, lens = self.ctc_log_probs(feats)
            scorer = CTCPrefixScorer(
                logp,
                lens,
                TokenCharacters.from_tokenizer(
                    self.speech_lm.tokenizer, self.ctc_alphabet
                ),
                eos_id=self.speech_lm.eos_id,
                ctc_weight=ctc_weight,
                top_k=ctc_top_k or self.ctc_decode_top_k,
                num_beams=num_beams,
            )
            kwargs["logits_processor"] = LogitsProcessorList([scorer])
        max_new_tokens = max_new_tokens or self.max_new_tokens
        guard = self._length_loop_guard(
            feats["speech"].shape[0], durations, max_new_tokens, num_beams
        )
        if guard is not None:
            processors = kwargs.setdefault("logits_processor", [])
            kwargs["logits_processor"] = LogitsProcessorList(
                [*processors, guard]
            )
            # The longest cap, plus the forced EOS, ends the batch.
            max_new_tokens = min(max_new_tokens, int(guard.caps.max()) + 1)
        ids = self.speech_lm.generate(
            feats["prompt_ids"],
            feats["speech"],
            feats["speech_lens"],
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            **kwargs,
        )
        if self.repetition_guard:
            ids = [trim_loop(seq, **self.repetition_guard) for seq in ids]
        return [" ".join(t.split()) for t in self.speech_lm.decode(ids)]

    def _length_loop_guard(self, batch, durations, max_new_tokens, num_beams):
        """The ``LengthLoopGuard`` of a batch of ``batch`` utterances, or
        None when neither the length cap (it needs ``durations``) nor the
        repetition guard is on.
        """
        capped = self.length_cap is not None and durations is not None
        if not capped and not self.repetition_guard:
            return None
        caps = torch.full((batch,), max_new_tokens)
        if capped:
            rate = float(self.decode_tokens_per_second)
            if math.isnan(rate):
                raise RuntimeError(
                    "Length-aware decoding has no tokens_per_second: give "
                    "one in the model's length_cap, or let train.py measure "
                    "it on the training transcripts."
                )
            margin = self.length_cap.get("margin", 0)
            caps = token_caps(durations, rate, margin, max_new_tokens)
        return LengthLoopGuard(
            caps, self.speech_lm.eos_id, num_beams, **self.repetition_guard
        )

    def classify(self, feats, task=None):
        """Class logits (B, K) of a classification task, with its head.

        Arguments
        ---------
        feats : dict
            Output of ``task_features(..., task)``.
        task : str, optional
            A classification task (default: the first).

        Returns
        -------
        torch.Tensor
            (B, K) logits in the order of the task's labels.
        """
        if task is None:
            task = first_of_kind(self.tasks, CLASSIFICATION).name
        spec = self.tasks[task]
        if spec.kind != CLASSIFICATION:
            raise ValueError(f"classify: task {task!r} is a {spec.kind}.")
        if spec.mode == "lm_scoring":
            return self.speech_lm.score_candidates(
                feats["prompt_ids"],
                feats["speech"],
                feats["speech_lens"],
                self.label_ids[task],
            )
        fuse = self.llm_fusion is not None and self.llm_fusion.mode != "last"
        out = self.speech_lm(
            feats["prompt_ids"],
            feats["speech"],
            feats["speech_lens"],
            layers=fuse,
        )
        key = "prefix_mean" if spec.pooling == "mean" else "prefix_hidden"
        head = self.heads[task]
        if fuse:
            states = out[key + "_layers"].unsqueeze(2)  # (N+1, B, 1, H)
            pooled, weights = self.llm_fusion(states, feats["prompt_emb"])
            feats["llm_fusion_weights"] = weights  # (B, N+1)
            hidden = pooled.squeeze(1)  # (B, H)
        else:
            hidden = out[key]  # (B, H)
        return head(hidden.to(head[-1].weight.dtype))

    # The two-task name: logits of the first classification task.
    ser_logits = classify


def build_heads(tasks, speech_lm, heads=None):
    """The classifier heads of a model's classification tasks.

    Arguments
    ---------
    tasks : dict
        Name -> Task (bound).
    speech_lm : SpeechLM
        The LLM (its width; a SER head built into it by ``num_classes``,
        the two-task layout, is taken over as the ``ser`` head).
    heads : dict, optional
        Heads built already (see :func:`build_harmonifuse`).

    Returns
    -------
    torch.nn.ModuleDict
        Task name -> head, for tasks in ``classifier`` mode.

    Raises
    ------
    ValueError
        A given head's outputs do not match its task's labels.
    """
    heads = dict(heads or {})
    legacy = getattr(speech_lm, "ser_head", None)
    first = first_of_kind(tasks, CLASSIFICATION)
    if legacy is not None and first is not None and first.mode == "classifier":
        # The two-task layout: the SER head lives in the speech LM. (With
        # LM scoring it stays there unused, as the two-task code left it.)
        heads.setdefault(first.name, legacy)
        speech_lm.ser_head = None
    built = torch.nn.ModuleDict()
    for name, task in tasks.items():
        if task.kind != CLASSIFICATION or task.mode != "classifier":
            continue
        if name in heads:
            head = heads[name]
        else:
            head = task.build_head(speech_lm.hidden_size)
        if head[-1].out_features != len(task.labels):
            raise ValueError(
                f"HarmoniFuse: task {name} has {len(task.labels)} labels but "
                f"its head has {head[-1].out_features} outputs (num_classes"
                " of the SpeechLM?)."
            )
        built[name] = head
    return built


def build_harmonifuse(hparams):
    """Builds the model of a training YAML once its folders are prepared.

    ``speech_lm`` is a ``!name:`` (its folder is written by a preparation);
    ``encoder`` is either built (``!new:``) or a ``!name:`` too, e.g. a
    pre-trained ``ConformerSpeechEncoder(source=..., freeze=True)`` whose
    folder the data preparation writes. ``model`` is the ``!name:`` of
    ``HarmoniFuse`` with the other parts.

    Arguments
    ---------
    hparams : dict
        The loaded training YAML.

    Returns
    -------
    HarmoniFuse
    """
    speech_lm = hparams["speech_lm"]()
    parts = {"speech_lm": speech_lm}
    tasks = hparams.get("tasks")
    if tasks is not None:
        # The heads draw their initial weights here, right after the LLM's,
        # where the two-task code drew the SER head's (inside SpeechLM).
        parts["heads"] = build_heads(bind_tasks(tasks), speech_lm)
    encoder = hparams.get("encoder")
    if encoder is not None and not isinstance(encoder, torch.nn.Module):
        parts["encoder"] = encoder()
    return hparams["model"](**parts)
