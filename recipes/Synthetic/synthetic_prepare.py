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

Authors
 * HarmoniFuse contributors
"""

import _ctypes
import argparse
import ctypes
import importlib.metadata
import json
import logging
import multiprocessing as mp
import os
import re
import shutil
import tempfile
import time
import weakref

import numpy as np
import scipy.signal
import soundfile as sf
import torch
import torchaudio

logger = logging.getLogger(__name__)

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

# ---------------------------------------------------------------------------
# Sentence grammar
# ---------------------------------------------------------------------------

WORDS = {
    "name": "anna david maria peter laura james sarah thomas emma daniel "
    "julia michael olivia robert sophie george lucy henry alice oliver kate "
    "martin helen paul nina victor clara simon rachel frank",
    "pron": "she he we they you",
    # nouns whose plural is the noun plus "s"
    "noun": "dog cat bird horse car boat train book table chair window door "
    "river mountain lamp apple letter song story ship bottle ring jacket hat "
    "shoe bridge road tower cake pencil bag camera farmer doctor teacher "
    "painter singer sailor driver baker student neighbour flower picture "
    "basket blanket clock kettle ladder mirror pillow rabbit",
    "adj": "big small old young quiet heavy light bright dark warm cold "
    "clean dirty tall short long empty full strange famous tiny huge soft "
    "hard broken new round narrow wide rich poor lazy brave clever busy "
    "friendly gentle noisy simple fresh",
    "color": "red blue green yellow black white orange purple brown grey "
    "pink silver golden",
    "num": "two three four five six seven eight nine ten eleven twelve "
    "thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty",
    "vt": "found painted opened closed carried watched cleaned moved bought "
    "sold visited followed pushed pulled lifted dropped washed fixed built "
    "borrowed noticed chased touched packed counted wanted liked cooked "
    "caught dried",
    "vi": "arrived laughed waited slept jumped danced smiled stopped "
    "returned walked travelled listened worked rested sang",
    "adv": "quickly slowly quietly loudly carefully early late again often "
    "rarely gently suddenly finally easily together outside inside nearby "
    "soon",
    "city": "london paris berlin madrid rome vienna dublin oslo tokyo cairo "
    "boston chicago denver sydney toronto lisbon prague athens moscow delhi "
    "canada brazil mexico spain norway egypt kenya japan india chile",
    "place": "park kitchen office station market library school museum "
    "hospital airport beach forest village harbour church theatre hotel "
    "cinema bakery farm garden",
    "time": "today yesterday tomorrow tonight",
    "day": "monday tuesday wednesday thursday friday saturday sunday",
}
WORDS = {slot: tuple(words.split()) for slot, words in WORDS.items()}

# Slots are in angle brackets; "<noun>s" is the plural. 3 to 8 words each.
TEMPLATES = (
    "<name> <vi> <adv>",
    "<pron> <vi> <time>",
    "the <noun> is <adj>",
    "<name> <vt> the <noun>",
    "<name> lives in <city>",
    "<name> <vt> <num> <noun>s <time>",
    "<pron> <vt> <num> <color> <noun>s",
    "the <adj> <noun> <vi> <adv>",
    "<pron> <vi> in the <place> <time>",
    "the <adj> <noun> <vt> the <noun>",
    "<name> and <name> <vi> at the <place>",
    "<num> <adj> <noun>s <vi> near the <place>",
    "<pron> <vt> the <noun> in <city> <time>",
    "we will meet in <city> on <day>",
    "please put the <color> <noun> on the <noun>",
    "the <color> <noun> <vt> the <adj> <noun> <adv>",
)


def grammar_vocabulary(wording=False):
    """Returns every word that the sentence grammar can produce.

    Arguments
    ---------
    wording : bool
        Include the words of the emotional phrases (``VALENCE_PHRASES``).

    Returns
    -------
    set of str
        The distinct words.

    Example
    -------
    >>> len(grammar_vocabulary()) >= 200
    True
    >>> sorted(grammar_vocabulary(wording=True) - grammar_vocabulary())[:3]
    ['a', 'am', 'awful']
    """
    vocabulary = set()
    if wording:
        for phrases in VALENCE_PHRASES.values():
            for phrase in phrases:
                vocabulary.update(phrase.split())
    for template in TEMPLATES:
        for token in template.split():
            if token.startswith("<"):
                slot, plural = token[1:].split(">")
                vocabulary.update(word + plural for word in WORDS[slot])
            else:
                vocabulary.add(token)
    return vocabulary


def random_sentence(rng):
    """Draws one lower-case sentence of 3 to 8 words from the grammar.

    Arguments
    ---------
    rng : numpy.random.Generator
        The random generator.

    Returns
    -------
    str
        The sentence, words separated by single spaces.

    Example
    -------
    >>> sentence = random_sentence(np.random.default_rng(0))
    >>> 3 <= len(sentence.split()) <= 8
    True
    """
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    words = []
    for token in template.split():
        if token.startswith("<"):
            slot, plural = token[1:].split(">")
            words.append(WORDS[slot][rng.integers(len(WORDS[slot]))] + plural)
        else:
            words.append(token)
    return " ".join(words)


def add_emotional_phrase(sentence, valence, rng):
    """Says a random phrase of ``valence`` before or after ``sentence``.

    Arguments
    ---------
    sentence : str
        A grammar sentence.
    valence : str
        "positive" or "negative" (a key of ``VALENCE_PHRASES``).
    rng : numpy.random.Generator
        Draws the phrase and its place.

    Returns
    -------
    str
        The sentence with the phrase.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> add_emotional_phrase("the cat is old", "negative", rng)
    'i am so upset the cat is old'
    """
    phrases = VALENCE_PHRASES[valence]
    phrase = phrases[rng.integers(len(phrases))]
    if rng.random() < 0.5:
        return f"{phrase} {sentence}"
    return f"{sentence} {phrase}"


def check_emotional_wording(share):
    """Checks the ``emotional_wording`` share; returns it as a float.

    Arguments
    ---------
    share : float
        Share of the utterances with an emotional phrase, in [0, 1].

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If it is not a number in [0, 1].

    Example
    -------
    >>> check_emotional_wording(0.5)
    0.5
    """
    if (
        not isinstance(share, (int, float))
        or isinstance(share, bool)
        or not 0.0 <= share <= 1.0
    ):
        raise ValueError(
            f"emotional_wording={share!r}: give the share of the utterances "
            "that carry an emotional phrase, a number in [0, 1] (0: none)."
        )
    return float(share)


# ---------------------------------------------------------------------------
# eSpeak NG through ctypes
# ---------------------------------------------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit()
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAMETER_IDS = {"rate": 1, "volume": 2, "pitch": 3, "range": 4}
# int callback(short *wav, int numsamples, espeak_EVENT *events)
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.POINTER(ctypes.c_short),
    ctypes.c_int,
    ctypes.c_void_p,
)


class ESpeakSynth:
    """A small ctypes wrapper around the eSpeak NG library.

    eSpeak NG keeps static state between calls (phase of the glottal source,
    pitch flutter) and seeds its noise generator with the time of day, so the
    same text would give different samples depending on when and after what
    it is synthesised. ``synth`` therefore reloads the library and reseeds
    the noise for every utterance: each waveform depends on its own
    arguments only, whatever the order or the process.

    A load lists every voice file of the data folder (about 300 files, half
    the time of a short utterance), so the library gets a private folder of
    symbolic links to the English languages and the chosen variants only.

    Arguments
    ---------
    library_path : str, optional
        Path of ``libespeak-ng.so``; default: the one of ``espeakng-loader``.
    data_path : str, optional
        Path of ``espeak-ng-data``; default: the one of ``espeakng-loader``.
    variants : list of str, optional
        Voice variants to offer (files of espeak-ng-data/voices/!v);
        default: the plain voices m1..m8 and f1..f5.

    Example
    -------
    >>> synth = ESpeakSynth()
    >>> wav = synth.synth("hello world", voice="en-us+m3")
    >>> wav.dtype, synth.sample_rate
    (dtype('int16'), 22050)
    >>> "en-gb-scotland" in synth.languages, synth.variants[:3]
    (True, ['f1', 'f2', 'f3'])
    """

    def __init__(self, library_path=None, data_path=None, variants=None):
        if library_path is None or data_path is None:
            try:
                import espeakng_loader
            except ImportError as error:
                raise RuntimeError(
                    "The eSpeak NG library is needed: install the "
                    "'espeakng-loader' package (pip install espeakng-loader) "
                    "or pass library_path and data_path."
                ) from error
            library_path = library_path or espeakng_loader.get_library_path()
            data_path = data_path or espeakng_loader.get_data_path()
        self.library_path = str(library_path)
        self.data_path = os.path.abspath(data_path)
        if not os.path.isdir(os.path.join(self.data_path, "voices", "!v")):
            raise RuntimeError(
                f"No eSpeak NG data at '{self.data_path}' (voices/!v is "
                "missing): pass the path of an espeak-ng-data folder."
            )
        self.languages = _list_languages(self.data_path)
        available = os.listdir(os.path.join(self.data_path, "voices", "!v"))
        if variants is None:
            variants = [
                v for v in available if DEFAULT_VARIANT_PATTERN.match(v)
            ]
        unknown = sorted(set(variants) - set(available))
        if unknown:
            raise ValueError(
                f"Unknown eSpeak voice variants {unknown}; the variants are "
                f"the files of {self.data_path}/voices/!v."
            )
        self.variants = sorted(set(variants), key=_variant_order)
        self._data = _private_data_folder(
            self.data_path, self.languages, self.variants
        )
        weakref.finalize(self, _remove_folder, self._data, os.getpid())
        self._chunks = []
        # Keep a reference: the library calls it, Python must not free it.
        self._callback = _SYNTH_CALLBACK(self._collect)
        self._library = None
        self._checked_unload = False
        self.sample_rate = self._load()
        self._unload()

    def _collect(self, wav, num_samples, events):
        """Stores one chunk of samples (the library's callback)."""
        if num_samples > 0:
            chunk = np.ctypeslib.as_array(wav, shape=(num_samples,))
            self._chunks.append(chunk.copy())
        return 0  # continue synthesis

    def _load(self):
        """Loads and initialises the library; returns its sample rate."""
        try:
            lib = ctypes.CDLL(self.library_path)
        except OSError as error:
            raise RuntimeError(
                f"Cannot load the eSpeak NG library '{self.library_path}': "
                f"{error}. Install 'espeakng-loader' or pass library_path."
            ) from error
        lib.espeak_Initialize.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int] * 3
        if not hasattr(lib, "espeak_ng_SetRandSeed"):
            raise RuntimeError(
                f"'{self.library_path}' has no espeak_ng_SetRandSeed: "
                "reproducible synthesis needs eSpeak NG 1.52 or newer."
            )
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS,
            0,
            self._data.encode(),
            _INITIALIZE_DONT_EXIT,
        )
        if sample_rate <= 0:
            raise RuntimeError(
                f"espeak_Initialize failed with data '{self.data_path}'."
            )
        lib.espeak_SetSynthCallback(self._callback)
        self._library = lib
        return sample_rate

    def _unload(self):
        """Terminates and unloads the library, dropping its static state."""
        self._library.espeak_Terminate()
        handle = self._library._handle
        self._library = None
        _ctypes.dlclose(handle)
        if not self._checked_unload:
            # If another module of this process holds the library too, it
            # stays loaded and keeps its state: warn that the output may then
            # depend on the order of the calls.
            self._checked_unload = True
            try:
                probe = ctypes.CDLL(
                    self.library_path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY
                )
            except OSError:
                return  # unloaded, as wanted
            _ctypes.dlclose(probe._handle)
            logger.warning(
                "%s is also loaded elsewhere in this process: eSpeak NG keeps "
                "its state between utterances, so the audio may depend on "
                "the order of synthesis.",
                self.library_path,
            )

    def check_voice(self, voice):
        """Raises ValueError unless ``voice`` is "language[+variant]".

        eSpeak accepts an unknown variant silently, so it is checked here.

        Arguments
        ---------
        voice : str
            For example "en-us+m3" (a file of espeak-ng-data/lang and one of
            espeak-ng-data/voices/!v).
        """
        language, _, variant = voice.partition("+")
        if language.lower() not in self.languages:
            raise ValueError(
                f"Unknown eSpeak language '{language}' in voice '{voice}'; "
                f"English ones in {self.data_path}/lang: "
                f"{sorted(self.languages)}"
            )
        if variant and variant not in self.variants:
            raise ValueError(
                f"Unknown eSpeak voice variant '{variant}' in voice '{voice}'"
                f"; this synthesiser offers {self.variants} (others of "
                f"{self.data_path}/voices/!v need ESpeakSynth(variants=...))."
            )

    def synth(
        self, text, voice="en-us", rate=175, pitch=50, range_=50, volume=100
    ):
        """Synthesises one utterance.

        Arguments
        ---------
        text : str
            The text to speak.
        voice : str
            "language+variant", e.g. "en-gb-scotland+f2".
        rate : int
            Speaking rate in words per minute (80 to 450).
        pitch : int
            Base pitch, 0 to 100 (50 is the voice's own pitch).
        range_ : int
            Pitch range, 0 (monotone) to 100 (50 is the voice's own range).
        volume : int
            Volume, 0 to 200 (100 is normal; louder may compress).

        Returns
        -------
        numpy.ndarray
            int16 mono samples at ``self.sample_rate`` (22050 Hz).
        """
        self.check_voice(voice)
        self._load()
        try:
            lib = self._library
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"eSpeak NG cannot load the voice '{voice}'.")
            values = {
                "rate": rate,
                "volume": volume,
                "pitch": pitch,
                "range": range_,
            }
            for name, value in values.items():
                status = lib.espeak_SetParameter(
                    _PARAMETER_IDS[name], int(value), 0
                )
                if status != 0:
                    raise ValueError(f"eSpeak NG rejects {name}={value}.")
            self._chunks = []
            # Initialisation seeds the noise generator (breath noise of f2,
            # f3, f5...) with the time of day.
            lib.espeak_ng_SetRandSeed(1)
            encoded = text.encode("utf-8")
            status = lib.espeak_Synth(
                encoded,
                len(encoded) + 1,
                0,
                _POS_CHARACTER,
                0,
                _CHARS_UTF8,
                None,
                None,
            )
            if status != 0:
                raise RuntimeError(f"espeak_Synth failed ({status}): {text!r}")
            lib.espeak_Synchronize()
        finally:
            self._unload()
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._chunks).astype(np.int16)


