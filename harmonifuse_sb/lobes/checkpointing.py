"""Checkpoint only what trains: trainable parameters and buffers.

A lobe that wraps a large pre-trained model (a frozen WavLM, an LLM with LoRA)
must not write gigabytes of frozen weights into every checkpoint: those come
back from the model's own source (hub id or folder) when the lobe is built.
``PartialCheckpointMixin`` gives a ``torch.nn.Module`` SpeechBrain checkpoint
hooks (save, recover and pretrainer transfer) that store the parameters with
``requires_grad`` and the persistent buffers, and that refuse a file which
lacks a parameter that is trainable now.

Example
-------
>>> import tempfile, os, torch
>>> from speechbrain.utils.checkpoints import Checkpointer
>>> class Net(PartialCheckpointMixin, torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.frozen = torch.nn.Linear(4, 4).requires_grad_(False)
...         self.head = torch.nn.Linear(4, 2)
>>> folder = tempfile.mkdtemp()
>>> ckpt = Checkpointer(folder, recoverables={"net": Net()}).save_checkpoint()
>>> sorted(torch.load(os.path.join(ckpt.path, "net.ckpt")))
['head.bias', 'head.weight']
"""

import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    mark_as_transfer,
    register_checkpoint_hooks,
)


def trainable_state_dict(module):
    """Returns the state entries of ``module`` that a checkpoint must keep.

    Arguments
    ---------
    module : torch.nn.Module
        The module to save.

    Returns
    -------
    dict
        Trainable parameters and persistent buffers, detached, on the CPU.
    """
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in module.named_buffers()}
    return {
        k: v.detach().cpu()
        for k, v in module.state_dict().items()
        if k in trainable or k in buffers
    }


def load_trainable_state_dict(module, state, source="checkpoint"):
    """Loads a state saved by ``trainable_state_dict``.

    Arguments
    ---------
    module : torch.nn.Module
        The module to fill.
    state : dict
        The saved entries (renamed by ``module.upgrade_state(state)`` first
        when the module has that method).
    source : str
        Where the state came from, for error messages.

    Raises
    ------
    RuntimeError
        If the state holds an unknown key, or lacks a parameter that is
        trainable in ``module`` (the file was saved with another freezing
        setup or another model).
    """
    # A module that renamed its parameters maps an old file's names.
    upgrade = getattr(module, "upgrade_state", None)
    if upgrade is not None:
        state = upgrade(state)
    own = module.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise RuntimeError(
            f"{source} holds parameters that {type(module).__name__} does "
            f"not have: {unknown[:5]}. Was it saved from another model?"
        )
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    missing = sorted(trainable - set(state))
    if missing:
        raise RuntimeError(
            f"{source} has no value for trainable parameters {missing[:5]} of "
            f"{type(module).__name__}. Was it saved with another freezing or "
            "LoRA setting?"
        )
    module.load_state_dict(state, strict=False)


@register_checkpoint_hooks
class PartialCheckpointMixin:
    """SpeechBrain checkpoint hooks that store only trainable state.

    The hooks are registered on this class; SpeechBrain looks them up along
    the method resolution order, so every subclass uses them.
    """

    @mark_as_saver
    def _save_trainable(self, path):
        torch.save(trainable_state_dict(self), path)

    @mark_as_loader
    def _load_trainable(self, path, end_of_epoch=False):
        del end_of_epoch
        state = torch.load(path, map_location="cpu")
        load_trainable_state_dict(self, state, source=str(path))

    @mark_as_transfer
    def _transfer_trainable(self, path):
        state = torch.load(path, map_location="cpu")
        load_trainable_state_dict(self, state, source=str(path))
