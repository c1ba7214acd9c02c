"""Random-number state as a checkpoint recoverable, for exact resumption.

SpeechBrain checkpoints the model, the optimiser, the schedulers and the
data loader's position, but not the random generators: a run resumed
mid-epoch then draws other dropout masks and augmentations than the run it
continues. Registering ``RandomState`` with the checkpointer saves and
restores the generators of Python, NumPy and torch (CPU and CUDA), so a
resumed run reaches the same weights as an uninterrupted one.

Under DDP the checkpointer saves on the main process only, so every rank
resumes with rank 0's generator state.

Authors
 * HarmoniFuse-SB developers 2026
"""

import random

import numpy as np
import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)


@register_checkpoint_hooks
class RandomState:
    """Saves and restores the state of every random generator.

    Example
    -------
    >>> import tempfile, os
    >>> state = RandomState()
    >>> path = os.path.join(tempfile.mkdtemp(), "rng.ckpt")
    >>> state._save(path)
    >>> a = torch.rand(1)
    >>> state._recover(path)
    >>> torch.equal(a, torch.rand(1))
    True
    """

    @mark_as_saver
    def _save(self, path):
        state = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(state, path)

    @mark_as_loader
    def _recover(self, path, end_of_epoch=False):
        del end_of_epoch
        state = torch.load(path, weights_only=False)
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
