"""Tasks as data: what one task of the multi-task speech LM owns.

The fusion, the gate, the projector and the encoders are task-agnostic: they
see only the prompt embedding. What differs between tasks lives here, one
object per task, named by its key in the YAML's ``tasks:`` mapping:

- its manifests, data root, manifest keys and data pipeline;
- its prompt;
- its head, loss and loss weight, its batch size and interleaving ratio;
- its metrics, their names in the logs and its share of the checkpoint key;
- its decoding, its no-speech result, how long-form segments merge it and
  how the CLI, SRT/VTT and CSV outputs render it.

Two kinds exist: :class:`Transcription` (LLM text, an optional CTC head,
WER/CER) and :class:`Classification` (a label set, a classifier head or LM
scoring of the label words, UA/WA/macro-F1). Adding a task of either kind
is a YAML entry (after SALMONN's "tasks are data", Tang et al., ICLR 2024)::

    tasks:
        asr: !new:harmonifuse_sb.tasks.Transcription
            prompt: transcribe the speech
            train: !ref <data_folder>/asr_train.json
            ...
        ser: !new:harmonifuse_sb.tasks.Classification
            prompt: what emotion does the speaker express
            label_key: emo
            labels: [neutral, happy, sad, angry]
            ...

**Statistic names.** The first task of each kind logs its statistics under
their plain names (``WER``, ``UA``, ``loss_asr``), as the two-task model
always did; every further task of a kind adds ``_<name>`` (``UA_accent``).

Example
-------
>>> tasks = bind_tasks({
...     "asr": Transcription("transcribe the speech"),
...     "ser": Classification("what emotion", labels=["sad", "happy"]),
...     "accent": Classification("which accent", labels=["gb", "us"],
...                              label_key="accent"),
... })
>>> [(t.name, t.kind, t.stat("UA")) for t in tasks.values()]
[('asr', 'transcription', 'UA'), ('ser', 'classification', 'UA'), ('accent', 'classification', 'UA_accent')]

Authors
 * HarmoniFuse-SB developers 2026
"""

import os

import speechbrain as sb
import torch
import torch.nn.functional as F

from harmonifuse_sb.dataio import ManifestError, make_label_encoder
from harmonifuse_sb.metrics import PERCENT, EmotionStats

TRANSCRIPTION = "transcription"
CLASSIFICATION = "classification"
RESERVED_NAMES = ("mixed", "both")  # batch kinds and the CLI's "both"


class Task:
    """What every task has: prompt, data, batches, weights.

    Arguments
    ---------
    prompt : str
        The task prompt (its text embedding conditions fusion and gate).
    train : str or list of str, optional
        Training manifest(s) (SpeechBrain JSON). None: not trainable (an
        inference folder).
    valid : str, optional
        Validation manifest.
    test : dict, optional
        Test set name -> manifest.
    data_root : str
        Replaces ``{data_root}`` in the manifests' paths.
    batch_size : int, optional
        Training batch size (without ``dynamic_batching``).
    ratio : int
        Consecutive batches per interleaving pattern (0: not trained).
    loss_weight : float
        Weight of the task's loss.
    key_weight : float
        Weight of the task's error in ``combined_error``, the checkpoint
        key (the weights are normalised over the tasks validated).
    """

    kind = None

    def __init__(
        self,
        prompt,
        train=None,
        valid=None,
        test=None,
        data_root=".",
        batch_size=None,
        ratio=1,
        loss_weight=1.0,
        key_weight=1.0,
    ):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(
                f"{type(self).__name__}: prompt must be a non-empty text, "
                f"got {prompt!r}."
            )
        if not isinstance(ratio, int) or ratio < 0:
            raise ValueError(
                f"{type(self).__name__}: ratio must be an integer >= 0 "
                f"(batches per interleaving pattern), got {ratio!r}."
            )
        self.prompt = prompt
        self.train = train
        self.valid = valid
        self.test = dict(test or {})
        self.data_root = data_root
        self.batch_size = batch_size
        self.ratio = ratio
        self.loss_weight = loss_weight
        self.key_weight = key_weight
        self.name = None  # the key in ``tasks:``, set by bind_tasks
        self.suffix = ""

    def stat(self, name):
        """The logged name of one of this task's statistics.

        Arguments
        ---------
        name : str
            ``WER``, ``UA``, ...

        Returns
        -------
        str
            ``name`` for the first task of its kind, else ``name_<task>``.
        """
        return name + self.suffix

    @property
    def manifest_keys(self):
        """The keys every manifest entry of this task needs."""
        return ("wav", "duration")

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


