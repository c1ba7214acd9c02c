"""HarmoniFuseBrain: batch-interleaved multi-task training of ASR and SER.

Each batch belongs to one task (or to both, for the ``mixed`` ablation), as
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
import os

import speechbrain as sb
import torch
import torch.nn.functional as F
import yaml
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import main_process_only

from harmonifuse_sb.metrics import EmotionStats, combined_error

logger = logging.getLogger(__name__)


@register_checkpoint_hooks
class HarmoniFuseBrain(sb.Brain):
    """Trains a ``HarmoniFuse`` model (``modules.model``) on ASR and SER.

    Hyperparameters read (``self.hparams``): ``ctc_weight``, ``task_weights``
    (dict with ``asr`` and ``ser``), ``asr_weight_in_key`` (weight of WER in
    the combined checkpoint key), ``emotions``, ``epoch_counter``,
    ``train_logger``, ``lr_scheduler`` (stepped each optimiser step, or
    None), ``error_rate_computer``, ``cer_computer``, ``output_folder``.

    Batches are ``MultiTaskBatch`` objects whose ``asr`` part carries ``sig``
    and ``wrd_norm`` and whose ``ser`` part carries ``sig`` and
    ``emo_encoded``.
    """

    @property
    def raw_model(self):
        """The HarmoniFuse module, unwrapped from DDP if needed."""
        model = self.modules.model
        return model.module if hasattr(model, "module") else model

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
            TEST, ASR outputs also hold the decoded ``hyps``.
        """
        batch = batch.to(self.device)
        inputs = {}
        if batch.asr is not None:
            sig = batch.asr.sig
            inputs["asr"] = (sig.data, sig.lengths, batch.asr.wrd_norm)
        if batch.ser is not None:
            inputs["ser"] = (batch.ser.sig.data, batch.ser.sig.lengths)
        # Through the (possibly DDP-wrapped) module: one forward per step.
        out = self.modules.model(**inputs)
        if stage != sb.Stage.TRAIN and "asr" in out:
            with torch.no_grad():
                out["asr"]["hyps"] = self.raw_model.transcribe(
                    out["asr"]["feats"]
                )
        return out

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
        if "asr" in predictions:
            losses["asr"] = self._asr_loss(predictions["asr"], batch.asr, stage)
        if "ser" in predictions:
            losses["ser"] = self._ser_loss(predictions["ser"], batch.ser, stage)
        weights = self.hparams.task_weights
        for task, value in losses.items():
            total, count = self.task_losses.get(task, (0.0, 0))
            self.task_losses[task] = (total + value.item(), count + 1)
        return sum(weights[task] * value for task, value in losses.items())

    def _asr_loss(self, out, part, stage):
        loss = out["loss"]
        ctc_weight = self.hparams.ctc_weight
        if ctc_weight > 0:
            if out["ctc_logp"] is None:
                raise ValueError(
                    "ctc_weight > 0 but the model has no CTC head: set "
                    "ctc_alphabet in the model's YAML."
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
                padded.to(self.device),
                out["feats"]["lens"],
                token_lens.to(self.device),
                blank_index=self.raw_model.ctc_blank,
            )
            loss = (1 - ctc_weight) * loss + ctc_weight * ctc
        if stage != sb.Stage.TRAIN:
            self.wer_metric.append(
                part.id,
                [h.upper().split() for h in out["hyps"]],
                [w.upper().split() for w in part.wrd_norm],
            )
            self.cer_metric.append(
                part.id,
                [list(h.upper()) for h in out["hyps"]],
                [list(w.upper()) for w in part.wrd_norm],
            )
        return loss

    def _ser_loss(self, out, part, stage):
        targets = part.emo_encoded.data.view(-1)  # (B,)
        loss = F.cross_entropy(out["logits"].float(), targets)
        if stage != sb.Stage.TRAIN:
            self.emo_metric.append(part.id, out["logits"].argmax(-1), targets)
        return loss

    def init_optimizers(self):
        """One optimiser over the trainable parameters only.

        Frozen weights (a frozen encoder, the base LLM under LoRA) stay out
        of the optimiser, its state and its checkpoints. With the run option
        ``remove_vector_weight_decay``, vectors (biases, norms) form a second
        group without weight decay, as in SpeechBrain.
        """
        if self.opt_class is None:
            return super().init_optimizers()
        params = [p for p in self.modules.parameters() if p.requires_grad]
        if self.remove_vector_weight_decay:
            params = [
                {"params": [p for p in params if p.dim() > 1]},
                {
                    "params": [p for p in params if p.dim() <= 1],
                    "weight_decay": 0.0,
                },
            ]
        self.optimizer = self.opt_class(params)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

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

    def on_fit_batch_start(self, batch, should_step):
        """Sets this update's learning rate from the per-update schedule.

        Stepping before the update (not after, as SpeechBrain recipes do)
        makes the first update use the schedule's first value rather than
        the optimiser's initial (peak) learning rate.
        """
        scheduler = getattr(self.hparams, "lr_scheduler", None)
        if should_step and scheduler is not None:
            scheduler(self.optimizer)

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
        averages cover the whole epoch.
        """
        if stage != sb.Stage.TRAIN or self.step == 0:
            self.task_losses = {}
        if stage != sb.Stage.TRAIN:
            self.wer_metric = self.hparams.error_rate_computer()
            self.cer_metric = self.hparams.cer_computer()
            self.emo_metric = EmotionStats(self.hparams.emotions)

    def _stage_stats(self, stage, stage_loss):
        stats = {"loss": stage_loss}
        for task, (total, count) in sorted(self.task_losses.items()):
            stats[f"loss_{task}"] = total / count
        if stage == sb.Stage.TRAIN:
            return stats
        wer = ua = None
        if self.wer_metric.scores:
            wer = self.wer_metric.summarize("error_rate")
            stats["WER"] = wer
            stats["CER"] = self.cer_metric.summarize("error_rate")
        if self.emo_metric.ids:
            ser = self.emo_metric.summarize()
            ua = ser["UA"]
            stats.update(UA=ua, WA=ser["WA"], macro_F1=ser["macro_F1"])
        if wer is not None and ua is not None:
            key = combined_error(wer, ua, self.hparams.asr_weight_in_key)
        elif wer is not None:
            key = wer / 100
        else:
            key = 1 - ua
        stats["combined_error"] = key
        return stats

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs per-task losses and metrics; checkpoints on the combined key."""
        stats = self._stage_stats(stage, stage_loss)
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        if stage == sb.Stage.VALID:
            lr = self.optimizer.param_groups[0]["lr"]
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": lr},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(
                meta=stats,
                min_keys=["combined_error"],
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
        if self.wer_metric.scores:
            path = os.path.join(folder, f"wer_{self.test_set_name}.txt")
            with open(path, "w", encoding="utf-8") as w:
                self.wer_metric.write_stats(w)
            logger.info(f"ASR alignments written to {path}")
            # Per-utterance character errors, for paired bootstrap CIs
            path = os.path.join(folder, f"cer_{self.test_set_name}.txt")
            with open(path, "w", encoding="utf-8") as w:
                self.cer_metric.write_stats(w)
        if self.emo_metric.ids:
            path = os.path.join(folder, f"ser_{self.test_set_name}.txt")
            with open(path, "w", encoding="utf-8") as w:
                self.emo_metric.write_stats(w)
            logger.info(f"SER report written to {path}")

    def evaluate_set(self, loader, name, min_key="combined_error"):
        """Tests on one named set with the best checkpoint.

        Arguments
        ---------
        loader : DataLoader
            Batches of ``MultiTaskBatch``.
        name : str
            Name of the set, used in report file names.
        min_key : str
            Checkpoint key to minimise when loading the best checkpoint.

        Returns
        -------
        dict
            The test statistics.
        """
        self.test_set_name = name
        self.evaluate(loader, min_key=min_key)
        return self.test_stats