def _list_languages(data_path):
    """Maps the English language variants of eSpeak to their files."""
    languages = {}
    lang = os.path.join(data_path, "lang")
    for root, _, files in os.walk(lang):
        for name in files:
            if name.lower().startswith("en"):
                path = os.path.join(root, name)
                languages[name.lower()] = os.path.relpath(path, lang)
    for name in EXCLUDED_LANGUAGES:
        languages.pop(name, None)
    return languages


def _remove_folder(folder, owner_pid):
    """Removes a folder, unless called in a forked copy of its owner."""
    if os.getpid() == owner_pid:
        shutil.rmtree(folder, ignore_errors=True)


def _variant_order(variant):
    """Sorts m2 before m10, and plain variants before the others."""
    if DEFAULT_VARIANT_PATTERN.match(variant):
        return (0, variant[0], int(variant[1:]))
    return (1, variant, 0)


def _private_data_folder(data_path, languages, variants):
    """Links the files that English synthesis needs into a temporary folder.

    Arguments
    ---------
    data_path : str
        The espeak-ng-data folder.
    languages : dict
        {name: path of its file relative to data_path/lang}.
    variants : list of str
        Files of data_path/voices/!v.

    Returns
    -------
    str
        The new folder (the caller removes it).
    """
    folder = tempfile.mkdtemp(prefix="espeak-ng-data-")
    links = [n for n in os.listdir(data_path) if n not in ("lang", "voices")]
    links += [os.path.join("lang", p) for p in languages.values()]
    links += [os.path.join("voices", "!v", v) for v in variants]
    for name in links:
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        os.symlink(os.path.join(data_path, name), os.path.join(folder, name))
    return folder