class Transcription(Task):
    """A transcription task: the LLM writes the text.

    Arguments
    ---------
    prompt : str
        The task prompt.
    text_key : str
        The manifest key of the transcript.
    ctc_weight : float
        Weight of the CTC loss of the model's CTC head (``ctc_alphabet``)
        against the LLM's token cross-entropy (0: the LLM alone).
    **kwargs : dict
        See :class:`Task`.

    Example
    -------
    >>> task = Transcription("transcribe", ctc_weight=0.5)
    >>> task.manifest_keys
    ('wav', 'duration', 'wrd')
    >>> task.empty_result()
    {'transcript': ''}
    """

    kind = TRANSCRIPTION
    # The metrics' names, and what each stores per utterance: the lists
    # cut into per-batch pieces and gathered across ranks.
    metric_fields = {"wer": ("ids", "scores"), "cer": ("ids", "scores")}

    def __init__(self, prompt, text_key="wrd", ctc_weight=0.0, **kwargs):
        super().__init__(prompt, **kwargs)
        if not 0.0 <= ctc_weight <= 1.0:
            raise ValueError(
                f"Transcription: ctc_weight must be in [0, 1], got "
                f"{ctc_weight}."
            )
        self.text_key = text_key
        self.ctc_weight = ctc_weight

    @property
    def manifest_keys(self):
        """The keys every manifest entry of this task needs."""
        return ("wav", "duration", self.text_key)

    def add_pipeline(self, dataset):
        """Adds the transcript pipeline: ``wrd_norm``, whitespace-normalised.

        Arguments
        ---------
        dataset : DynamicItemDataset
            From ``dataio.load_manifest``.

        Returns
        -------
        list of str
            The output keys it adds.
        """

        def text_pipeline(utt_id, text):
            words = " ".join(str(text).split())
            if not words:
                raise ManifestError(
                    f"Utterance '{utt_id}' has an empty transcript "
                    f"({self.text_key!r})."
                )
            return words

        dataset.add_dynamic_item(
            text_pipeline, takes=["id", self.text_key], provides="wrd_norm"
        )
        return ["wrd_norm"]

    def targets(self, part):
        """The training targets of a batch part: its transcripts."""
        return part.wrd_norm

    def forward(self, model, feats, transcripts):
        """Teacher-forced loss and CTC log-probabilities (``asr_forward``)."""
        return model.asr_forward(feats, transcripts)

    def make_metrics(self, hparams):
        """Word and character error rates (the YAML's computers)."""
        return {
            "wer": hparams.error_rate_computer(),
            "cer": hparams.cer_computer(),
        }

    def loss(self, out, part, model, device):
        """Token cross-entropy, mixed with the CTC loss by ``ctc_weight``.

        Arguments
        ---------
        out : dict
            The model's output for this task (``loss``, ``ctc_logp``,
            ``ctc_targets``, ``feats``).
        part : PaddedBatch
            The batch part.
        model : HarmoniFuse
            The model (its CTC blank).
        device : str or torch.device
            Where the targets go.

        Returns
        -------
        torch.Tensor
        """
        loss = out["loss"]
        if self.ctc_weight > 0:
            if out["ctc_logp"] is None:
                raise ValueError(
                    f"Task {self.name}: ctc_weight > 0 but the model has no "
                    "CTC head: set ctc_alphabet in the model's YAML."
                )
            tokens = out["ctc_targets"]
            padded = torch.zeros(
                len(tokens), max(map(len, tokens)), dtype=torch.long
            )
            for i, seq in enumerate(tokens):
                padded[i, : len(seq)] = torch.tensor(seq)
            token_lens = (
                torch.tensor([len(s) for s in tokens]) / padded.shape[1]
            )
            ctc = sb.nnet.losses.ctc_loss(
                out["ctc_logp"].float(),
                padded.to(device),
                out["feats"]["lens"],
                token_lens.to(device),
                blank_index=model.ctc_blank,
            )
            loss = (1 - self.ctc_weight) * loss + self.ctc_weight * ctc
        return loss

    def update_metrics(self, metrics, out, part, model):
        """Scores the hypotheses (or, between searches, CTC greedy ones).

        Returns
        -------
        bool
            False when there is nothing to score (no search this epoch and
            no CTC head).
        """
        if "hyps" not in out:
            if out["ctc_logp"] is None:
                return False
            out["hyps"] = model.ctc_greedy_transcribe(
                out["ctc_logp"], out["feats"]["lens"]
            )
        refs = list(part.wrd_norm)
        metrics["wer"].append(
            part.id,
            [h.upper().split() for h in out["hyps"]],
            [w.upper().split() for w in refs],
        )
        metrics["cer"].append(
            part.id,
            [list(h.upper()) for h in out["hyps"]],
            [list(w.upper()) for w in refs],
        )
        return True

    def summarize(self, metrics, full_search=True):
        """``WER`` and ``CER`` (``CTC_`` before them between searches)."""
        if not metrics["wer"].scores:
            return {}
        prefix = "" if full_search else "CTC_"
        return {
            self.stat(f"{prefix}WER"): metrics["wer"].summarize("error_rate"),
            self.stat(f"{prefix}CER"): metrics["cer"].summarize("error_rate"),
        }

    def error(self, stats, weight=1.0):
        """The task's weighted share of the checkpoint key: WER / 100."""
        return weight * stats[self.stat("WER")] / PERCENT

    def write_reports(self, metrics, folder, set_name):
        """Writes the alignments: ``wer_<set>.txt``, ``cer_<set>.txt``."""
        paths = []
        if metrics["wer"].scores:
            for name in ("wer", "cer"):
                path = os.path.join(folder, f"{name}_{set_name}.txt")
                with open(path, "w", encoding="utf-8") as w:
                    metrics[name].write_stats(w)
                paths.append(path)
        return paths

    def report_line(self, stats):
        """The test line of a set of this task (``WER ... CER ...``)."""
        wer, cer = stats.get(self.stat("WER")), stats.get(self.stat("CER"))
        if wer is None:
            return ""
        return f"WER {wer:.2f}%  CER {cer:.2f}%"

    # ---- inference: decoding, no speech, long-form merge, rendering ----

    @property
    def result_key(self):
        """The key of the transcript in results: ``transcript`` (first
        transcription task) or ``transcript_<name>``.
        """
        return "transcript" + self.suffix

    def decode(self, model, feats, durations=None, **generate_kwargs):
        """Transcripts of a batch (``HarmoniFuse.transcribe``).

        Arguments
        ---------
        model : HarmoniFuse
            The model.
        feats : dict
            ``model.task_features(..., self.name)``.
        durations : torch.Tensor, optional
            (B,) seconds of audio (length-aware decoding).
        **generate_kwargs : dict
            ``max_new_tokens``, ``num_beams``, ... overriding the model's.

        Returns
        -------
        dict
            ``result_key`` -> list of str.
        """
        texts = model.transcribe(feats, durations=durations, **generate_kwargs)
        return {self.result_key: texts}

    def empty_batch(self, batch_size):
        """The batch values of ``batch_size`` items without speech."""
        return {self.result_key: [""] * batch_size}

    def empty_result(self):
        """What audio without speech gets."""
        return {self.result_key: ""}

    def item_result(self, out, index):
        """Item ``index``'s result from the batch values of ``decode``."""
        return {self.result_key: out[self.result_key][index]}

    def merge(self, segments):
        """A file's transcript: its segments' joined by spaces."""
        from harmonifuse_sb.longform import join_transcripts

        return {self.result_key: join_transcripts(segments, self.result_key)}

    def columns(self):
        """CSV columns of this task, before the probability columns."""
        return [self.result_key]

    def row(self, segment):
        """The CSV cells of this task in a segment."""
        return {self.result_key: segment.get(self.result_key, "")}

    def cue(self, segment):
        """The subtitle text of a segment: its transcript."""
        return segment.get(self.result_key, "")


