"""Helpers of the long-form, VAD and command-line tests.

- ``espeak_clips``: real synthesised speech (eSpeak NG, as in the synthetic
  corpus), written as 16 kHz files, so that the VAD is tested on speech and
  not on tones;
- ``export_untrained_model``: a tiny random HarmoniFuse exported as an
  inference folder in seconds (the quick-start YAML at a smaller size, the
  LLM and tokenizer prepared as in training, ``export_inference_folder``),
  loaded by the tests as a user loads a trained one. Its outputs are
  arbitrary but deterministic, which is what comparisons between decoding
  paths need.
"""

import json
import os

import numpy as np
import soundfile as sf
import torch
import torchaudio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_YAML = os.path.join(ROOT, "hparams", "harmonifuse_tiny.yaml")
SENTENCES = (
    "the old man reads a book in the garden",
    "she arrived at the station this morning",
    "my brother plays the piano every evening",
    "the children walk to school together",
    "a small bird sings near the window",
    "we bought fresh bread at the market",
    "he paints the door a bright green colour",
    "the train leaves before noon today",
)
VOICES = ("en-us+m3", "en-gb-x-rp+f2", "en-us+f4", "en-gb-scotland+m5")
EMOTIONS = ["neutral", "happy", "sad", "angry"]


def espeak_clips(folder, count=8):
    """Writes eSpeak NG utterances as 16 kHz mono files.

    Arguments
    ---------
    folder : str
        Where to write ``clip_<i>.wav``.
    count : int
        How many (sentences and voices cycle).

    Returns
    -------
    list of dict
        ``id``, ``wav`` (path) and ``wrd`` (the sentence).
    """
    from recipes.Synthetic.synthetic_prepare import ESpeakSynth

    os.makedirs(folder, exist_ok=True)
    synth = ESpeakSynth()
    clips = []
    for i in range(count):
        text = SENTENCES[i % len(SENTENCES)]
        wav = synth.synth(text, voice=VOICES[i % len(VOICES)])
        wav = torch.from_numpy(wav.astype(np.float32) / 32768)
        wav = torchaudio.functional.resample(wav, synth.sample_rate, 16000)
        path = os.path.join(folder, f"clip_{i}.wav")
        sf.write(path, wav.numpy(), 16000, subtype="FLOAT")
        clips.append({"id": f"clip_{i}", "wav": path, "wrd": text})
    return clips


def export_untrained_model(folder, work):
    """Exports a tiny random HarmoniFuse as an inference folder.

    Arguments
    ---------
    folder : str
        The inference folder to write.
    work : str
        Scratch folder (transcripts for the tokenizer, the LLM folder).

    Returns
    -------
    str
        ``folder``.
    """
    from hyperpyyaml import load_hyperpyyaml

    from harmonifuse_sb.export import export_inference_folder

    data = os.path.join(work, "data")
    os.makedirs(data, exist_ok=True)
    manifest = {
        f"utt{i}": {"wav": "unused.wav", "duration": 1.0, "wrd": text}
        for i, text in enumerate(SENTENCES)
    }
    with open(os.path.join(data, "asr_train.json"), "w") as f:
        json.dump(manifest, f)
    overrides = {
        "data_folder": data,
        "output_folder": os.path.join(work, "out"),
        "enc_dim": 48,
        "enc_layers": 1,
        "llm_dim": 64,
        "llm_layers": 1,
        "llm_heads": 2,
        "max_new_tokens": 3,
    }
    torch.manual_seed(0)
    with open(TINY_YAML, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, overrides)
    hparams["prepare_llm"]()
    model = hparams["model"](speech_lm=hparams["speech_lm"]())
    return export_inference_folder(TINY_YAML, overrides, model, folder)