# ---------------------------------------------------------------------------
# Voices and prosody
# ---------------------------------------------------------------------------


def select_voices(
    languages, variants, n_train, n_valid, n_test, rng, synth=None
):
    """Partitions eSpeak voices into train, valid and test voices.

    Every voice is a distinct (language, variant) pair with its own prosodic
    baseline, so the three splits share no voice. Held-out voices are chosen
    first, and each choice takes the least used variant, then the least
    represented gender in its split (the first letter of the variant: m1..m8
    are male, f1..f5 female), then the least used language, so that every
    split spreads over timbres, genders and accents.

    Arguments
    ---------
    languages : list of str
        eSpeak language variants, e.g. ["en-us", "en-gb-x-rp"].
    variants : list of str
        eSpeak voice variants, e.g. ["m1", "f2"].
    n_train : int
        Number of training voices.
    n_valid : int
        Number of validation voices.
    n_test : int
        Number of test voices.
    rng : numpy.random.Generator
        Draws the tie-breaking order and the baselines.
    synth : ESpeakSynth, optional
        If given, checks that every voice is known.

    Returns
    -------
    dict
        {"train"|"valid"|"test": {voice_name: {"language", "variant",
        "pitch", "range", "rate", "volume"}}}.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> voices = select_voices(["en-us", "en"], ["m1", "f1"], 2, 1, 1, rng)
    >>> sorted(len(voices[split]) for split in voices)
    [1, 1, 2]
    """
    if not languages or not variants:
        raise ValueError("select_voices needs languages and variants.")
    if synth is not None:
        for name in languages:
            synth.check_voice(name)
        for name in variants:
            synth.check_voice(f"{languages[0]}+{name}")
    counts = {"test": n_test, "valid": n_valid, "train": n_train}
    pairs = [(lang, var) for lang in languages for var in variants]
    if sum(counts.values()) > len(pairs):
        raise ValueError(
            f"{sum(counts.values())} voices asked for, but only {len(pairs)} "
            f"(language, variant) pairs: {len(languages)} languages x "
            f"{len(variants)} variants. Pass more languages or variants."
        )
    # A random rank breaks the ties.
    rank = {pairs[j]: r for r, j in enumerate(rng.permutation(len(pairs)))}
    free = set(pairs)
    used_language = dict.fromkeys(languages, 0)
    used_variant = dict.fromkeys(variants, 0)
    voices = {}
    for split, count in counts.items():
        genders = {}
        voices[split] = {}
        for _ in range(count):
            language, variant = min(
                free,
                key=lambda pair: (
                    used_variant[pair[1]],
                    genders.get(pair[1][0], 0),
                    used_language[pair[0]],
                    rank[pair],
                ),
            )
            free.remove((language, variant))
            used_language[language] += 1
            used_variant[variant] += 1
            genders[variant[0]] = genders.get(variant[0], 0) + 1
            voices[split][f"{language}+{variant}"] = {
                "language": language,
                "variant": variant,
            }
    # Baselines in a fixed order of splits, independent of the choice above.
    for split in ("train", "valid", "test"):
        for voice in voices[split].values():
            for name, (low, high) in BASELINE_RANGES.items():
                voice[name] = int(round(rng.uniform(low, high)))
    return {split: voices[split] for split in ("train", "valid", "test")}