class Classification(Task):
    """A classification task: one label per utterance.

    Arguments
    ---------
    prompt : str
        The task prompt.
    labels : list of str
        The classes, in the order of the head's outputs.
    label_key : str
        The manifest key of the label (``emo`` for emotions).
    mode : str
        ``"classifier"`` (a head on the LLM's hidden state) or
        ``"lm_scoring"`` (log-probability of each label word under the LM).
    pooling : str
        What the classifier reads: ``"last"`` the LLM's last hidden state
        before the response, or ``"mean"`` its mean over prompt and speech.
    label_words : dict, optional
        The word the LM scores for each label (``lm_scoring``; default the
        label itself).
    output : str, optional
        The label's key in inference results and outputs (``emotion``);
        default the task's name.
    **kwargs : dict
        See :class:`Task`.

    Example
    -------
    >>> task = Classification("emotion?", labels=["sad", "happy"])
    >>> task.manifest_keys, task.output_key
    (('wav', 'duration', 'emo'), 'emo_encoded')
    >>> head = task.build_head(8)
    >>> head(torch.zeros(3, 8)).shape
    torch.Size([3, 2])
    """

    kind = CLASSIFICATION
    metric_fields = {"cls": ("ids", "predictions", "targets")}
    MODES = ("classifier", "lm_scoring")
    POOLINGS = ("last", "mean")

    def __init__(
        self,
        prompt,
        labels,
        label_key="emo",
        mode="classifier",
        pooling="last",
        label_words=None,
        output=None,
        **kwargs,
    ):
        super().__init__(prompt, **kwargs)
        self._output = output
        labels = list(labels or [])
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(
                f"Classification: labels must be two or more distinct "
                f"names, got {labels!r}."
            )
        if mode not in self.MODES:
            raise ValueError(
                f"Classification: mode {mode!r} not in {self.MODES}."
            )
        if pooling not in self.POOLINGS:
            raise ValueError(
                f"Classification: pooling {pooling!r} not in {self.POOLINGS}."
            )
        self.labels = labels
        self.label_key = label_key
        self.mode = mode
        self.pooling = pooling
        self.label_words = dict(label_words or {})
        self.label_encoder = make_label_encoder(labels)

    @property
    def manifest_keys(self):
        """The keys every manifest entry of this task needs."""
        return ("wav", "duration", self.label_key)

    @property
    def output(self):
        """The label's key in inference results (default the task name)."""
        return self._output or self.name

    @property
    def output_key(self):
        """The batch key of the encoded labels."""
        return f"{self.label_key}_encoded"

    def build_head(self, hidden_size):
        """The classifier head: LayerNorm and a linear layer, or None in
        ``lm_scoring`` mode.

        Arguments
        ---------
        hidden_size : int
            The LLM's width.

        Returns
        -------
        torch.nn.Module or None
        """
        if self.mode != "classifier":
            return None
        return torch.nn.Sequential(
            torch.nn.LayerNorm(hidden_size),
            torch.nn.Linear(hidden_size, len(self.labels)),
        )

    def check_labels(self, dataset, path):
        """Fails early, naming the manifest, on a label outside ``labels``."""
        found = {str(e[self.label_key]) for e in dataset.data.values()}
        unknown = sorted(found - set(self.labels))
        if unknown:
            raise ManifestError(
                f"{path}: labels {unknown} ({self.label_key!r}) are not in "
                f"the task {self.name}'s labels {self.labels}; add them to "
                "its `labels` in the YAML or fix the manifest."
            )

    def add_pipeline(self, dataset):
        """Adds the label pipeline: ``<label_key>_encoded``, a class index.

        Arguments
        ---------
        dataset : DynamicItemDataset
            From ``dataio.load_manifest``.

        Returns
        -------
        list of str
            The output keys it adds.
        """

        def label_pipeline(utt_id, label):
            if label not in self.label_encoder.lab2ind:
                raise ManifestError(
                    f"Utterance '{utt_id}' has {self.label_key} '{label}', "
                    f"not one of {sorted(self.labels)} (set the task "
                    f"{self.name}'s labels in the YAML)."
                )
            return self.label_encoder.encode_label_torch(label)

        dataset.add_dynamic_item(
            label_pipeline,
            takes=["id", self.label_key],
            provides=self.output_key,
        )
        return [self.output_key]

    def targets(self, part):
        """The training targets of a batch part: class indices (B,)."""
        return getattr(part, self.output_key).data.view(-1)

    def forward(self, model, feats, targets=None):
        """Class logits (B, K) of this task."""
        del targets
        return {"logits": model.classify(feats, self.name)}

    def make_metrics(self, hparams):
        """UA, WA, macro-F1 and the confusion matrix."""
        del hparams
        return {"cls": EmotionStats(self.labels)}

    def loss(self, out, part, model, device):
        """Cross-entropy over the classes."""
        del model, device
        return F.cross_entropy(out["logits"].float(), self.targets(part))

    def update_metrics(self, metrics, out, part, model):
        """Scores the argmax class."""
        del model
        metrics["cls"].append(
            part.id, out["logits"].argmax(-1), self.targets(part)
        )
        return True

    def summarize(self, metrics, full_search=True):
        """``UA``, ``WA`` and ``macro_F1`` (fractions)."""
        del full_search
        if not metrics["cls"].ids:
            return {}
        stats = metrics["cls"].summarize()
        return {
            self.stat(name): stats[name] for name in ("UA", "WA", "macro_F1")
        }

    def error(self, stats, weight=1.0):
        """The task's weighted share of the checkpoint key: 1 - UA."""
        return weight * (1.0 - stats[self.stat("UA")])

    def write_reports(self, metrics, folder, set_name):
        """Writes the per-utterance report ``<task>_<set>.txt``."""
        if not metrics["cls"].ids:
            return []
        path = os.path.join(folder, f"{self.name}_{set_name}.txt")
        with open(path, "w", encoding="utf-8") as w:
            metrics["cls"].write_stats(w)
        return [path]

    def report_line(self, stats):
        """The test line of a set of this task (``UA ... WA ...``)."""
        ua = stats.get(self.stat("UA"))
        if ua is None:
            return ""
        return (
            f"UA {100 * ua:.2f}%  WA {100 * stats[self.stat('WA')]:.2f}%"
            f"  macro-F1 {100 * stats[self.stat('macro_F1')]:.2f}%"
        )

    # ---- inference: decoding, no speech, long-form merge, rendering ----

    @property
    def result_key(self):
        """The key of the label in results: ``output`` (e.g. ``emotion``)."""
        return self.output

    @property
    def probs_key(self):
        """The key of the class probabilities in results:
        ``probabilities`` (first classification task) or
        ``probabilities_<name>``.
        """
        return "probabilities" + self.suffix

    @property
    def batch_probs_key(self):
        """The key of the (B, K) probability tensor in batch values."""
        return "probs" + self.suffix

    def decode(self, model, feats, durations=None, **generate_kwargs):
        """Class probabilities and labels of a batch.

        Arguments
        ---------
        model : HarmoniFuse
            The model.
        feats : dict
            ``model.task_features(..., self.name)``.
        durations, **generate_kwargs
            Unused (transcription options).

        Returns
        -------
        dict
            ``batch_probs_key`` -> (B, K) tensor, ``result_key`` -> labels.
        """
        del durations, generate_kwargs
        logits = model.classify(feats, self.name)
        probs = logits.float().softmax(-1).cpu()  # (B, K)
        labels = [self.labels[i] for i in probs.argmax(-1).tolist()]
        return {self.batch_probs_key: probs, self.result_key: labels}

    def empty_batch(self, batch_size):
        """The batch values of items without speech: zero rows, no label."""
        return {
            self.batch_probs_key: torch.zeros(batch_size, len(self.labels)),
            self.result_key: [None] * batch_size,
        }

    def empty_result(self):
        """What audio without speech gets: no label, no probabilities."""
        return {self.result_key: None, self.probs_key: {}}

    def item_result(self, out, index):
        """Item ``index``'s label and probabilities (label -> p)."""
        label = out[self.result_key][index]
        probs = {}
        if label is not None:
            row = out[self.batch_probs_key][index]
            probs = {x: round(float(p), 6) for x, p in zip(self.labels, row)}
        return {self.result_key: label, self.probs_key: probs}

    def merge(self, segments):
        """A file's probabilities: the segments', weighted by duration; its
        label: the most probable.
        """
        from harmonifuse_sb.longform import mean_probabilities

        probs = mean_probabilities(segments, self.probs_key, self.labels)
        label = max(probs, key=probs.get) if probs else None
        return {self.result_key: label, self.probs_key: probs}

    def columns(self):
        """CSV columns of this task: the label, then ``p_<label>`` (first
        classification task) or ``p_<output>_<label>``.
        """
        return [self.result_key]

    def prob_columns(self):
        """The CSV probability columns, one per label."""
        prefix = "p_" if not self.suffix else f"p_{self.result_key}_"
        return [prefix + label for label in self.labels]

    def row(self, segment):
        """The CSV cells of this task in a segment."""
        probs = segment.get(self.probs_key) or {}
        row = {self.result_key: segment.get(self.result_key) or ""}
        for label, column in zip(self.labels, self.prob_columns()):
            row[column] = probs.get(label, "")
        return row

    def cue(self, segment):
        """The subtitle text of a segment: ``[label]``, or nothing."""
        label = segment.get(self.result_key)
        return f"[{label}]" if label else ""


