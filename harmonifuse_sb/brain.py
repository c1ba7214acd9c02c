"""HarmoniFuseBrain: batch-interleaved multi-task training of N tasks.

The tasks are the YAML's ``tasks:`` (``harmonifuse_sb.tasks``; the model
holds them): each owns its loss, metrics and share of the checkpoint key,
and this class loops over them. Each batch belongs to one task (or to
several, for the ``mixed`` ablation), as
the interleaver (``harmonifuse_sb.interleaving``) decides. SpeechBrain's own
``fit_batch`` runs unchanged (precision and autocast, GradScaler, gradient
accumulation, ``no_sync`` under DDP, non-finite loss patience); this class
supplies the task-aware ``compute_forward`` and ``compute_objectives``, per-task
loss logging, the metrics, and an ``optimizers_step`` that clips the gradients
of every parameter group (SpeechBrain 1.1.2 clips only the first group of each
optimiser).

Authors
 * HarmoniFuse-SB developers 2026
"""

import logging
import math
import os
import re

import speechbrain as sb
import torch
import yaml
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import main_process_only

from harmonifuse_sb.dataio import SAMPLE_RATE
from harmonifuse_sb.interleaving import merge_shards
from harmonifuse_sb.metrics import checkpoint_key
from harmonifuse_sb.tasks import TRANSCRIPTION, combined_key

logger = logging.getLogger(__name__)

# The options of a parameter group that come from the YAML's param_groups
# and must not come back from a checkpoint (the lr follows the scheduler).
GROUP_OPTIONS = ("lr_scale", "weight_decay")


