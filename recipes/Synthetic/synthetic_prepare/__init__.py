"""Data preparation for the synthetic ASR + SER corpus (eSpeak NG voices).

The corpus is synthesised offline with eSpeak NG, which the
``espeakng-loader`` package ships (library and data). A voice is an English
eSpeak language variant (accent, e.g. ``en-us``, ``en-gb-scotland``) combined
with a voice variant (timbre, e.g. ``m3``, ``f2``) and a per-voice prosodic
baseline (pitch, range, rate) drawn from the seed. Voices are split into
training voices and held-out validation and test voices.

Two separate corpora are written, as the HarmoniFuse recipes need them:

- ASR sets (``asr_*.json``): sentences from a small grammar, neutral prosody
  with a small jitter around the voice's baseline; entries carry ``wrd``.
- SER sets (``ser_*.json``): four balanced emotions rendered as prosody
  relative to the voice's own baseline (``EMOTION_PROSODY``: pitch, range,
  rate, loudness dynamics), on sentences that do not occur in the ASR sets;
  entries carry ``emo``.

Every utterance is then "recorded" (``RECORDING``), independently of its
emotion and voice: a slight speed change, a level drawn over 28 dB (the
microphone's gain, so absolute loudness is no cue), silence before and after
the speech filled with background noise (white, pink, or babble of other
voices of the same split) at an SNR drawn per split. Entries carry the
speech span (``speech_start``, ``speech_end``), ``snr_db`` and ``noise``.
Noise clips for on-the-fly augmentation are listed in ``noise.csv``.

What it does not render: reverberation, microphone and codec colouring,
real talkers' voice quality and spontaneous speech (eSpeak is a formant
synthesiser reading a 349-word grammar).

Emotional wording (``emotional_wording``, off by default): a share of the
utterances gets a short emotional phrase before or after the grammar
sentence (``VALENCE_PHRASES``), so that SER needs linguistic *and*
paralinguistic cues. The label rule is a 2 x 2 of arousal and valence
(``EMOTION_AROUSAL``, ``EMOTION_VALENCE``): happy is high arousal and
positive valence, angry high and negative, sad low and negative, neutral low
and non-negative (calm: no phrase or a positive one). The phrase of an SER
utterance carries its valence (positive for happy and neutral, negative for
angry and sad); the prosody carries its arousal (the ``emotion_prosody``
overrides of the ablation setting make happy and angry, and neutral and sad,
sound alike, with a weak residual difference). So the words alone leave
happy/neutral and angry/sad apart only by prosody ("how wonderful" said
calmly is neutral: prosody and words disagree), and the prosody alone leaves
happy/angry and neutral/sad apart only by words. The ASR sets get the same
share of phrases, of either valence at random (neutral prosody), so that
the phrases are in the transcripts the encoder and the LLM learn from.
SER entries then carry ``wording`` ("positive", "negative" or "none").

No utterance carries both a transcript and an emotion.

The package's modules: ``settings`` (the constants above), ``grammar``,
``espeak`` (the library through ctypes, the voices), ``prosody``,
``recording`` (noise, babble, the rendering) and ``prepare`` (the plan, the
manifests, the command line: ``python -m recipes.Synthetic.synthetic_prepare
DATA_FOLDER``). The names below are re-exported so that
``recipes.Synthetic.synthetic_prepare.<name>`` keeps working (the YAMLs'
``!name:`` references, the tests, ``rir_prepare``).

Authors
 * HarmoniFuse contributors
"""

from recipes.Synthetic.synthetic_prepare.espeak import (
    ESpeakSynth,
    select_voices,
)
from recipes.Synthetic.synthetic_prepare.grammar import (
    TEMPLATES,
    WORDS,
    add_emotional_phrase,
    check_emotional_wording,
    grammar_vocabulary,
    random_sentence,
)
from recipes.Synthetic.synthetic_prepare.prepare import (
    _read_json,
    _write_json,
    main,
    plan_corpus,
    prepare_synthetic,
)
from recipes.Synthetic.synthetic_prepare.prosody import (
    loudness_envelope,
    merge_emotion_prosody,
    utterance_prosody,
    vocal_effort_tilt,
)
from recipes.Synthetic.synthetic_prepare.recording import (
    background_noise,
    make_babble,
    pink_noise,
    recording_conditions,
    speech_level_db,
    write_noise_clips,
)
from recipes.Synthetic.synthetic_prepare.settings import (
    BABBLE_SECONDS,
    BABBLE_TALKERS,
    BABBLE_TRACKS,
    BASELINE_RANGES,
    DEFAULT_VARIANT_PATTERN,
    DYNAMICS_RATE_HZ,
    EMOTION_AROUSAL,
    EMOTION_PROSODY,
    EMOTION_VALENCE,
    EMOTIONS,
    EXCLUDED_LANGUAGES,
    JITTER,
    MANIFESTS,
    NOISE_CLIP_SECONDS,
    NOISE_CLIPS,
    PARAMETER_LIMITS,
    RECORDING,
    SYNTH_VOLUME,
    TILT_CORNER_HZ,
    VALENCE_PHRASES,
    VERSION,
    WORDING_STREAM,
)

__all__ = [
    "BABBLE_SECONDS",
    "BABBLE_TALKERS",
    "BABBLE_TRACKS",
    "BASELINE_RANGES",
    "DEFAULT_VARIANT_PATTERN",
    "DYNAMICS_RATE_HZ",
    "EMOTIONS",
    "EMOTION_AROUSAL",
    "EMOTION_PROSODY",
    "EMOTION_VALENCE",
    "ESpeakSynth",
    "EXCLUDED_LANGUAGES",
    "JITTER",
    "MANIFESTS",
    "NOISE_CLIPS",
    "NOISE_CLIP_SECONDS",
    "PARAMETER_LIMITS",
    "RECORDING",
    "SYNTH_VOLUME",
    "TEMPLATES",
    "TILT_CORNER_HZ",
    "VALENCE_PHRASES",
    "VERSION",
    "WORDING_STREAM",
    "WORDS",
    "_read_json",
    "_write_json",
    "add_emotional_phrase",
    "background_noise",
    "check_emotional_wording",
    "grammar_vocabulary",
    "loudness_envelope",
    "main",
    "make_babble",
    "merge_emotion_prosody",
    "pink_noise",
    "plan_corpus",
    "prepare_synthetic",
    "random_sentence",
    "recording_conditions",
    "select_voices",
    "speech_level_db",
    "utterance_prosody",
    "vocal_effort_tilt",
    "write_noise_clips",
]