def bind_tasks(tasks):
    """Names the tasks of a ``tasks:`` mapping and checks them.

    Sets each task's ``name`` (its key) and ``suffix`` (empty for the first
    task of each kind, ``_<name>`` for the others). Idempotent.

    Arguments
    ---------
    tasks : dict
        Name -> :class:`Task`, in order.

    Returns
    -------
    dict
        The same mapping.

    Raises
    ------
    ValueError
        An empty mapping, a value that is not a task, a reserved name, or a
        task bound under two names.

    Example
    -------
    >>> bind_tasks({"mixed": Transcription("x")})
    Traceback (most recent call last):
    ...
    ValueError: tasks: 'mixed' is reserved (a batch of several tasks); rename the task.
    """
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(
            "tasks: expected a mapping of task name -> !new:harmonifuse_sb."
            f"tasks.Transcription / Classification, got {tasks!r}."
        )
    seen_kinds = set()
    for name, task in tasks.items():
        if not isinstance(task, Task):
            raise ValueError(
                f"tasks: {name!r} is {type(task).__name__}, not a "
                "harmonifuse_sb.tasks.Transcription or Classification."
            )
        if name in RESERVED_NAMES or not str(name).isidentifier():
            raise ValueError(
                f"tasks: {name!r} is reserved (a batch of several tasks); "
                "rename the task."
                if name in RESERVED_NAMES
                else f"tasks: {name!r} is not a valid task name (letters, "
                "digits and _)."
            )
        if task.name not in (None, name):
            raise ValueError(
                f"tasks: one task object is named both {task.name!r} and "
                f"{name!r}; give each entry its own !new:."
            )
        task.name = name
        task.suffix = "" if task.kind not in seen_kinds else f"_{name}"
        seen_kinds.add(task.kind)
    keys = [t.result_key for t in tasks.values()]
    clashes = sorted({k for k in keys if keys.count(k) > 1})
    if clashes:
        raise ValueError(
            f"tasks: two tasks write the result key(s) {clashes}; give the "
            "classification tasks different `output` names."
        )
    return tasks