def all_gather_objects(obj):
    """Every rank's ``obj``, in rank order (``[obj]`` outside DDP).

    Arguments
    ---------
    obj : object
        Anything picklable.

    Returns
    -------
    list
        One entry per rank.

    Example
    -------
    >>> all_gather_objects({"a": 1})
    [{'a': 1}]
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def frame_mask(rel_lens, frames):
    """Valid frames of a batch from relative lengths.

    Arguments
    ---------
    rel_lens : torch.Tensor
        (B,) relative lengths in (0, 1].
    frames : int
        Padded number of frames T.

    Returns
    -------
    torch.Tensor
        (B, T) booleans.

    Example
    -------
    >>> frame_mask(torch.tensor([1.0, 0.5]), 4).int().tolist()
    [[1, 1, 1, 1], [1, 1, 0, 0]]
    """
    valid = torch.round(rel_lens * frames).long()  # (B,)
    steps = torch.arange(frames, device=rel_lens.device)
    return steps[None, :] < valid[:, None]


@torch.no_grad()
def gate_counts(gate, mask):
    """Sum of the gate values, how many are below 0.5, and how many there
    are, over the valid frames (every layer and channel).

    Arguments
    ---------
    gate : torch.Tensor
        (B, T, D) or (L+1, B, T, D) gate values.
    mask : torch.Tensor
        (B, T) booleans.

    Returns
    -------
    tuple of float
        ``(sum, closed, count)``.

    Example
    -------
    >>> g = torch.tensor([[[0.2, 0.9], [0.4, 0.1]]])  # (B=1, T=2, D=2)
    >>> gate_counts(g, torch.tensor([[True, False]]))
    (1.1, 1.0, 2.0)
    """
    weights = mask.to(torch.float32).unsqueeze(-1)  # (B, T, 1)
    if gate.dim() == 4:
        weights = weights.unsqueeze(0)  # (1, B, T, 1)
    weights = weights.expand_as(gate)
    return (
        round(float((gate.float() * weights).sum()), 6),
        float(((gate < 0.5) * weights).sum()),
        float(weights.sum()),
    )


@register_checkpoint_hooks
class HarmoniFuseBrain(sb.Brain):
    """Trains a ``HarmoniFuse`` model (``modules.model``) on its tasks.

    The tasks are the model's ``tasks`` (``harmonifuse_sb.tasks``): each
    gives its batch part's targets, loss, loss weight, metrics and share of
    ``combined_error``. Hyperparameters read (``self.hparams``):
    ``room_augment`` then ``wav_augment`` (each optional: applied in
    that order to training batches, e.g. ``augment.UtteranceShare`` and a
    SpeechBrain ``Augmenter``), ``valid_decoding`` (optional:
    ``HarmoniFuse.transcribe`` arguments for validation, e.g.
    ``{num_beams: 1}``), ``checkpoint_keys`` (optional: the
    statistic that keeps and picks each task's checkpoint, see
    ``metrics.checkpoint_key``), ``param_groups`` (optional: named optimiser
    groups, see ``param_groups``), ``epoch_counter``,
    ``train_logger``, ``lr_scheduler`` (stepped each optimiser step, or
    None), ``error_rate_computer``, ``cer_computer``, ``output_folder``,
    and optionally ``valid_search_interval`` (default 1).

    **The gate.** Each task's loss includes the gate's budget term
    (``TaskGate.penalty``: zero unless the YAML gives the gate a
    ``sparsity_weight``). Validation and test log, per task, the mean gate
    value over the valid frames (``gate_mean_<task>``) and the share of
    gate values below 0.5 (``gate_closed_<task>``); the test statistics,
    and so ``test_results.json``, hold them too.

    **Evaluation under DDP.** Validation and test loaders are sharded by
    ``make_eval_loader`` (each rank evaluates every W-th batch). Each rank
    keeps its per-batch results (loss, per-task losses, the metrics'
    per-utterance entries); ``on_stage_end`` gathers them from all ranks and
    puts them back in the single-process order (``merge_shards``), so the
    statistics, the checkpoint key and the written reports are exactly
    those of one process. Stage losses are exact means (``math.fsum``), so
    they too do not depend on how the batches were split. Evaluation runs
    the model unwrapped from DDP: its forward needs no collective, and
    ranks may have different numbers of batches.

    **valid_search_interval.** Autoregressive decoding of the validation
    set runs every ``valid_search_interval`` epochs and at the last epoch
    (as in SpeechBrain's transformer recipes); in the epochs between, ASR
    batches give the teacher-forced loss and, with a CTC head, the WER and
    CER of CTC greedy decoding, logged as ``CTC_WER`` and ``CTC_CER``. Those
    epochs' checkpoints carry no ``WER`` or ``combined_error`` (a CTC WER
    is not comparable with an LLM WER), so they are never chosen as ASR's
    best checkpoint (they have SER's ``UA``); the most recent is kept for
    resumption. Tests always decode.

    Batches are ``MultiTaskBatch`` objects with one part per task present;
    each part carries ``sig`` and its task's targets (``wrd_norm`` for a
    transcription, ``<label_key>_encoded`` for a classification).
    """

    @property
    def raw_model(self):
        """The HarmoniFuse module, unwrapped from DDP if needed."""
        model = self.modules.model
        return model.module if hasattr(model, "module") else model

    @property
    def tasks(self):
        """Task name -> ``harmonifuse_sb.tasks.Task``: the model's tasks."""
        return self.raw_model.tasks

    def compute_forward(self, batch, stage):
        """Runs the model on the task part(s) of the batch.

        Arguments
        ---------
        batch : MultiTaskBatch
            One task's batch, or both tasks' (mixed schedule).
        stage : sb.Stage
            TRAIN, VALID or TEST.

        Returns
        -------
        dict
            Per task, what ``HarmoniFuse.forward`` returned; in VALID and
            TEST, transcription outputs also hold the decoded ``hyps``.
        """
        batch = batch.to(self.device)
        inputs = {}
        for name, task in self.tasks.items():  # the model's task order
            part = batch.parts.get(name)
            if part is not None:
                wavs, wav_lens = self._augment(part.sig, stage)
                inputs[name] = (wavs, wav_lens, task.targets(part))
        if stage == sb.Stage.TRAIN:
            # Through the (possibly DDP-wrapped) module: one forward per step.
            out = self.modules.model(**inputs)
        else:
            # Unwrapped: DDP's forward may sync buffers across ranks, and
            # the ranks' evaluation shards can differ in length.
            out = self.raw_model(**inputs)
        search = getattr(self, "full_search", True)
        if stage == sb.Stage.TRAIN or not search:
            return out
        # Validation may decode more cheaply than the test (e.g. greedy
        # instead of a beam): ``valid_decoding`` holds the overrides.
        options = {}
        if stage == sb.Stage.VALID:
            options = getattr(self.hparams, "valid_decoding", None) or {}
        for name, task_out in out.items():
            if self.tasks[name].kind != TRANSCRIPTION:
                continue
            wavs, wav_lens = inputs[name][:2]
            with torch.no_grad():
                task_out["hyps"] = self.raw_model.transcribe(
                    task_out["feats"],
                    durations=wav_lens * wavs.shape[1] / SAMPLE_RATE,
                    **options,
                )
        return out

    def _augment(self, sig, stage):
        """Applies the YAML's ``room_augment`` and ``wav_augment`` (each
        optional, in that order) to a training batch, as SpeechBrain recipes
        do; validation and test see the audio as it is.

        Arguments
        ---------
        sig : PaddedData
            Waveforms (B, N) and relative lengths (B,).
        stage : sb.Stage
            TRAIN, VALID or TEST.

        Returns
        -------
        wavs : torch.Tensor
            (B, N') waveforms.
        wav_lens : torch.Tensor
            (B,) relative lengths.
        """
        wavs, wav_lens = sig.data, sig.lengths
        if stage != sb.Stage.TRAIN:
            return wavs, wav_lens
        augments = (
            ("room_augment", getattr(self.hparams, "room_augment", None)),
            ("wav_augment", getattr(self.hparams, "wav_augment", None)),
        )
        for name, augment in augments:
            if augment is None:
                continue
            batch = wavs.shape[0]
            wavs, wav_lens = augment(wavs, wav_lens)
            if wavs.shape[0] != batch:
                raise ValueError(
                    f"{name} turned a batch of {batch} into "
                    f"{wavs.shape[0]} utterances; HarmoniFuseBrain keeps one "
                    "label per utterance: set concat_original: False, "
                    "parallel_augment: False and repeat_augment: 1 in the "
                    "Augmenter."
                )
        return wavs, wav_lens

    def compute_objectives(self, predictions, batch, stage):
        """Sums the losses of the tasks present and updates the metrics.

        Arguments
        ---------
        predictions : dict
            Output of ``compute_forward``.
        batch : MultiTaskBatch
            The batch.
        stage : sb.Stage
            TRAIN, VALID or TEST.

        Returns
        -------
        torch.Tensor
            The weighted loss.
        """
        losses = {}
        for name, out in predictions.items():
            task, part = self.tasks[name], batch.parts[name]
            losses[name] = task.loss(out, part, self.raw_model, self.device)
            if stage != sb.Stage.TRAIN:
                task.update_metrics(
                    self.metrics[name], out, part, self.raw_model
                )
        self.batch_task_losses = {t: v.item() for t, v in losses.items()}
        for task, value in self.batch_task_losses.items():
            total, count = self.task_losses.get(task, (0.0, 0))
            self.task_losses[task] = (total + value, count + 1)
        total = sum(
            self.tasks[task].loss_weight * value
            for task, value in losses.items()
        )
        gate = self.raw_model.gate
        self.batch_gate_stats = {}
        for task, out in predictions.items():
            feats = out["feats"]
            mask = frame_mask(feats["lens"], feats["gate"].shape[-2])
            total = total + gate.penalty(feats["gate"], mask, task)
            if stage != sb.Stage.TRAIN and gate.enabled:
                self.batch_gate_stats[task] = gate_counts(feats["gate"], mask)
        return total

    def init_optimizers(self):
        """One optimiser over the trainable parameters only.

        Frozen weights (a frozen encoder, the base LLM under LoRA) stay out
        of the optimiser, its state and its checkpoints. With the YAML's
        ``param_groups`` the parameters form named groups, each with its own
        learning rate and weight decay (:meth:`param_groups`). With the run
        option ``remove_vector_weight_decay``, vectors (biases, norms) of
        each group form a group of their own without weight decay, as in
        SpeechBrain. ``optimizers_step`` clips all groups with one norm.
        """
        if self.opt_class is None:
            return super().init_optimizers()
        params = [p for p in self.modules.parameters() if p.requires_grad]
        groups = self.param_groups(params)
        if self.remove_vector_weight_decay:
            if groups is params:  # no param_groups: one group
                groups = [{"params": params}]
            groups = [
                dict(group, params=kept, **extra)
                for group in groups
                for kept, extra in (
                    ([p for p in group["params"] if p.dim() > 1], {}),
                    (
                        [p for p in group["params"] if p.dim() <= 1],
                        {"weight_decay": 0.0},
                    ),
                )
                if kept
            ]
        self.optimizer = self.opt_class(groups)
        # A scheduler sets one lr for all groups; on_fit_batch_start scales
        # each group's by its ratio to the optimiser's own lr (the YAML lr).
        base = self.optimizer.defaults.get("lr")
        for group in self.optimizer.param_groups:
            group.setdefault("lr_scale", group["lr"] / base if base else 1.0)
        # A checkpoint's optimiser state holds each group's options as they
        # were when it was saved; the YAML's of this run replace them.
        self.group_options = [
            {key: group.get(key) for key in ("name", *GROUP_OPTIONS)}
            for group in self.optimizer.param_groups
        ]
        self.optimizer.register_load_state_dict_post_hook(
            self._restore_group_options
        )
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def _restore_group_options(self, optimizer):
        """Gives each group the YAML's options again after a recovery.

        ``optimizer.load_state_dict`` (checkpoint recovery) restores each
        parameter group's ``lr_scale`` and ``weight_decay`` as saved: a run
        resumed after ``param_groups.<group>.lr`` changed in the YAML kept
        the old ratios. Here the values computed from this run's YAML
        (:meth:`init_optimizers`) are put back, by group, and each change
        is logged.

        Arguments
        ---------
        optimizer : torch.optim.Optimizer
            The optimiser whose state was just loaded.
        """
        for i, (group, wanted) in enumerate(
            zip(optimizer.param_groups, self.group_options)
        ):
            name = wanted["name"] or f"group {i}"
            if group.get("name") != wanted["name"]:
                logger.warning(
                    f"param_groups: the checkpoint's group {i} is "
                    f"'{group.get('name')}', this run's '{name}'; it gets "
                    f"the options of '{name}'"
                )
            for key in GROUP_OPTIONS:
                value = wanted[key]
                if value is None or group.get(key) == value:
                    continue
                logger.warning(
                    f"param_groups: '{name}' {key} is {value} in the YAML, "
                    f"{group.get(key)} in the checkpoint: the YAML's is used"
                )
                group[key] = value

    def param_groups(self, params):
        """Splits the trainable parameters into the YAML's ``param_groups``.

        ``param_groups`` maps a group name to ``match`` (a regular
        expression searched in the parameter's name in the model, e.g.
        ``speech_lm.model.base_model.model.model.layers.0.self_attn.q_proj
        .lora_A.default.weight``) and optimiser options (``lr``,
        ``weight_decay``, ...). A parameter joins the first group that
        matches it; groups that match nothing (e.g. the encoder's while it
        is frozen) are left out. Without ``param_groups``: ``params`` as
        given (an ``opt_class`` may split them itself).

        Arguments
        ---------
        params : list of torch.nn.Parameter
            The trainable parameters.

        Returns
        -------
        list of dict
            Optimiser parameter groups, each with its ``name`` (or
            ``params`` itself, without ``param_groups``).

        Raises
        ------
        ValueError
            A trainable parameter that no group matches (named), or a group
            without ``match``.
        """
        # A Brain built without hparams has no self.hparams at all.
        hparams = getattr(self, "hparams", None)
        specs = getattr(hparams, "param_groups", None)
        if not specs:
            return params
        names = {id(p): n for n, p in self.raw_model.named_parameters()}
        members = {name: [] for name in specs}
        unmatched = []
        for param in params:
            name = names.get(id(param), "<outside modules.model>")
            for group, spec in specs.items():
                if "match" not in spec:
                    raise ValueError(
                        f"param_groups: group '{group}' has no 'match' (a "
                        "regular expression on parameter names)."
                    )
                if re.search(spec["match"], name):
                    members[group].append(param)
                    break
            else:
                unmatched.append(name)
        if unmatched:
            raise ValueError(
                f"param_groups: no group matches {len(unmatched)} trainable "
                f"parameters, e.g. {unmatched[:3]}: widen a group's 'match' "
                "or add a group for them in the YAML."
            )
        groups = []
        for group, spec in specs.items():
            if not members[group]:
                logger.info(
                    f"param_groups: '{group}' matches no trainable "
                    "parameter; left out"
                )
                continue
            options = {k: v for k, v in spec.items() if k != "match"}
            groups.append({"params": members[group], "name": group, **options})
        return groups

    def optimizers_step(self):
        """SpeechBrain's step, clipping every parameter group.

        SpeechBrain 1.1.2 clips ``param_groups[0]`` of each optimiser only;
        with several groups (e.g. ``remove_vector_weight_decay``) the others
        were never clipped. Here one norm covers all groups of an optimiser.
        """
        valid_optimizers = self.freeze_optimizers(self.optimizers_dict)
        for opt in valid_optimizers.values():
            self.scaler.unscale_(opt)
        for opt in valid_optimizers.values():
            params = [p for g in opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        if not self.scaler.is_enabled() and self.skip_nonfinite_grads:
            self.check_gradients()
        for opt in valid_optimizers.values():
            self.scaler.step(opt)
        self.scaler.update()
        for opt in valid_optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.optimizer_step += 1

    def on_fit_start(self):
        """SpeechBrain's start of training (optimisers, resume).

        Training changes the weights: afterwards they are those at the end
        of training, no longer a checkpoint loaded before (what
        :meth:`evaluate_set` records when no checkpoint has its key).
        """
        super().on_fit_start()
        self.loaded_checkpoint = None

    def on_fit_batch_start(self, batch, should_step):
        """Sets this update's learning rate from the per-update schedule.

        Stepping before the update (not after, as SpeechBrain recipes do)
        makes the first update use the schedule's first value rather than
        the optimiser's initial (peak) learning rate.
        """
        scheduler = getattr(self.hparams, "lr_scheduler", None)
        if should_step and scheduler is not None:
            scheduler(self.optimizer)
            # SpeechBrain's schedulers give every group the same lr.
            for group in self.optimizer.param_groups:
                group["lr"] *= group.get("lr_scale", 1.0)

    @mark_as_saver
    def _save(self, path):
        """SpeechBrain's brain state plus the running per-task losses."""
        super()._save(path)
        with open(path, "a", encoding="utf-8") as w:
            running = getattr(self, "task_losses", {})
            losses = {t: list(v) for t, v in running.items()}
            w.write(yaml.safe_dump({"task_losses": losses}))

    @mark_as_loader
    def _recover(self, path, end_of_epoch):
        """Restores the brain state and the per-task losses of the epoch."""
        super()._recover(path, end_of_epoch)
        with open(path, encoding="utf-8") as f:
            saved = yaml.safe_load(f).get("task_losses", {})
        self.task_losses = {t: tuple(v) for t, v in saved.items()}

    def on_stage_start(self, stage, epoch=None):
        """Resets per-task losses and builds the metrics.

        A training stage that resumes mid-epoch (``self.step > 0``) keeps
        the losses restored from the checkpoint, so the logged per-task
        averages cover the whole epoch. A validation stage decodes
        autoregressively only on search epochs (``valid_search_interval``).
        """
        if stage != sb.Stage.TRAIN or self.step == 0:
            self.task_losses = {}
        self.full_search = True
        if stage != sb.Stage.TRAIN:
            self.metrics = {
                name: task.make_metrics(self.hparams)
                for name, task in self.tasks.items()
            }
            self.eval_results = []  # per batch, this rank's shard
        if stage == sb.Stage.VALID:
            self.full_search = self._is_search_epoch(epoch)

    def _is_search_epoch(self, epoch):
        """Whether validation decodes in this epoch: every
        ``valid_search_interval`` epochs, and at the last one.
        """
        interval = getattr(self.hparams, "valid_search_interval", 1)
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(
                f"valid_search_interval must be an integer >= 1, got "
                f"{interval!r} (1: decode at every validation)."
            )
        if epoch is None:
            return True
        return (
            epoch % interval == 0 or epoch >= self.hparams.epoch_counter.limit
        )

    def evaluate_batch(self, batch, stage):
        """SpeechBrain's evaluation step, keeping this batch's results.

        Arguments
        ---------
        batch : MultiTaskBatch
            A validation or test batch.
        stage : sb.Stage
            VALID or TEST.

        Returns
        -------
        torch.Tensor
            The detached loss.
        """
        sizes = {
            (task, name): len(metric.ids)
            for task, metrics in self.metrics.items()
            for name, metric in metrics.items()
        }
        loss = super().evaluate_batch(batch, stage)
        result = {
            "loss": float(loss),
            "task_losses": dict(self.batch_task_losses),
            "gate": dict(self.batch_gate_stats),
            "metrics": {},
        }
        # What each metric stores per utterance (the task's metric_fields):
        # this batch's entries, gathered across ranks at the stage's end.
        for (task, name), size in sizes.items():
            metric = self.metrics[task][name]
            fields = self.tasks[task].metric_fields[name]
            result["metrics"][task, name] = {
                field: getattr(metric, field)[size:] for field in fields
            }
        self.eval_results.append(result)
        return loss

    def _gather_eval_results(self):
        """Gathers every rank's batch results and rebuilds the metrics.

        Afterwards the metrics, ``task_losses`` and the returned loss are
        those of a single process that evaluated all batches in order.

        Returns
        -------
        float
            The stage loss: the exact mean of the batch losses.
        """
        shards = all_gather_objects(self.eval_results)
        results = merge_shards(shards)
        if len(shards) > 1:
            logger.info(
                f"Evaluation: {len(results)} batches from {len(shards)} "
                f"processes (per process: {[len(s) for s in shards]})"
            )
        self.eval_results = results
        for task, metrics in self.metrics.items():
            for name, metric in metrics.items():
                metric.clear()
                for field in self.tasks[task].metric_fields[name]:
                    setattr(metric, field, [])
                    for result in results:
                        getattr(metric, field).extend(
                            result["metrics"][task, name][field]
                        )
        per_task = {}
        for result in results:
            for task, value in result["task_losses"].items():
                per_task.setdefault(task, []).append(value)
        self.task_losses = {
            task: (math.fsum(values), len(values))
            for task, values in per_task.items()
        }
        gates = {}
        for result in results:
            for task, counts in result.get("gate", {}).items():
                gates.setdefault(task, []).append(counts)
        self.gate_stats = {
            task: [math.fsum(column) for column in zip(*counts)]
            for task, counts in gates.items()
        }
        if not results:
            return 0.0
        return math.fsum(r["loss"] for r in results) / len(results)

    def _stage_stats(self, stage, stage_loss):
        stats = {"loss": stage_loss}
        for task, (total, count) in sorted(self.task_losses.items()):
            stats[f"loss_{task}"] = total / count
        if stage == sb.Stage.TRAIN:
            return stats
        for task, (value_sum, closed, count) in sorted(
            getattr(self, "gate_stats", {}).items()
        ):
            stats[f"gate_mean_{task}"] = value_sum / max(count, 1)
            stats[f"gate_closed_{task}"] = closed / max(count, 1)
        for name, task in self.tasks.items():
            stats.update(task.summarize(self.metrics[name], self.full_search))
        transcribed = any(
            task.kind == TRANSCRIPTION and name in self.task_losses
            for name, task in self.tasks.items()
        )
        if not self.full_search and transcribed:
            # No LLM WER this epoch: no key, so never the best checkpoint.
            return stats
        key = combined_key(self.tasks, stats)
        if key is not None:
            stats["combined_error"] = key
        return stats

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs per-task losses and metrics; checkpoints on checkpoint_keys.

        In VALID and TEST, the results of all ranks are gathered first, so
        every rank logs, keys and writes one process's numbers.
        """
        if stage != sb.Stage.TRAIN:
            stage_loss = self._gather_eval_results()
        stats = self._stage_stats(stage, stage_loss)
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        if stage == sb.Stage.VALID:
            groups = self.optimizer.param_groups
            lrs = {f"lr_{g['name']}": g["lr"] for g in groups if "name" in g}
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": groups[0]["lr"], **lrs},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            # Each key of checkpoint_keys keeps its own best checkpoints,
            # so the epoch best for ASR is not deleted for SER's sake.
            selection = self.checkpoint_selection()
            self.checkpointer.save_and_keep_only(
                meta=dict(stats, epoch=epoch),
                min_keys=sorted(selection["min_key"]),
                max_keys=sorted(selection["max_key"]),
                num_to_keep=self.hparams.keep_checkpoints,
            )
        elif stage == sb.Stage.TEST:
            self.test_stats = stats
            self.hparams.train_logger.log_stats(
                stats_meta={
                    "Epoch loaded": self.hparams.epoch_counter.current,
                    "test set": self.test_set_name,
                },
                test_stats=stats,
            )
            self._write_test_reports()

    @main_process_only
    def _write_test_reports(self):
        folder = self.hparams.output_folder
        for name, task in self.tasks.items():
            for path in task.write_reports(
                self.metrics[name], folder, self.test_set_name
            ):
                logger.info(f"{name} report written to {path}")

    def checkpoint_selection(self):
        """The statistics that keep checkpoints, by direction.

        Those of ``checkpoint_keys`` (YAML; per task and ``export``), and
        ``combined_error`` when the YAML has none (one key for all).

        Returns
        -------
        dict
            ``{"min_key": set of str, "max_key": set of str}``.
        """
        keys = getattr(self.hparams, "checkpoint_keys", None)
        selection = {"min_key": set(), "max_key": set()}
        # The inference folder's checkpoint is kept too (export.py).
        for purpose in set(keys or {}) | {"export"}:
            ((mode, name),) = checkpoint_key(keys, purpose).items()
            selection[mode].add(name)
        return selection

    def evaluate_set(self, loader, name, task=None):
        """Tests on one named set with the task's best checkpoint.

        The checkpoint is the best by ``checkpoint_keys[task]`` (YAML;
        ``combined_error`` without it). Which one the tested weights are
        is kept in ``self.test_checkpoint``: when no checkpoint has the
        key, nothing is loaded (with a warning) and the weights in memory
        are tested, so it is the checkpoint loaded last (e.g. for an
        earlier test set), or None for the weights at the end of training.

        Arguments
        ---------
        loader : DataLoader
            Batches of ``MultiTaskBatch``.
        name : str
            Name of the set, used in report file names.
        task : str, optional
            The set's task (None: the ``combined_error`` checkpoint).

        Returns
        -------
        dict
            The test statistics.
        """
        self.test_set_name = name
        key = checkpoint_key(
            getattr(self.hparams, "checkpoint_keys", None), task
        )
        found = self.checkpointer.find_checkpoint(**key) is not None
        if not found:
            self._warn_no_checkpoint(f"test set {name} (task {task})", key)
        self.evaluate(loader, **key)  # loads the checkpoint found
        if found:
            self.loaded_checkpoint = self.describe_checkpoint(key)
        self.test_checkpoint = getattr(self, "loaded_checkpoint", None)
        return self.test_stats

    def recover_checkpoint(self, purpose):
        """Loads the best checkpoint for ``purpose`` (e.g. ``export``).

        Arguments
        ---------
        purpose : str or None
            A key of ``checkpoint_keys`` (YAML; None: ``combined_error``).

        Returns
        -------
        dict or None
            What the weights now are (:meth:`describe_checkpoint`): the
            checkpoint loaded, or without one that has the key (a warning
            says so) the one loaded before, or None (the end of training).
        """
        key = checkpoint_key(
            getattr(self.hparams, "checkpoint_keys", None), purpose
        )
        if self.checkpointer.recover_if_possible(**key) is None:
            self._warn_no_checkpoint(purpose or "combined_error", key)
        else:
            self.loaded_checkpoint = self.describe_checkpoint(key)
        return getattr(self, "loaded_checkpoint", None)

    def _warn_no_checkpoint(self, what, key):
        """Warns that no checkpoint has ``key``: the weights stay as they are."""
        ((mode, name),) = key.items()
        held = getattr(self, "loaded_checkpoint", None)
        weights = (
            f"those of the checkpoint loaded before (epoch {held['epoch']}, "
            f"best {held['key']}, {held['folder']})"
            if held
            else "those at the end of training"
        )
        logger.warning(
            f"{what}: no checkpoint in {self.checkpointer.checkpoints_dir} "
            f"has the {mode.split('_')[0]} key '{name}', so none is loaded; "
            f"the weights in memory are used: {weights}."
        )

    def describe_checkpoint(self, key):
        """Which checkpoint ``key`` selects: what a report should cite.

        Arguments
        ---------
        key : dict
            ``{"min_key": name}`` or ``{"max_key": name}``.

        Returns
        -------
        dict or None
            ``key``, ``mode``, ``value``, ``epoch`` and ``folder`` (the
            checkpoint folder's name); None without such a checkpoint
            (then the weights in memory were used).
        """
        ckpt = self.checkpointer.find_checkpoint(**key)
        if ckpt is None:
            return None
        ((mode, name),) = key.items()
        return {
            "key": name,
            "mode": mode.split("_")[0],
            "value": float(ckpt.meta[name]),
            "epoch": ckpt.meta.get("epoch"),
            "folder": os.path.basename(ckpt.path),
        }
