"""Random-number state as a checkpoint recoverable, for exact resumption.

SpeechBrain checkpoints the model, the optimiser, the schedulers and the
data loader's position, but not the random generators: a run resumed
mid-epoch then draws other dropout masks and augmentations than the run it
continues. Registering ``RandomState`` with the checkpointer saves and
restores the generators of Python, NumPy and torch (CPU and CUDA), so a
resumed run reaches the same weights as an uninterrupted one.

Under DDP every rank has its own generators (each draws its own dropout
masks and augmentations), so each rank's state is saved and restored: the
save hook runs on every rank (SpeechBrain calls savers on all processes and
lets each decide), gathers the states to rank 0, which writes one file with
one entry per rank; on recovery each rank takes its own entry.

Authors
 * HarmoniFuse-SB developers 2026
"""

import logging
import random

import numpy as np
import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import ddp_prevent_block, if_main_process

logger = logging.getLogger(__name__)


def _world():
    """(rank, world_size) when every rank takes part in this call."""
    dist = torch.distributed
    if ddp_prevent_block():  # no DDP, or inside a main-process-only call
        rank = dist.get_rank() if dist.is_initialized() else 0
        return rank, 1
    return dist.get_rank(), dist.get_world_size()


def generator_state():
    """The state of every random generator of this process.

    Returns
    -------
    dict
        ``python``, ``numpy``, ``torch`` and, with CUDA, ``cuda``.
    """
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_generator_state(state):
    """Restores what :func:`generator_state` returned.

    Arguments
    ---------
    state : dict
        A state of this process's generators.
    """
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RandomState:
    """Saves and restores the state of every random generator, per rank.

    The file holds ``{"ranks": {rank: state}}``. A run resumed with more
    processes than saved them gives rank r the state of rank r mod (saved
    ranks), with a warning: the data are then sharded differently anyway,
    so such a resumption cannot be exact.

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
        rank, world_size = _world()
        states = [generator_state()]
        if world_size > 1:
            states = [None] * world_size
            torch.distributed.all_gather_object(states, generator_state())
        if world_size == 1 or if_main_process():
            first = rank if world_size == 1 else 0
            ranks = {first + i: s for i, s in enumerate(states)}
            torch.save({"ranks": ranks}, path)

    @mark_as_loader
    def _recover(self, path, end_of_epoch=False):
        del end_of_epoch
        saved = torch.load(path, weights_only=False)
        # Files written before the per-rank format held rank 0's state.
        ranks = saved["ranks"] if "ranks" in saved else {0: saved}
        rank = _world()[0]
        if rank not in ranks:
            source = sorted(ranks)[rank % len(ranks)]
            logger.warning(
                "RandomState: %s holds the generators of ranks %s, not of "
                "rank %d; using rank %d's (a resumption with another number "
                "of processes is not exact).",
                path,
                sorted(ranks),
                rank,
                source,
            )
            rank = source
        set_generator_state(ranks[rank])


# Every rank must reach the save hook (it gathers the states).
register_checkpoint_hooks(RandomState, save_on_main_only=False)
