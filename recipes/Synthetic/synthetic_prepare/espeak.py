"""eSpeak NG through ctypes, and the choice of its voices.

The library and its data come from the ``espeakng-loader`` package.

Authors
 * HarmoniFuse contributors
"""

import _ctypes
import ctypes
import logging
import os
import shutil
import tempfile
import weakref

import numpy as np

from recipes.Synthetic.synthetic_prepare.settings import (
    BASELINE_RANGES,
    DEFAULT_VARIANT_PATTERN,
    EXCLUDED_LANGUAGES,
)

logger = logging.getLogger(__name__)


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
