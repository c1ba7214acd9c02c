"""The HarmoniFuse building blocks, each usable alone in a SpeechBrain YAML."""

from harmonifuse_sb.lobes.conformer_encoder import ConformerSpeechEncoder
from harmonifuse_sb.lobes.fusion import PromptAdaptiveFusion
from harmonifuse_sb.lobes.gate import TaskGate
from harmonifuse_sb.lobes.hf_encoder import HFSpeechEncoder
from harmonifuse_sb.lobes.projector import SpeechProjector
from harmonifuse_sb.lobes.speech_lm import SpeechLM

__all__ = [
    "ConformerSpeechEncoder",
    "HFSpeechEncoder",
    "PromptAdaptiveFusion",
    "SpeechLM",
    "SpeechProjector",
    "TaskGate",
]