def default_tasks(
    prompts, labels, mode="classifier", pooling="last", label_words=None
):
    """The two tasks of the original model: ``asr`` and ``ser``.

    What an exported model of the two-task code (``prompts``, ``emotions``,
    ``ser_mode``, ``ser_pooling`` arguments) becomes.

    Arguments
    ---------
    prompts : dict
        ``asr`` and ``ser`` prompt texts.
    labels : list of str
        The emotions.
    mode : str
        The SER head (``classifier`` or ``lm_scoring``).
    pooling : str
        The SER classifier's pooling.
    label_words : dict, optional
        LM-scored words of the labels.

    Returns
    -------
    dict
        Bound ``{"asr": Transcription, "ser": Classification}``.

    Example
    -------
    >>> tasks = default_tasks({"asr": "a", "ser": "b"}, ["x", "y"])
    >>> tasks["ser"].labels, tasks["asr"].prompt
    (['x', 'y'], 'a')
    """
    missing = [t for t in ("asr", "ser") if t not in (prompts or {})]
    if missing:
        raise ValueError(f"HarmoniFuse: no prompt for tasks {missing}.")
    return bind_tasks(
        {
            "asr": Transcription(prompts["asr"]),
            "ser": Classification(
                prompts["ser"],
                labels=labels,
                mode=mode,
                pooling=pooling,
                label_words=label_words,
                output="emotion",
            ),
        }
    )


