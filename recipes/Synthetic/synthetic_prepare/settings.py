"""The synthetic corpus's definition: emotions, prosody, recording, limits.

The constants that the other modules read; the package's docstring
describes the corpus they define.

Authors
 * HarmoniFuse contributors
"""

import re

# Bump when the output for the same arguments changes (grammar, prosody...).
VERSION = "synthetic-4"

EMOTIONS = ("neutral", "happy", "sad", "angry")

# Emotion = prosody relative to the voice's own baseline: pitch and range are
# added to the baseline (eSpeak's 0-100 scales), rate multiplies it,
# "dynamics" is the standard deviation (dB) of a slow loudness envelope
# (syllable rate) applied within the utterance, and "tilt" is the vocal
# effort: the gain (dB) of the spectrum above TILT_CORNER_HZ against the
# spectrum below it (raised vocal effort flattens the spectral slope, as in
# the alpha ratio and Hammarberg index of eGeMAPS, Eyben et al. 2016). The
# absolute level is NOT a cue: every utterance gets a level drawn
# independently of its emotion (RECORDING["level_db"]), as a microphone sets
# it. Each emotion differs from every other one in at least two relative
# cues, and the offsets are large against the spread of the baselines
# (BASELINE_RANGES), so one utterance of an unseen voice is enough to tell
# the class. prepare_synthetic(emotion_prosody=...) overrides any value.
EMOTION_PROSODY = {
    "neutral": {
        "pitch": 0,
        "range": 0,
        "rate": 1.0,
        "dynamics": 2.0,
        "tilt": 0.0,
    },
    "happy": {
        "pitch": 35,
        "range": 45,
        "rate": 1.15,
        "dynamics": 4.0,
        "tilt": 3.0,
    },
    "sad": {
        "pitch": -20,
        "range": -30,
        "rate": 0.7,
        "dynamics": 1.0,
        "tilt": -4.0,
    },
    "angry": {
        "pitch": 10,
        "range": 0,
        "rate": 1.45,
        "dynamics": 8.0,
        "tilt": 8.0,
    },
}
# Emotional wording: phrases said before or after a grammar sentence. Each
# phrase has one valence and is shared by the two emotions of that valence.
VALENCE_PHRASES = {
    "positive": (
        "how wonderful",
        "i love it",
        "what great news",
        "this is lovely",
        "that is fantastic",
        "i am so glad",
    ),
    "negative": (
        "how awful",
        "i hate it",
        "what terrible news",
        "this is horrible",
        "that is a disaster",
        "i am so upset",
    ),
}
# The label rule of the worded corpus (see the module docstring).
EMOTION_AROUSAL = {
    "neutral": "low",
    "happy": "high",
    "sad": "low",
    "angry": "high",
}
EMOTION_VALENCE = {
    "neutral": "positive",
    "happy": "positive",
    "sad": "negative",
    "angry": "negative",
}
# Offset of the wording's random streams from the manifests' (so that the
# sentences, voices and prosody do not depend on the wording option).
WORDING_STREAM = 100

# Corner frequency of the vocal-effort tilt (a first-order shelf), Hz.
TILT_CORNER_HZ = 1000.0

# Per-voice baselines are drawn uniformly in these intervals.
BASELINE_RANGES = {
    "pitch": (42, 58),
    "range": (42, 55),
    "rate": (165, 185),
}
# eSpeak's volume (a linear gain): the level is set after synthesis.
SYNTH_VOLUME = 100

# How an utterance is "recorded", drawn per utterance and independently of
# its emotion and voice:
# - level_db: speech level (dBFS of the frames with speech, speech_level_db);
# - lead_s / trail_s: silence before and after the speech, filled with the
#   background noise (never digital zeros);
# - speed: resampling factor (tempo and pitch move together, as with a tape);
# - noise: background noise type; babble is a mix of other voices of the
#   same split;
# - snr_db: speech level minus noise level, per split: the training sets
#   span noisy to quiet rooms, the held-out sets quiet to very quiet ones
#   (the robustness benchmark adds the harder conditions).
RECORDING = {
    "level_db": (-44.0, -16.0),
    "lead_s": (0.05, 0.5),
    "trail_s": (0.05, 0.5),
    "speed": (0.95, 0.975, 1.0, 1.025, 1.05),
    "noise": ("white", "pink", "babble"),
    "snr_db": {
        "train": (10.0, 45.0),
        "valid": (25.0, 45.0),
        "test": (25.0, 45.0),
    },
}
# Babble: tracks of BABBLE_TALKERS voices of a split speaking for
# BABBLE_SECONDS, BABBLE_TRACKS tracks per split.
BABBLE_TRACKS = 6
BABBLE_TALKERS = 4
BABBLE_SECONDS = 8.0
# Noise clips written for on-the-fly augmentation (noise.csv): per type.
NOISE_CLIPS = 4
NOISE_CLIP_SECONDS = 8.0
# Loudness envelope of the dynamics: control points per second.
DYNAMICS_RATE_HZ = 6.0

# Standard deviation of the per-utterance jitter around the target prosody
# (pitch and range: eSpeak units; rate and volume: relative).
JITTER = {"pitch": 2.5, "range": 4.0, "rate": 0.04}

# Limits of espeak_SetParameter.
PARAMETER_LIMITS = {
    "pitch": (0, 100),
    "range": (0, 100),
    "rate": (80, 450),
    "volume": (0, 200),
}

MANIFESTS = (
    "asr_train",
    "asr_valid",
    "asr_test",
    "ser_train",
    "ser_valid",
    "ser_test",
)

# eSpeak's variants m1..m8 and f1..f5 sound like plain voices; the other files
# in voices/!v are effects (robots, whisper) or tuned for other languages.
DEFAULT_VARIANT_PATTERN = re.compile(r"^[mf]\d+$")
# Shavian is a different alphabet, not an accent.
EXCLUDED_LANGUAGES = ("en-shaw",)