def speech_level_db(wav):
    """Returns the level of speech in dB relative to full scale.

    The level is the mean power of the 20 ms frames (at 22.05 kHz) that are
    at most 30 dB below the loudest one, so pauses do not count.

    Arguments
    ---------
    wav : numpy.ndarray
        int16 samples, or float samples in [-1, 1] (at 16 or 22.05 kHz).

    Returns
    -------
    float
        The level in dB.

    Example
    -------
    >>> t = np.arange(22050) / 22050
    >>> wav = (16384 * np.sin(2 * np.pi * 200 * t)).astype(np.int16)
    >>> round(speech_level_db(wav), 1)  # half scale sine: -6 - 3 dB
    -9.0
    """
    x = wav.astype(np.float64)
    if np.issubdtype(wav.dtype, np.integer):
        x = x / 32768.0
    frame = 441
    power = (x[: len(x) // frame * frame].reshape(-1, frame) ** 2).mean(1)
    return float(10 * np.log10(power[power > power.max() * 1e-3].mean()))


def utterance_prosody(baseline, emotion, rng, emotion_prosody=None):
    """Draws the eSpeak parameters, loudness dynamics and vocal-effort tilt
    of one utterance.

    The target is the voice's baseline moved by ``EMOTION_PROSODY[emotion]``;
    a small Gaussian jitter (``JITTER``) is added, then the values are
    clipped to eSpeak's limits.

    Arguments
    ---------
    baseline : dict
        The voice's "pitch", "range" and "rate".
    emotion : str
        One of ``EMOTIONS`` ("neutral" for the ASR sets).
    rng : numpy.random.Generator
        Draws the jitter.
    emotion_prosody : dict, optional
        The emotion table (default: ``EMOTION_PROSODY``); see
        ``merge_emotion_prosody``.

    Returns
    -------
    dict
        Integer "pitch", "range" and "rate", "dynamics" (dB) and "tilt"
        (dB).

    Example
    -------
    >>> base = {"pitch": 50, "range": 50, "rate": 175}
    >>> rng = np.random.default_rng(0)
    >>> sad = utterance_prosody(base, "sad", rng)
    >>> angry = utterance_prosody(base, "angry", rng)
    >>> sad["rate"] < 175 < angry["rate"], sad["dynamics"] < angry["dynamics"]
    (True, True)
    """
    table = EMOTION_PROSODY if emotion_prosody is None else emotion_prosody
    if emotion not in table:
        raise ValueError(f"Unknown emotion '{emotion}'; use one of {EMOTIONS}")
    offset = table[emotion]
    values = {
        "pitch": baseline["pitch"] + offset["pitch"],
        "range": baseline["range"] + offset["range"],
        "rate": baseline["rate"] * offset["rate"],
    }
    values["pitch"] += rng.normal(0, JITTER["pitch"])
    values["range"] += rng.normal(0, JITTER["range"])
    values["rate"] *= 1 + rng.normal(0, JITTER["rate"])
    prosody = {
        name: int(np.clip(round(value), *PARAMETER_LIMITS[name]))
        for name, value in values.items()
    }
    prosody["dynamics"] = offset["dynamics"]
    prosody["tilt"] = offset["tilt"]
    return prosody


def merge_emotion_prosody(overrides=None):
    """``EMOTION_PROSODY`` with some of its values replaced.

    Arguments
    ---------
    overrides : dict, optional
        {emotion: {cue: value}}, cues among "pitch", "range" (eSpeak
        units added to the voice's baseline), "rate" (factor), "dynamics"
        and "tilt" (dB).

    Returns
    -------
    dict
        The full table, {emotion: {cue: value}}.

    Raises
    ------
    ValueError
        If an emotion or a cue is unknown, or a value is not a number.

    Example
    -------
    >>> table = merge_emotion_prosody({"angry": {"tilt": 0}})
    >>> table["angry"]["tilt"], table["angry"]["rate"]
    (0.0, 1.45)
    """
    table = {emo: dict(cues) for emo, cues in EMOTION_PROSODY.items()}
    for emotion, cues in (overrides or {}).items():
        if emotion not in table:
            raise ValueError(
                f"emotion_prosody: unknown emotion '{emotion}'; the corpus "
                f"renders {list(EMOTIONS)}."
            )
        for cue, value in cues.items():
            if cue not in table[emotion]:
                raise ValueError(
                    f"emotion_prosody: unknown cue '{cue}' for '{emotion}'; "
                    f"the cues are {sorted(table[emotion])}."
                )
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(
                    f"emotion_prosody: {emotion}.{cue} = {value!r} is not a "
                    "number."
                )
            table[emotion][cue] = type(table[emotion][cue])(value)
    return table


def vocal_effort_tilt(wav, sample_rate, tilt_db, corner_hz=TILT_CORNER_HZ):
    """Raises (or lowers) the spectrum above ``corner_hz`` by ``tilt_db``.

    A first-order shelf, ``x + (10^(tilt/20) - 1) * highpass(x)``: the gain
    is about 0 dB well below the corner and ``tilt_db`` well above it.
    Raised vocal effort (anger, joy) flattens the voice's spectral slope, a
    relaxed or soft voice (sadness) steepens it (the alpha ratio and
    Hammarberg index of eGeMAPS, Eyben et al., IEEE TAC 2016).

    Arguments
    ---------
    wav : numpy.ndarray
        Samples, shape (num_samples,).
    sample_rate : int
        Sample rate in Hz.
    tilt_db : float
        Gain of the high band in dB; 0 returns ``wav`` unchanged.
    corner_hz : float
        Corner frequency of the shelf in Hz.

    Returns
    -------
    numpy.ndarray
        float64 samples, shape (num_samples,).

    Example
    -------
    >>> t = np.arange(16000) / 16000
    >>> low, high = np.sin(2 * np.pi * 100 * t), np.sin(2 * np.pi * 4000 * t)
    >>> gain = lambda x: float(20 * np.log10(
    ...     np.std(vocal_effort_tilt(x, 16000, 8.0)) / np.std(x)))
    >>> round(gain(low), 1), round(gain(high), 1)
    (0.2, 7.9)
    """
    x = np.asarray(wav, dtype=np.float64)
    if tilt_db == 0:
        return x
    b, a = scipy.signal.butter(1, corner_hz, btype="highpass", fs=sample_rate)
    return x + (10 ** (tilt_db / 20) - 1) * scipy.signal.lfilter(b, a, x)


def recording_conditions(split, rng):
    """Draws how one utterance is recorded (``RECORDING``), independently of
    its emotion and voice.

    Arguments
    ---------
    split : str
        "train", "valid" or "test" (sets the SNR range).
    rng : numpy.random.Generator
        The random generator.

    Returns
    -------
    dict
        "level_db", "snr_db", "noise", "lead_s", "trail_s", "speed" and
        "noise_seed" (seeds the noise and the loudness envelope).

    Example
    -------
    >>> cond = recording_conditions("test", np.random.default_rng(0))
    >>> 25 <= cond["snr_db"] <= 45, cond["noise"] in RECORDING["noise"]
    (True, True)
    """
    return {
        "level_db": round(float(rng.uniform(*RECORDING["level_db"])), 2),
        "snr_db": round(float(rng.uniform(*RECORDING["snr_db"][split])), 2),
        "noise": str(rng.choice(RECORDING["noise"])),
        "lead_s": round(float(rng.uniform(*RECORDING["lead_s"])), 3),
        "trail_s": round(float(rng.uniform(*RECORDING["trail_s"])), 3),
        "speed": float(rng.choice(RECORDING["speed"])),
        "noise_seed": int(rng.integers(2**31)),
    }


def pink_noise(num_samples, rng):
    """Pink (1/f power) noise of unit RMS, by shaping white noise's spectrum.

    Arguments
    ---------
    num_samples : int
        Length.
    rng : numpy.random.Generator
        The random generator.

    Returns
    -------
    numpy.ndarray
        float64 samples, shape (num_samples,).

    Example
    -------
    >>> x = pink_noise(16000, np.random.default_rng(0))
    >>> spec = np.abs(np.fft.rfft(x)) ** 2
    >>> bool(spec[10:100].mean() > 10 * spec[4000:8000].mean())
    True
    """
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    spectrum /= np.sqrt(np.maximum(freqs, 1.0))
    noise = np.fft.irfft(spectrum, n=num_samples)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def loudness_envelope(num_samples, sample_rate, depth_db, rng):
    """A slow random gain curve: the loudness dynamics of an utterance.

    Gaussian control points at ``DYNAMICS_RATE_HZ`` (about the syllable
    rate), standard deviation ``depth_db`` dB, linearly interpolated.

    Arguments
    ---------
    num_samples : int
        Length.
    sample_rate : int
        Sample rate in Hz.
    depth_db : float
        Standard deviation of the gain in dB.
    rng : numpy.random.Generator
        The random generator.

    Returns
    -------
    numpy.ndarray
        Linear gains, shape (num_samples,).

    Example
    -------
    >>> gain = loudness_envelope(16000, 16000, 6.0, np.random.default_rng(0))
    >>> gain.shape, bool(gain.max() / gain.min() > 2)
    ((16000,), True)
    """
    n_points = int(num_samples / sample_rate * DYNAMICS_RATE_HZ) + 2
    points = rng.standard_normal(n_points) * depth_db
    positions = np.linspace(0, num_samples - 1, n_points)
    envelope_db = np.interp(np.arange(num_samples), positions, points)
    return 10 ** (envelope_db / 20)


def plan_corpus(voices, counts, seed, emotion_prosody=None, wording=0.0):
    """Draws the sentence, voice, emotion and prosody of every utterance.

    Each manifest has its own random stream, so changing one count leaves
    the other sets unchanged (except that SER sentences avoid ASR ones).
    Voices take turns; in the SER sets each voice says the four emotions in
    turn, so emotions are balanced overall and per voice. The emotional
    wording has streams of its own: with ``wording=0`` the plan is that of
    a corpus without the option, and with it the sentences (before the
    phrase), voices, emotions and prosody are the same.

    Arguments
    ---------
    voices : dict
        Output of ``select_voices``.
    counts : dict
        {manifest name (e.g. "asr_train"): number of utterances}.
    seed : int
        The random seed.
    emotion_prosody : dict, optional
        The emotion table (default: ``EMOTION_PROSODY``).
    wording : float
        Share of the utterances that get an emotional phrase (see the
        module docstring for the label rule); 0: none.

    Returns
    -------
    dict
        {manifest name: list of dicts with "id", "wrd", "voice", "emo",
        "wording" ("positive", "negative" or "none") and the eSpeak
        parameters}.

    Example
    -------
    >>> voices = select_voices(["en-us"], ["m1", "f1", "m2"], 1, 1, 1,
    ...                        np.random.default_rng(0))
    >>> plan = plan_corpus(voices, {"asr_train": 2, "ser_test": 4}, 0)
    >>> [u["emo"] for u in plan["ser_test"]]
    ['neutral', 'happy', 'sad', 'angry']
    """
    plan = {}
    asr_sentences = set()
    for index, name in enumerate(MANIFESTS):
        if not counts.get(name):
            plan[name] = []
            continue
        task, split = name.split("_")
        rng = np.random.default_rng([seed, index])
        wording_rng = np.random.default_rng([seed, WORDING_STREAM + index])
        split_voices = list(voices[split].items())
        if not split_voices:
            raise ValueError(
                f"{name} needs {split} voices, but there are none."
            )
        utterances = []
        for i in range(counts[name]):
            sentence = random_sentence(rng)
            if task == "asr":
                emotion = "neutral"
                voice, baseline = split_voices[i % len(split_voices)]
                asr_sentences.add(sentence)
            else:
                while sentence in asr_sentences:
                    sentence = random_sentence(rng)
                emotion = EMOTIONS[i % len(EMOTIONS)]
                turn = i // len(EMOTIONS)
                voice, baseline = split_voices[turn % len(split_voices)]
            prosody = utterance_prosody(baseline, emotion, rng, emotion_prosody)
            valence = "none"
            if wording and wording_rng.random() < wording:
                if task == "asr":  # either valence, said neutrally
                    valence = ("positive", "negative")[wording_rng.integers(2)]
                else:
                    valence = EMOTION_VALENCE[emotion]
                sentence = add_emotional_phrase(sentence, valence, wording_rng)
            utterances.append(
                {
                    "id": f"{name}_{i:05d}",
                    "wrd": sentence,
                    "wording": valence,
                    "voice": voice,
                    "emo": emotion,
                    "split": split,
                    **prosody,
                    **recording_conditions(split, rng),
                }
            )
        plan[name] = utterances
    return plan


# ---------------------------------------------------------------------------
# Synthesis and manifests
# ---------------------------------------------------------------------------


def make_babble(split_voices, synth, resample, seed):
    """Babble tracks: BABBLE_TALKERS voices of one split talking at once.

    Each talker says random grammar sentences with neutral prosody for
    BABBLE_SECONDS; talkers are brought to the same level and summed.

    Arguments
    ---------
    split_voices : dict
        {voice name: baseline} of one split.
    synth : ESpeakSynth
        The synthesiser.
    resample : callable
        Maps a float32 tensor at the synthesiser's rate to the output rate.
    seed : list of int
        Seed of the sentences and voices.

    Returns
    -------
    list of numpy.ndarray
        BABBLE_TRACKS float64 tracks of unit RMS at the output rate.
    """
    rng = np.random.default_rng(seed)
    names = sorted(split_voices)
    tracks = []
    for _ in range(BABBLE_TRACKS):
        talkers = []
        for name in rng.choice(names, BABBLE_TALKERS):
            base = split_voices[name]
            pieces, seconds = [], 0.0
            while seconds < BABBLE_SECONDS:
                wav = synth.synth(
                    random_sentence(rng),
                    voice=name,
                    rate=base["rate"],
                    pitch=base["pitch"],
                    range_=base["range"],
                    volume=SYNTH_VOLUME,
                )
                pieces.append(wav)
                seconds += len(wav) / synth.sample_rate
            with torch.no_grad():
                x = torch.from_numpy(np.concatenate(pieces) / 32768.0)
                x = resample(x.float()).double().numpy()
            talkers.append(x / (np.sqrt(np.mean(x**2)) + 1e-12))
        length = min(len(t) for t in talkers)
        track = np.sum([t[:length] for t in talkers], axis=0)
        tracks.append(track / np.sqrt(np.mean(track**2)))
    return tracks


def background_noise(kind, num_samples, rng, babble):
    """Unit-RMS background noise of one type.

    Arguments
    ---------
    kind : str
        "white", "pink" or "babble".
    num_samples : int
        Length.
    rng : numpy.random.Generator
        Draws the noise (white, pink) or the track and offset (babble).
    babble : list of numpy.ndarray
        Babble tracks of the split (``make_babble``).

    Returns
    -------
    numpy.ndarray
        float64 samples, shape (num_samples,).
    """
    if kind == "white":
        return rng.standard_normal(num_samples)
    if kind == "pink":
        return pink_noise(num_samples, rng)
    if kind != "babble":
        raise ValueError(f"Unknown noise type {kind!r}: {RECORDING['noise']}")
    track = babble[rng.integers(len(babble))]
    repeats = num_samples // len(track) + 2
    looped = np.tile(track, repeats)
    start = rng.integers(len(track))
    return looped[start : start + num_samples]


class _Renderer:
    """Synthesises planned utterances, "records" them (speed, loudness
    dynamics, level, silence, background noise) and writes 16-bit wavs.
    """

    def __init__(self, data_folder, sample_rate, variants=None):
        self.data_folder = data_folder
        self.sample_rate = sample_rate
        self.synth = ESpeakSynth(variants=variants)
        self.babble = {}
        self._resamplers = {}

    def resampler(self, speed=1.0):
        """Resamples the synthesiser's output to ``sample_rate / speed``
        samples per second (then read at ``sample_rate``: ``speed`` times
        faster).
        """
        new_rate = int(round(self.sample_rate / speed / 50) * 50)
        if new_rate not in self._resamplers:
            self._resamplers[new_rate] = torchaudio.transforms.Resample(
                self.synth.sample_rate, new_rate
            )
        return self._resamplers[new_rate]

    def record(self, wav, utt):
        """Turns clean int16 speech at the synthesiser's rate into a
        recording at ``sample_rate``: float64 samples and the speech span.
        """
        rng = np.random.default_rng(utt["noise_seed"])
        with torch.no_grad():
            x = torch.from_numpy(wav / 32768.0).float()
            speech = self.resampler(utt["speed"])(x).double().numpy()
        speech = vocal_effort_tilt(speech, self.sample_rate, utt["tilt"])
        speech = speech * loudness_envelope(
            len(speech), self.sample_rate, utt["dynamics"], rng
        )
        level = speech_level_db(speech)
        speech = speech * 10 ** ((utt["level_db"] - level) / 20)
        lead = int(utt["lead_s"] * self.sample_rate)
        trail = int(utt["trail_s"] * self.sample_rate)
        audio = np.concatenate([np.zeros(lead), speech, np.zeros(trail)])
        noise = background_noise(
            utt["noise"], len(audio), rng, self.babble.get(utt["split"])
        )
        # Unit-RMS noise at snr_db below the speech level.
        audio = audio + noise * 10 ** ((utt["level_db"] - utt["snr_db"]) / 20)
        peak = np.abs(audio).max()
        if peak > 0.99:  # a limiter, as a recorder's would
            audio = audio * (0.99 / peak)
        span = (
            lead / self.sample_rate,
            (lead + len(speech)) / self.sample_rate,
        )
        return audio, span

    def __call__(self, job):
        """Renders one utterance; returns (id, relative path, duration,
        speech start, speech end).
        """
        name, utt = job
        wav = self.synth.synth(
            utt["wrd"],
            voice=utt["voice"],
            rate=utt["rate"],
            pitch=utt["pitch"],
            range_=utt["range"],
            volume=SYNTH_VOLUME,
        )
        audio, (start, end) = self.record(wav, utt)
        wav = np.clip(np.round(audio * 32768.0), -32768, 32767)
        relative = f"wavs/{name}/{utt['id']}.wav"
        sf.write(
            os.path.join(self.data_folder, relative),
            wav.astype(np.int16),
            self.sample_rate,
            subtype="PCM_16",
        )
        return utt["id"], relative, len(wav) / self.sample_rate, start, end


def write_noise_clips(data_folder, babble, sample_rate, seed):
    """Writes noise clips for on-the-fly augmentation and their CSV.

    ``NOISE_CLIPS`` clips per type (white, pink, babble of the training
    voices), ``NOISE_CLIP_SECONDS`` long, at -30 dBFS RMS, listed in
    ``noise.csv`` in the format of SpeechBrain's ``AddNoise`` (``ID``,
    ``duration``, ``wav`` with ``$data_root``, ``wav_format``, ``wav_opts``).

    Arguments
    ---------
    data_folder : str
        The corpus folder.
    babble : list of numpy.ndarray
        Babble tracks of the training voices.
    sample_rate : int
        Sample rate.
    seed : int
        Seed of the noise.
    """
    rng = np.random.default_rng([seed, 99])
    folder = os.path.join(data_folder, "wavs", "noise")
    os.makedirs(folder, exist_ok=True)
    num_samples = int(NOISE_CLIP_SECONDS * sample_rate)
    rows = ["ID,duration,wav,wav_format,wav_opts"]
    for kind in RECORDING["noise"]:
        for i in range(NOISE_CLIPS):
            noise = background_noise(kind, num_samples, rng, babble)
            noise = noise * 10 ** (-30 / 20)
            name = f"{kind}_{i}"
            sf.write(
                os.path.join(folder, f"{name}.wav"),
                np.round(noise * 32768).astype(np.int16),
                sample_rate,
                subtype="PCM_16",
            )
            rows.append(
                f"{name},{NOISE_CLIP_SECONDS},$data_root/wavs/noise/"
                f"{name}.wav,wav,"
            )
    with open(os.path.join(data_folder, "noise.csv"), "w") as fout:
        fout.write("\n".join(rows) + "\n")


_worker_renderer = None  # the renderer of a worker process


def _init_worker(renderer):
    """Makes a worker process's renderer (one thread: processes share CPUs)."""
    global _worker_renderer
    torch.set_num_threads(1)
    _worker_renderer = renderer


def _render_in_worker(job):
    """Renders one utterance in a worker process."""
    return _worker_renderer(job)


def _render_all(jobs, renderer, num_workers):
    """Renders the jobs, in parallel where fork is available; in order."""
    if num_workers <= 1 or "fork" not in mp.get_all_start_methods():
        return [renderer(job) for job in jobs]
    # fork: the workers inherit the renderer and need no import of this file.
    context = mp.get_context("fork")
    with context.Pool(num_workers, _init_worker, (renderer,)) as pool:
        return pool.map(_render_in_worker, jobs, chunksize=64)


def _write_json(path, content):
    """Writes JSON with a fixed layout, so equal content gives equal bytes."""
    with open(path, "w", encoding="utf-8") as fout:
        json.dump(content, fout, indent=2, sort_keys=False)
        fout.write("\n")


def _read_json(path):
    """Reads a JSON file, or returns None when it is missing or broken."""
    try:
        with open(path, encoding="utf-8") as fin:
            return json.load(fin)
    except (OSError, ValueError):
        return None


def _remove_outputs(data_folder):
    """Removes what an earlier preparation wrote."""
    shutil.rmtree(os.path.join(data_folder, "wavs"), ignore_errors=True)
    for name in (*MANIFESTS, "voices", "prepare_params"):
        path = os.path.join(data_folder, f"{name}.json")
        if os.path.exists(path):
            os.remove(path)
    noise_csv = os.path.join(data_folder, "noise.csv")
    if os.path.exists(noise_csv):
        os.remove(noise_csv)


def prepare_synthetic(
    data_folder,
    seed=1234,
    n_train_voices=12,
    n_valid_voices=2,
    n_test_voices=4,
    asr_train=4000,
    asr_valid=200,
    asr_test=400,
    ser_train=2000,
    ser_valid=200,
    ser_test=400,
    sample_rate=16000,
    languages=None,
    variants=None,
    num_workers=None,
    emotion_prosody=None,
    emotional_wording=0.0,
):
    """Synthesises the ASR and SER corpora and writes their manifests.

    Writes, under ``data_folder``: ``wavs/<set>/<id>.wav`` (16-bit mono),
    the manifests ``asr_{train,valid,test}.json`` (entries with "wav",
    "duration", "spk_id", "speech_start", "speech_end", "snr_db", "noise",
    "wrd") and ``ser_{train,valid,test}.json`` (the same with "emo" instead
    of "wrd"), ``wavs/noise/*.wav`` and ``noise.csv`` (noise clips for
    SpeechBrain's ``AddNoise``), ``voices.json`` (the voice partition,
    baselines, emotion offsets and recording conditions) and
    ``prepare_params.json``.
    The output depends only on the arguments: if ``prepare_params.json``
    holds the same arguments and all manifests exist, nothing is done; if
    the arguments changed, the old files are removed and the corpus is
    synthesised again.

    Arguments
    ---------
    data_folder : str
        Where the corpus is written.
    seed : int
        Seed of the voice partition, baselines, sentences and jitter.
    n_train_voices : int
        Number of training voices (ASR and SER train sets).
    n_valid_voices : int
        Number of held-out validation voices.
    n_test_voices : int
        Number of held-out test voices.
    asr_train : int
        Number of utterances in asr_train.json.
    asr_valid : int
        Number of utterances in asr_valid.json.
    asr_test : int
        Number of utterances in asr_test.json.
    ser_train : int
        Number of utterances in ser_train.json.
    ser_valid : int
        Number of utterances in ser_valid.json.
    ser_test : int
        Number of utterances in ser_test.json.
    sample_rate : int
        Sample rate of the wav files (eSpeak synthesises at 22050 Hz).
    languages : list of str, optional
        eSpeak English language variants to draw voices from; default: all
        in espeak-ng-data/lang (en, en-us, en-gb-scotland, en-029, ...).
    variants : list of str, optional
        eSpeak voice variants (files of espeak-ng-data/voices/!v); default:
        m1..m8 and f1..f5.
    num_workers : int, optional
        Number of synthesis processes; default: the number of CPU cores.
        Every utterance is synthesised from a fresh library state, so the
        output does not depend on it (it is not part of the parameters).
    emotion_prosody : dict, optional
        Overrides of ``EMOTION_PROSODY``, {emotion: {cue: value}} (see
        ``merge_emotion_prosody``), e.g. ``{"angry": {"tilt": 0}}``.
    emotional_wording : float
        Share of the utterances (of every set) that carry an emotional
        phrase, in [0, 1]; 0 (default): none, and the corpus is exactly the
        one without the option. SER entries then carry ``wording``; the
        label rule is in the module docstring.

    Returns
    -------
    None

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> prepare_synthetic(folder, n_train_voices=2, n_valid_voices=1,
    ...                   n_test_voices=1, asr_train=2, asr_valid=1,
    ...                   asr_test=1, ser_train=4, ser_valid=4, ser_test=4)
    >>> with open(os.path.join(folder, "ser_test.json")) as fin:
    ...     manifest = json.load(fin)
    >>> sorted(entry["emo"] for entry in manifest.values())
    ['angry', 'happy', 'neutral', 'sad']
    >>> shutil.rmtree(folder)
    """
    table = merge_emotion_prosody(emotion_prosody)
    wording = check_emotional_wording(emotional_wording)
    counts = {
        "asr_train": asr_train,
        "asr_valid": asr_valid,
        "asr_test": asr_test,
        "ser_train": ser_train,
        "ser_valid": ser_valid,
        "ser_test": ser_test,
    }
    try:
        espeak_version = importlib.metadata.version("espeakng-loader")
    except importlib.metadata.PackageNotFoundError:
        espeak_version = None  # ESpeakSynth says what to install
    params = {
        "version": VERSION,
        "espeakng_loader": espeak_version,
        "seed": seed,
        "n_train_voices": n_train_voices,
        "n_valid_voices": n_valid_voices,
        "n_test_voices": n_test_voices,
        **counts,
        "sample_rate": sample_rate,
        "languages": None if languages is None else list(languages),
        "variants": None if variants is None else list(variants),
        "emotion_prosody": table,
    }
    if wording:  # corpora without it keep their parameters (and files)
        params["emotional_wording"] = wording
    params_file = os.path.join(data_folder, "prepare_params.json")
    outputs = [f"{name}.json" for name in (*MANIFESTS, "voices")]
    outputs.append("noise.csv")
    if _read_json(params_file) == params and all(
        os.path.exists(os.path.join(data_folder, name)) for name in outputs
    ):
        logger.info("Synthetic corpus in %s is ready, skipping.", data_folder)
        return
    start = time.time()
    if num_workers is None:
        if hasattr(os, "sched_getaffinity"):
            num_workers = len(os.sched_getaffinity(0))
        else:
            num_workers = os.cpu_count() or 1
    # Everything that can fail on bad arguments comes before any removal.
    renderer = _Renderer(data_folder, sample_rate, variants)
    synth = renderer.synth
    if languages is None:
        languages = sorted(synth.languages)
    voices = select_voices(
        [language.lower() for language in languages],
        synth.variants,
        n_train_voices,
        n_valid_voices,
        n_test_voices,
        np.random.default_rng(seed),
        synth=synth,
    )
    plan = plan_corpus(voices, counts, seed, table, wording)
    os.makedirs(data_folder, exist_ok=True)
    _remove_outputs(data_folder)
    # Babble of each split's own voices; the workers inherit it (fork).
    for index, split in enumerate(("train", "valid", "test")):
        renderer.babble[split] = make_babble(
            voices[split], synth, renderer.resampler(), [seed, 50 + index]
        )
    write_noise_clips(data_folder, renderer.babble["train"], sample_rate, seed)

    logger.info(
        "Synthesising %d utterances with eSpeak NG into %s (%d processes)",
        sum(counts.values()),
        data_folder,
        num_workers,
    )
    for name in plan:
        os.makedirs(os.path.join(data_folder, "wavs", name), exist_ok=True)
    jobs = [(name, utt) for name, utts in plan.items() for utt in utts]
    rendered = iter(_render_all(jobs, renderer, num_workers))
    for name, utterances in plan.items():
        manifest = {}
        for utt in utterances:
            utt_id, relative, duration, begin, end = next(rendered)
            entry = {
                "wav": "{data_root}/" + relative,
                "duration": duration,
                "spk_id": utt["voice"],
                "speech_start": round(begin, 4),
                "speech_end": round(end, 4),
                "snr_db": utt["snr_db"],
                "noise": utt["noise"],
            }
            if name.startswith("asr"):
                entry["wrd"] = utt["wrd"]
            else:
                entry["emo"] = utt["emo"]
                if wording:
                    entry["wording"] = utt["wording"]
            manifest[utt_id] = entry
        _write_json(os.path.join(data_folder, f"{name}.json"), manifest)

    _write_json(
        os.path.join(data_folder, "voices.json"),
        {
            "seed": seed,
            "emotion_prosody": table,
            "baseline_ranges": BASELINE_RANGES,
            "recording": RECORDING,
            "jitter": JITTER,
            **(
                {
                    "emotional_wording": wording,
                    "valence_phrases": VALENCE_PHRASES,
                    "emotion_arousal": EMOTION_AROUSAL,
                    "emotion_valence": EMOTION_VALENCE,
                }
                if wording
                else {}
            ),
            **voices,
        },
    )
    # Written last: an interrupted run is redone from scratch.
    _write_json(params_file, params)
    logger.info(
        "Synthetic corpus written to %s in %.1f s",
        data_folder,
        time.time() - start,
    )


def main():
    """Prepares the corpus from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_folder", help="where the corpus is written")
    parser.add_argument("--seed", type=int, default=1234)
    for name in ("n_train_voices", "n_valid_voices", "n_test_voices"):
        parser.add_argument(f"--{name}", type=int, default=None)
    for name in MANIFESTS:
        parser.add_argument(f"--{name}", type=int, default=None)
    parser.add_argument("--sample_rate", type=int, default=16000)
    parser.add_argument("--languages", nargs="+", default=None)
    parser.add_argument("--variants", nargs="+", default=None)
    parser.add_argument("--num_workers", type=int, default=None)
    parser.add_argument(
        "--emotional_wording",
        type=float,
        default=None,
        help="share of the utterances with an emotional phrase (default 0)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    kwargs = {k: v for k, v in vars(args).items() if v is not None}
    prepare_synthetic(**kwargs)


if __name__ == "__main__":
    main()