def first_of_kind(tasks, kind):
    """The first task of a kind, or None.

    Arguments
    ---------
    tasks : dict
        Name -> Task.
    kind : str
        ``"transcription"`` or ``"classification"``.

    Returns
    -------
    Task or None

    Example
    -------
    >>> tasks = default_tasks({"asr": "a", "ser": "b"}, ["x", "y"])
    >>> first_of_kind(tasks, CLASSIFICATION).name
    'ser'
    """
    return next((t for t in tasks.values() if t.kind == kind), None)


def combined_key(tasks, stats):
    """The checkpoint key: the tasks' errors, weighted by ``key_weight``.

    ``sum_t w_t e_t / sum_t w_t`` over the tasks that have statistics in
    ``stats``, where ``e_t`` is WER / 100 (transcription) or 1 - UA
    (classification); one task alone gives its error unweighted. With the
    two-task YAML's weights (``asr_weight_in_key`` and its complement) this
    is ``metrics.combined_error``.

    Arguments
    ---------
    tasks : dict
        Name -> Task.
    stats : dict
        Validation statistics.

    Returns
    -------
    float or None
        None when no task has statistics.

    Example
    -------
    >>> tasks = default_tasks({"asr": "a", "ser": "b"}, ["x", "y"])
    >>> tasks["asr"].key_weight = tasks["ser"].key_weight = 0.5
    >>> combined_key(tasks, {"WER": 25.0, "UA": 0.5})
    0.375
    """
    scored = [
        t
        for t in tasks.values()
        if t.stat("WER" if t.kind == TRANSCRIPTION else "UA") in stats
    ]
    if not scored:
        return None
    if len(scored) == 1:
        return scored[0].error(stats)
    total = sum(t.error(stats, t.key_weight) for t in scored)
    weights = sum(t.key_weight for t in scored)
    if weights <= 0:
        raise ValueError(
            f"tasks: the key_weight of {[t.name for t in scored]} sum to "
            f"{weights}; give at least one a weight > 0."
        )
    return float(total / weights)
