"""Runs ``train.py`` with test probes; a helper of ``tests/test_training.py``.

Usage (from the repository root, also under ``torchrun``)::

    python tests/train_probe.py train.py hparams/harmonifuse_tiny.yaml [...]

Runs ``train.py`` as ``__main__`` with its own arguments, after wrapping
``HarmoniFuseBrain.fit_batch`` so that it

* appends one JSON line per training batch to ``$HF_PROBE_LOG.rank<R>.jsonl``
  (R = ``$RANK``, default 0): epoch, step within the epoch, optimiser steps
  before the batch, task, utterance ids of each task part, and the loss as
  ``float.hex`` (exact);
* if ``$HF_PROBE_CRASH_AFTER`` is N, ends the process with ``os._exit`` right
  after the optimiser step N (no cleanup, no checkpoint of that step: what
  a killed job leaves behind).

The wrapper only observes: the batch, the loss and every random draw are
those of the unwrapped method.
"""

import json
import os
import runpy
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRASH_EXIT_CODE = 75


def install_probes(log_prefix, crash_after):
    """Wraps ``HarmoniFuseBrain.fit_batch`` with the recorder and the crash."""
    from harmonifuse_sb.brain import HarmoniFuseBrain

    rank = int(os.environ.get("RANK", "0"))
    log = None
    if log_prefix:
        log = open(f"{log_prefix}.rank{rank}.jsonl", "a", encoding="utf-8")
    fit_batch = HarmoniFuseBrain.fit_batch

    def probed_fit_batch(self, batch):
        record = {
            "rank": rank,
            "epoch": self.hparams.epoch_counter.current,
            "step": self.step,  # Brain counts it up before fit_batch
            "optimizer_step": self.optimizer_step,
            "task": batch.task,
            "asr_ids": list(batch.asr.id) if batch.asr is not None else [],
            "ser_ids": list(batch.ser.id) if batch.ser is not None else [],
        }
        loss = fit_batch(self, batch)
        if log is not None:
            record["loss"] = float(loss).hex()
            log.write(json.dumps(record) + "\n")
            log.flush()
        if crash_after and self.optimizer_step == crash_after:
            os._exit(CRASH_EXIT_CODE)
        return loss

    HarmoniFuseBrain.fit_batch = probed_fit_batch


def main(argv):
    """Installs the probes, then runs ``argv[0]`` (train.py) as __main__."""
    sys.path.insert(0, REPO)
    install_probes(
        os.environ.get("HF_PROBE_LOG"),
        int(os.environ.get("HF_PROBE_CRASH_AFTER", "0")),
    )
    sys.argv = list(argv)
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
