"""HarmoniFuse: a multi-task speech language model (ASR + SER) for SpeechBrain.

The lobes live in ``harmonifuse_sb.lobes``; the training loop is
``HarmoniFuseBrain`` and the pre-trained interface ``HarmoniFuseSLM``. Both
are imported lazily so that ``import harmonifuse_sb.lobes`` stays light.
"""

__version__ = "0.1.0"

_LAZY = {
    "HarmoniFuseBrain": "harmonifuse_sb.brain",
    "HarmoniFuseSLM": "harmonifuse_sb.inference",
    "HarmoniFuse": "harmonifuse_sb.model",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'harmonifuse_sb' has no attribute {name!r}")


__all__ = list(_LAZY)
