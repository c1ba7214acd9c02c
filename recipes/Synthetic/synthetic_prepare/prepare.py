"""Data preparation for the synthetic ASR + SER corpus (eSpeak NG voices).

The plan of the corpus (voices, sentences, prosody, recording per
utterance), its manifests and the command line
(``python -m recipes.Synthetic.synthetic_prepare``).

Authors
 * HarmoniFuse contributors
"""

import argparse
import importlib.metadata
import json
import logging
import os
import shutil
import time

import numpy as np

from recipes.Synthetic.synthetic_prepare.espeak import select_voices
from recipes.Synthetic.synthetic_prepare.grammar import (
    add_emotional_phrase,
    check_emotional_wording,
    random_sentence,
)
from recipes.Synthetic.synthetic_prepare.prosody import (
    merge_emotion_prosody,
    utterance_prosody,
)
from recipes.Synthetic.synthetic_prepare.recording import (
    _render_all,
    _Renderer,
    make_babble,
    recording_conditions,
    write_noise_clips,
)
from recipes.Synthetic.synthetic_prepare.settings import (
    BASELINE_RANGES,
    EMOTION_AROUSAL,
    EMOTION_VALENCE,
    EMOTIONS,
    JITTER,
    MANIFESTS,
    RECORDING,
    VALENCE_PHRASES,
    VERSION,
    WORDING_STREAM,
)

logger = logging.getLogger(__name__)


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
