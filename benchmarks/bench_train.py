#!/usr/bin/env python3
r"""Times the real HarmoniFuse training step at the paper's size.

Builds a WavLM Large and a Qwen2.5-1.5B-Instruct of the published layouts
(the configuration values are written below; random weights, nothing is
downloaded), saves them with ``save_pretrained`` (the LLM in bfloat16, as
the paper's YAML loads it), loads them through ``hparams/harmonifuse.yaml``
and the project's loaders (``HFSpeechEncoder``, ``SpeechLM`` with LoRA,
``train.build_model``), and times ``HarmoniFuseBrain.fit_batch`` (bf16
autocast, backward, clipping, AdamW step) on ASR and SER batches whose
durations follow LibriSpeech's and IEMOCAP's. In the same run it times the
plain speech LM (static fusion, gate off, SER head on the LLM's last
layer: the same YAML with ``fusion: {mode: static}``, ``gate: {enabled:
False}`` and ``llm_fusion: {mode: last}``) on the same
batches, and HarmoniFuse once more as an A/A control; then the memory
options of the YAML (LLM activation checkpointing, bf16 encoder outputs)
and their saving.

How the configurations are compared (the first use of a batch shape costs
about 10x a step on a GPU, and a configuration timed first on a new shape
would pay it):

- every configuration steps on every batch untimed first (``--warmup``
  passes), so every shape is warm in every configuration before timing;
- then each timed round steps every configuration on every batch, one
  after the other, the one that goes first rotating from batch to batch;
- the ratio of two configurations is the geometric mean of their paired
  step-time ratios (same batch, same round) with a 95 % Student t
  interval, printed as ``asr X [lo, hi]``; the A/A control, HarmoniFuse
  against itself as a second configuration, is printed as
  ``A/A control: X [lo, hi]`` and should contain 1;
- on CUDA, timed rounds are added (up to ``--max-rounds``) until every
  interval is within +-3 % of its ratio (``--interval``).

Paper size on a GPU (the default batches of the YAML, 160 s / 80 s):

    python benchmarks/bench_train.py --device cuda

on a CPU (small batches, 2 timed steps per task; the target is under 15
minutes on 2 cores; docs/performance.md, "CPU, full size", has the figures
measured with the earlier, unwarmed method):

    python benchmarks/bench_train.py --device cpu

and at toy size, in seconds (what the CI test runs):

    python benchmarks/bench_train.py --size tiny --device cpu

What is printed, per configuration and task:

- seconds per step (median of the timed steps);
- audio seconds and LLM tokens (prompt, speech tokens, suffix and
  transcript, padding excluded) per second of step time;
- peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the step,
  and the activations (peak minus what was allocated before the step) per
  second of audio; on CPU the process's peak resident set size (VmHWM,
  reset before each step through ``/proc/self/clear_refs``), and the
  increase over the RSS before the step per second of audio;
- on CUDA, the model FLOPs utilisation: FLOPs of the step counted by
  ``torch.utils.flop_counter.FlopCounterMode`` on a replay of the same
  batch (matrix products, convolutions and attention, forward and backward
  as executed: the frozen base weights get no weight gradient, so an LLM
  token costs about 4 N FLOPs rather than 6 N; a checkpointed run's
  recomputation is not counted, its MFU uses the plain count), divided by
  the step time and the GPU's dense bf16 peak (``--peak-tflops``, or the
  table below by device name).

Before the steps it prints the memory of the weights (frozen encoder in
fp32, LLM in bf16, trainable weights in fp32) and, after the first step,
of the AdamW state.

Authors
 * HarmoniFuse-SB developers 2026
"""

import argparse
import collections
import contextlib
import ctypes
import gc
import json
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_YAML = os.path.join(ROOT, "hparams", "harmonifuse.yaml")

# microsoft/wavlm-large, config.json (layer-norm CNN, stable layer norm).
WAVLM_LARGE = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    hidden_act="gelu",
    conv_dim=(512,) * 7,
    conv_stride=(5, 2, 2, 2, 2, 2, 2),
    conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_bias=False,
    feat_extract_norm="layer",
    do_stable_layer_norm=True,
    num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16,
    num_buckets=320,
    max_bucket_distance=800,
    layer_norm_eps=1e-5,
)
# Qwen/Qwen2.5-1.5B-Instruct, config.json (tied embeddings, bf16).
QWEN25_15B = dict(
    vocab_size=151936,
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    tie_word_embeddings=True,
)
# Toy size for the CI test: the same layouts, tiny.
TINY_WAVLM = dict(
    WAVLM_LARGE,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(32,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)
TINY_QWEN = dict(
    QWEN25_15B,
    vocab_size=2048,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
SIZES = {
    "paper": {"wavlm": WAVLM_LARGE, "llm": QWEN25_15B, "overrides": {}},
    "tiny": {
        "wavlm": TINY_WAVLM,
        "llm": TINY_QWEN,
        # The YAML's sizes of the encoder and LLM, and nothing else.
        "overrides": {
            "num_layers": 2,
            "enc_dim": 32,
            "llm_dim": 32,
            "llm_layers": 2,
        },
    },
}

# Utterance durations (seconds): normal distributions clipped to the
# corpora's range, with the means of LibriSpeech train-clean-100 (28,539
# utterances, 100.6 h: 12.7 s; 1.4 to 24.5 s) and of IEMOCAP's four-class
# set (5,531 utterances, about 7 h: 4.5 s; 0.6 to 34 s). A batch takes one
# duration and fills up to --batch-seconds with utterances 0-10 % shorter,
# as SpeechBrain's DynamicBatchSampler fills a batch from one bucket.
DURATIONS = {
    "asr": {"mean": 12.7, "std": 3.5, "min": 1.4, "max": 24.5},
    "ser": {"mean": 4.5, "std": 3.0, "min": 0.6, "max": 34.0},
}
# Transcript tokens per second of LibriSpeech audio: about 2.7 words/s,
# taken at 1.3 Qwen2.5 tokens per word (an assumption: the benchmark's own
# tokenizer has one token per word and draws this many words).
ASR_TOKENS_PER_SECOND = 3.5
SAMPLE_RATE = 16000
# Default seconds of audio per batch: the YAML's max_batch_length on a GPU;
# on a CPU one LibriSpeech utterance and about two IEMOCAP ones.
DEFAULT_BATCH_SECONDS = {
    "cuda": {"asr": None, "ser": None},  # None: the YAML's
    "cpu": {"asr": 16.0, "ser": 8.0},
}
# Dense bf16 peak TFLOPS (no sparsity) by device name, from the vendors'
# data sheets; --peak-tflops overrides.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
}
MiB = 2**20
GiB = 2**30
AA_NAME = "harmonifuse (A/A copy)"


def parse_args(argv=None):
    """Parses the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--size", choices=sorted(SIZES), default="paper", help="model size"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="batches per task: timed steps per task, configuration and "
        "round (default: 2 on CPU, 10 on CUDA)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed passes of every configuration over every batch first",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        help="timed rounds continue until every paired ratio's 95 %% "
        "interval is within +- this fraction of it, or --max-rounds "
        "(default: 0.03 on CUDA, off on CPU)",
    )
    parser.add_argument(
        "--max-rounds",
        type=int,
        default=None,
        help="most timed rounds (default: 5 on CUDA, 1 on CPU)",
    )
    parser.add_argument(
        "--batch-seconds",
        type=float,
        default=None,
        help="seconds of audio per ASR batch (default: the YAML's 160 on "
        "CUDA, 16 on CPU)",
    )
    parser.add_argument(
        "--ser-batch-seconds",
        type=float,
        default=None,
        help="seconds of audio per SER batch (default: the YAML's 80 on "
        "CUDA, 8 on CPU)",
    )
    parser.add_argument(
        "--option-steps",
        type=int,
        default=None,
        help="timed steps per task of each memory option (default: 1 on "
        "CPU, 5 on CUDA)",
    )
    parser.add_argument(
        "--memory-options",
        choices=["on", "off"],
        default="on",
        help="also time the YAML's memory options (default: on)",
    )
    parser.add_argument(
        "--flops",
        choices=["auto", "on", "off"],
        default="auto",
        help="count FLOPs for the MFU (auto: on with CUDA)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="dense bf16 peak of the device, for the MFU",
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="where the random models are saved (reused if there); "
        "default: a temporary folder",
    )
    parser.add_argument("--seed", type=int, default=1986)
    parser.add_argument("--json", help="also write the results here")
    return parser.parse_args(argv)


def log(message):
    """Prints at once (the benchmark runs for minutes)."""
    print(message, flush=True)


# ---------------------------------------------------------------- models


def word_vocabulary(count):
    """Pseudo-words for the tokenizer and the transcripts."""
    letters = "bcdfghjklmnprstvz"
    vowels = "aeiou"
    words = []
    for i in range(count):
        a, b = divmod(i, len(vowels))
        c, d = divmod(a, len(letters))
        words.append(letters[d] + vowels[b] + letters[c % len(letters)])
    return sorted(set(words))


def build_models(size, workdir):
    """Saves the random WavLM and LLM (and a tokenizer) under ``workdir``.

    Returns
    -------
    dict
        ``wavlm`` and ``llm`` folders, and ``words`` (the transcript words,
        one token each).
    """
    from transformers import (
        Qwen2Config,
        Qwen2ForCausalLM,
        Wav2Vec2FeatureExtractor,
        WavLMConfig,
        WavLMModel,
    )

    from harmonifuse_sb.tokenizer import build_bpe_tokenizer

    spec = SIZES[size]
    wavlm = os.path.join(workdir, f"wavlm_{size}")
    llm = os.path.join(workdir, f"llm_{size}")
    words = word_vocabulary(1000)
    if not os.path.exists(os.path.join(wavlm, "config.json")):
        log(f"building a random WavLM ({size}) in {wavlm}")
        torch.manual_seed(0)
        WavLMModel(WavLMConfig(**spec["wavlm"])).save_pretrained(wavlm)
        Wav2Vec2FeatureExtractor(
            return_attention_mask=True, do_normalize=True
        ).save_pretrained(wavlm)
    if not os.path.exists(os.path.join(llm, "config.json")):
        log(f"building a random Qwen2 LLM ({size}) in {llm}")
        # The chat template's markers and the prompts are words too.
        tokenizer = build_bpe_tokenizer(
            words
            + [" ".join(words)]
            + ["<|im_start|>", "<|im_end|>", "user", "assistant"]
        )
        config = Qwen2Config(
            **dict(
                spec["llm"],
                vocab_size=max(spec["llm"]["vocab_size"], len(tokenizer)),
            ),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.eos_token_id,
        )
        torch.manual_seed(0)
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # built in bf16: half the RAM
        try:
            model = Qwen2ForCausalLM(config)
        finally:
            torch.set_default_dtype(default_dtype)
        model.save_pretrained(llm)
        tokenizer.save_pretrained(llm)
        del model
        gc.collect()
    return {"wavlm": wavlm, "llm": llm, "words": words}


def load_hparams(models, size, workdir, extra=None):
    """Loads the paper's YAML with the benchmark's models and sizes."""
    from hyperpyyaml import load_hyperpyyaml

    overrides = {
        "data_folder": workdir,  # not read: no data preparation runs
        "iemocap_folder": workdir,
        "output_folder": os.path.join(workdir, "out"),
        "wavlm_source": models["wavlm"],
        "llm_source": models["llm"],
        **SIZES[size]["overrides"],
        **(extra or {}),
    }
    with open(PAPER_YAML, encoding="utf-8") as f:
        return load_hyperpyyaml(f, overrides)


# ---------------------------------------------------------------- batches


def draw_durations(rng, task, max_seconds):
    """One batch's utterance durations (seconds), as described above."""
    dist = DURATIONS[task]
    longest = min(dist["max"], max_seconds)
    duration = min(
        max(rng.gauss(dist["mean"], dist["std"]), dist["min"]), longest
    )
    count = max(1, int(max_seconds // duration))
    return [duration] + [
        duration * rng.uniform(0.9, 1.0) for _ in range(count - 1)
    ]


def make_batch(rng, task, max_seconds, words, emotions):
    """A ``MultiTaskBatch`` of noise with transcripts or labels."""
    from harmonifuse_sb.interleaving import multitask_collate

    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    items = []
    for i, duration in enumerate(draw_durations(rng, task, max_seconds)):
        n_samples = int(round(duration * SAMPLE_RATE))
        item = {
            "id": f"{task}{i}",
            "sig": 0.1 * torch.randn(n_samples, generator=generator),
            "task": task,
        }
        if task == "asr":
            n_words = max(1, round(duration * ASR_TOKENS_PER_SECOND))
            item["wrd_norm"] = " ".join(rng.choices(words, k=n_words))
        else:
            item["emo_encoded"] = torch.tensor([rng.randrange(len(emotions))])
        items.append(item)
    return multitask_collate(items)


def llm_tokens(model, batch):
    """LLM positions of a batch without padding.

    Prompt, speech tokens, suffix and (ASR) transcript with EOS.
    """
    part = batch.asr if batch.asr is not None else batch.ser
    encoder, slm = model.encoder, model.speech_lm
    n_samples = torch.round(part.sig.lengths * part.sig.data.shape[1]).long()
    n_frames = encoder.model._get_feat_extract_output_lengths(n_samples)
    stack = model.projector.stack
    speech = int(sum(math.ceil(int(n) / stack) for n in n_frames))
    prompt = len(slm.prompt_ids([model.prompts[batch.task]])[0])
    fixed = (prompt + len(slm.suffix_ids)) * len(n_samples)
    response = 0
    if batch.asr is not None:
        response = sum(len(t) + 1 for t in slm.tokenize(batch.asr.wrd_norm))
    return speech + fixed + response


def audio_seconds(batch):
    """Seconds of audio in a batch (padding excluded)."""
    part = batch.asr if batch.asr is not None else batch.ser
    total = float(part.sig.lengths.sum()) * part.sig.data.shape[1]
    return total / SAMPLE_RATE


# ---------------------------------------------------------------- memory


class MemoryMeter:
    """Peak memory of a step: CUDA allocator or process RSS."""

    def __init__(self, device):
        self.cuda = device.startswith("cuda")
        self._libc = None
        if not self.cuda:
            with contextlib.suppress(OSError):
                self._libc = ctypes.CDLL("libc.so.6")

    def current(self):
        """Bytes in use now."""
        if self.cuda:
            return torch.cuda.memory_allocated()
        return self._status("VmRSS")

    def reset_peak(self):
        """Starts a new peak measurement; returns the bytes in use."""
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        gc.collect()
        if self._libc is not None:
            self._libc.malloc_trim(0)  # freed heap back to the system
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return self._status("VmRSS")

    def peak(self):
        """Peak bytes since ``reset_peak``."""
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return self._status("VmHWM")

    @staticmethod
    def _status(field):
        with open("/proc/self/status", encoding="ascii") as f:
            match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
        return int(match[1]) * 1024


def tensor_bytes(tensors):
    """Bytes held by tensors (each storage once)."""
    seen, total = set(), 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def weight_memory(model):
    """Bytes of the weights by part: frozen encoder, frozen LLM, trainable."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen_encoder = [
        p for p in model.encoder.parameters() if not p.requires_grad
    ]
    frozen_llm = [
        p for p in model.speech_lm.parameters() if not p.requires_grad
    ]
    return {
        "encoder (frozen)": tensor_bytes(frozen_encoder),
        "LLM (frozen)": tensor_bytes(frozen_llm),
        "trainable": tensor_bytes(trainable),
        "trainable parameters": sum(p.numel() for p in trainable),
    }


def optimizer_memory(optimizer):
    """Bytes of the optimiser's state tensors."""
    tensors = [
        value
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value)
    ]
    return tensor_bytes(tensors)


# ---------------------------------------------------------------- steps


class Configuration:
    """A model and its brain, with the memory options applied."""

    def __init__(self, name, model, hparams, device, options=()):
        from harmonifuse_sb.brain import HarmoniFuseBrain

        self.name = name
        self.model = model
        self.options = set(options)
        self.brain = HarmoniFuseBrain(
            modules={"model": model},
            opt_class=hparams["opt_class"],
            hparams=hparams,
            run_opts={"device": device, "noprogressbar": True},
        )
        self.brain.on_fit_start()  # optimiser, as Brain.fit does
        self.brain.on_stage_start(sb_stage("TRAIN"), 1)
        self.brain.modules.train()

    @contextlib.contextmanager
    def applied(self):
        """The memory options of this configuration, on the shared lobes.

        The options are those of the YAML (``llm_gradient_checkpointing``,
        ``encoder_output_dtype``), set on the loaded lobes here so that one
        loaded model serves every configuration.
        """
        from harmonifuse_sb.lobes.speech_lm import set_activation_checkpointing

        llm = self.model.speech_lm.causal_lm
        encoder = self.model.encoder
        dtype = encoder.output_dtype
        if "checkpointing" in self.options:
            set_activation_checkpointing(llm, True)
        if "bf16_hidden" in self.options:
            encoder.output_dtype = torch.bfloat16
        try:
            yield
        finally:
            if "checkpointing" in self.options:
                set_activation_checkpointing(llm, False)
            encoder.output_dtype = dtype

    def step(self, batch):
        """One ``fit_batch``: the loss."""
        with self.applied():
            self.brain.step += 1
            return float(self.brain.fit_batch(batch))


def sb_stage(name):
    """A SpeechBrain stage by name."""
    import speechbrain as sb

    return getattr(sb.Stage, name)


def count_flops(config, batch):
    """FLOPs of one training step on ``batch`` (see the module docstring).

    The replay updates the weights once more, which changes no timing.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        config.step(batch)
    return counter.get_total_flops()


def sync(device):
    """Waits for the GPU's queued work (for timing)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def batch_facts(config, batch):
    """What a step on ``batch`` processes: audio seconds, LLM tokens,
    utterances.
    """
    return {
        "audio_s": audio_seconds(batch),
        "tokens": llm_tokens(config.model, batch),
        "utterances": len(batch),
    }


def turn_order(configs, turn):
    """The configurations in the order they step on a batch: turn ``t``
    starts with ``configs[t % len(configs)]``, so over a task's batches
    each goes first equally often.

    Example
    -------
    >>> [turn_order(["a", "b", "c"], t) for t in range(3)]
    [['a', 'b', 'c'], ['b', 'c', 'a'], ['c', 'a', 'b']]
    """
    shift = turn % len(configs)
    return configs[shift:] + configs[:shift]


def run_steps(
    configs,
    batches,
    device,
    meter,
    flops,
    warmup=1,
    rounds=1,
    first_round=0,
    facts=batch_facts,
):
    """Runs every configuration on the same batches, taking turns.

    The first use of a batch shape costs far more than the next ones (on
    CUDA about 10x a step: kernels chosen, memory allocated), and which
    configuration meets a shape first would pay it. So every configuration
    first steps on every batch ``warmup`` times untimed; then ``rounds``
    timed passes follow. In every pass each configuration steps on a
    batch before the next batch comes (a change of machine load hits all
    alike), and the one that goes first rotates from batch to batch of a
    task (:func:`turn_order`).

    Arguments
    ---------
    configs : list
        Objects with ``name`` and ``step(batch) -> loss``.
    batches : list
        ``MultiTaskBatch`` es (``task`` attribute).
    device : str
        For synchronisation.
    meter : MemoryMeter
        Peak memory of each step.
    flops : bool
        Whether to count each (configuration, batch)'s FLOPs once, in its
        first timed step.
    warmup : int
        Untimed passes first.
    rounds : int
        Timed passes.
    first_round : int
        Number of this call's first timed pass (to continue a run).
    facts : callable
        ``facts(config, batch) -> dict`` stored in each record.

    Returns
    -------
    dict
        Per configuration name, a list of per-step records (``batch``:
        index in ``batches``, ``round``: the timed pass, None in warm-up).
    """
    records = {config.name: [] for config in configs}
    passes = [None] * warmup + list(range(first_round, first_round + rounds))
    counts = collections.Counter(batch.task for batch in batches)
    positions = []  # each batch's index among its task's batches
    seen = collections.Counter()
    for batch in batches:
        positions.append(seen[batch.task])
        seen[batch.task] += 1
    for number, pass_round in enumerate(passes):
        timed = pass_round is not None
        for index, batch in enumerate(batches):
            # The rotation continues from pass to pass (and from a call
            # to the next one, through first_round).
            turn = positions[index] + counts[batch.task] * (
                pass_round if timed else number
            )
            for config in turn_order(configs, turn):
                before = meter.reset_peak()
                sync(device)
                start = time.perf_counter()
                loss = config.step(batch)
                sync(device)
                seconds = time.perf_counter() - start
                peak = meter.peak()
                record = {
                    "batch": index,
                    "task": batch.task,
                    "timed": timed,
                    "round": pass_round,
                    "seconds": seconds,
                    "loss": loss,
                    **facts(config, batch),
                    "mem_before": before,
                    "mem_peak": peak,
                }
                if flops and pass_round == 0:
                    record["flops"] = count_flops(config, batch)
                records[config.name].append(record)
                log(
                    f"  {config.name:<28} {batch.task} batch {index + 1} "
                    f"{'warm-up' if not timed else f'round {pass_round + 1}'}"
                    f": {seconds:7.2f} s  {record['audio_s']:6.1f} s audio  "
                    f"{record['tokens']:5d} tokens  loss {loss:.3f}  "
                    f"peak {peak / GiB:6.2f} GiB"
                )
    return records


def paired_ratio(records_a, records_b, task=None):
    """Step time of ``a`` over ``b`` on the same batches, with its 95 %
    interval.

    Each timed step of ``a`` is paired with ``b``'s on the same batch and
    round; the ratio is the geometric mean of the paired ratios, the
    interval Student's t interval of the mean log ratio (which the pairing
    frees of the batches' sizes).

    Arguments
    ---------
    records_a, records_b : list of dict
        Records of :func:`run_steps`.
    task : str, optional
        Only this task's steps.

    Returns
    -------
    dict
        ``ratio``, ``low``, ``high`` (0 and inf with fewer than two
        pairs), ``n``.

    Example
    -------
    >>> a = [{"batch": i, "round": 0, "timed": True, "task": "asr",
    ...       "seconds": s} for i, s in enumerate([2.0, 4.2, 3.0])]
    >>> b = [dict(r, seconds=1.0 + (r["batch"] == 1)) for r in a]
    >>> out = paired_ratio(a, b)
    >>> round(out["ratio"], 3), out["n"], out["low"] < 2 < out["high"]
    (2.327, 3, True)
    """
    from scipy.stats import t as student

    def key(record):
        return record["batch"], record["round"]

    def steps(records):
        return {
            key(r): r["seconds"]
            for r in records
            if r["timed"] and (task is None or r["task"] == task)
        }

    times_a, times_b = steps(records_a), steps(records_b)
    logs = [math.log(times_a[k] / times_b[k]) for k in times_a if k in times_b]
    if not logs:
        raise ValueError(
            f"No timed steps{f' of task {task}' if task else ''} of both "
            "configurations on the same batch and round."
        )
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        low, high = 0.0, math.inf
    else:
        half = student.ppf(0.975, len(logs) - 1) * statistics.stdev(logs)
        half /= math.sqrt(len(logs))
        low, high = math.exp(mean - half), math.exp(mean + half)
    return {
        "ratio": math.exp(mean),
        "low": low,
        "high": high,
        "n": len(logs),
    }


def main_ratios(records):
    """HarmoniFuse / plain per task and over all steps, and the A/A
    control (the copy / HarmoniFuse), as :func:`paired_ratio` gives them.
    """
    harmonifuse = records["harmonifuse"]
    plain = records["plain (static, gate off)"]
    ratios = {
        task: paired_ratio(harmonifuse, plain, task)
        for task in ("asr", "ser")
        if any(r["task"] == task and r["timed"] for r in harmonifuse)
    }
    ratios["all steps"] = paired_ratio(harmonifuse, plain)
    ratios["A/A"] = paired_ratio(records[AA_NAME], harmonifuse)
    return ratios


def within(interval, target):
    """Whether a ratio's interval lies within +-``target`` of it."""
    return interval["high"] <= interval["ratio"] * (1 + target) and interval[
        "low"
    ] >= interval["ratio"] * (1 - target)


def format_ratio(interval):
    """``X [lo, hi]``."""
    return (
        f"{interval['ratio']:.3f} [{interval['low']:.3f}, "
        f"{interval['high']:.3f}]"
    )


def summarise(records, peak_tflops, model_flops=None):
    """Per task: medians and rates of the timed steps.

    ``model_flops`` (batch index -> FLOPs) gives the FLOPs that the MFU
    counts, for a configuration whose own count includes recomputation;
    by default the configuration's own counts.
    """
    summary = {}
    for task in ("asr", "ser"):
        steps = [r for r in records if r["task"] == task and r["timed"]]
        if not steps:
            continue
        seconds = sum(r["seconds"] for r in steps)
        audio = sum(r["audio_s"] for r in steps)
        row = {
            "steps": len(steps),
            "s_per_step": statistics.median(r["seconds"] for r in steps),
            "audio_s_per_step": audio / len(steps),
            "audio_s_per_s": audio / seconds,
            "tokens_per_s": sum(r["tokens"] for r in steps) / seconds,
            "peak_bytes": max(r["mem_peak"] for r in steps),
            "activation_bytes_per_audio_s": max(
                (r["mem_peak"] - r["mem_before"]) / r["audio_s"] for r in steps
            ),
        }
        counted = [r["flops"] for r in steps if "flops" in r]
        if counted:  # counted once per batch, in the first timed round
            row["executed_flops_per_step"] = statistics.mean(counted)
        flops = model_flops or {
            r["batch"]: r["flops"] for r in steps if "flops" in r
        }
        if all(r["batch"] in flops for r in steps):
            total = sum(flops[r["batch"]] for r in steps)
            row["model_flops_per_step"] = total / len(steps)
            row["model_tflops_per_s"] = total / seconds / 1e12
            if peak_tflops:
                row["mfu"] = row["model_tflops_per_s"] / peak_tflops
        summary[task] = row
    return summary


def device_peak_tflops(device, given):
    """The device's dense bf16 peak (TFLOPS), or None if unknown."""
    if given is not None or not device.startswith("cuda"):
        return given
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def print_table(results, device):
    """The summary table."""
    mem_name = "peak alloc" if device.startswith("cuda") else "peak RSS"
    log("")
    log(
        f"{'configuration':<28} task  s/step  audio s/s  tokens/s  "
        f"{mem_name:>10}  act. MiB/audio s  TFLOP/s  MFU"
    )
    for name, summary in results.items():
        for task, row in summary.items():
            mfu = f"{100 * row['mfu']:.1f}%" if "mfu" in row else "-"
            tflops = row.get("model_tflops_per_s")
            tflops = "-" if tflops is None else f"{tflops:.3g}"
            log(
                f"{name:<28} {task:<4} {row['s_per_step']:7.2f} "
                f"{row['audio_s_per_s']:10.1f} {row['tokens_per_s']:9.0f} "
                f"{row['peak_bytes'] / GiB:7.2f} GiB "
                f"{row['activation_bytes_per_audio_s'] / MiB:17.1f}  "
                f"{tflops:>7}  {mfu}"
            )


def main(argv=None):
    """Builds, loads and times; prints the tables; returns the results."""
    args = parse_args(argv)
    sys.path.insert(0, ROOT)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible.")
    steps = args.steps or (10 if device == "cuda" else 2)
    target = (
        args.interval
        if args.interval is not None
        else (0.03 if device == "cuda" else 0.0)
    )
    max_rounds = args.max_rounds or (5 if device == "cuda" and target else 1)
    flops = args.flops == "on" or (args.flops == "auto" and device == "cuda")
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_train_")
    os.makedirs(workdir, exist_ok=True)
    meter = MemoryMeter(device)
    log(
        f"bench_train: size={args.size} device={device} "
        f"threads={torch.get_num_threads()} steps={steps} "
        f"warmup={args.warmup} workdir={workdir}"
    )
    if device == "cuda":
        log(f"GPU: {torch.cuda.get_device_name()}")

    started = time.perf_counter()
    models = build_models(args.size, workdir)
    log(f"models ready in {time.perf_counter() - started:.0f} s")

    from train import build_model

    rss_start = meter.current()
    started = time.perf_counter()
    hparams = load_hparams(models, args.size, workdir)
    model = build_model(hparams)
    # The plain speech LM of the ablations: the same YAML, static fusion,
    # no gate, the SER head on the LLM's last layer; it shares the (frozen)
    # encoder and the LLM with its adapters.
    plain_hparams = load_hparams(
        models,
        args.size,
        workdir,
        {
            "fusion": {"mode": "static"},
            "gate": {"enabled": False},
            "llm_fusion": {"mode": "last"},
        },
    )
    plain = plain_hparams["model"](
        speech_lm=model.speech_lm, encoder=model.encoder
    )
    del plain_hparams["encoder"]
    gc.collect()
    log(
        f"loaded through {os.path.relpath(PAPER_YAML, ROOT)} in "
        f"{time.perf_counter() - started:.0f} s"
    )

    weights = weight_memory(model)
    llm_dtype = next(model.speech_lm.causal_lm.parameters()).dtype
    log(
        f"weights: encoder {weights['encoder (frozen)'] / GiB:.2f} GiB "
        f"(fp32, frozen), LLM {weights['LLM (frozen)'] / GiB:.2f} GiB "
        f"({str(llm_dtype).replace('torch.', '')}, frozen), trainable "
        f"{weights['trainable'] / MiB:.1f} MiB "
        f"({weights['trainable parameters'] / 1e6:.2f} M parameters, fp32)"
    )
    if device == "cpu":
        log(
            f"RSS after loading: {meter.current() / GiB:.2f} GiB "
            f"(+{(meter.current() - rss_start) / GiB:.2f} GiB)"
        )

    batch_seconds = {
        "asr": args.batch_seconds or DEFAULT_BATCH_SECONDS[device]["asr"],
        "ser": args.ser_batch_seconds or DEFAULT_BATCH_SECONDS[device]["ser"],
    }
    for task in batch_seconds:
        if batch_seconds[task] is None:
            batch_seconds[task] = hparams["dynamic_batching"][task][
                "max_batch_length"
            ]
    log(
        f"batches: up to {batch_seconds['asr']:.0f} s (ASR), "
        f"{batch_seconds['ser']:.0f} s (SER) of audio"
    )
    rng = random.Random(args.seed)
    batches = []
    for _ in range(steps):
        for task in ("asr", "ser"):
            batches.append(
                make_batch(
                    rng,
                    task,
                    batch_seconds[task],
                    models["words"],
                    hparams["emotions"],
                )
            )

    plain_name = "plain (static, gate off)"
    configs = [
        Configuration("harmonifuse", model, hparams, device),
        Configuration(plain_name, plain, hparams, device),
        # The A/A control: HarmoniFuse once more, as if it were another
        # configuration; its ratio to HarmoniFuse shows what the method
        # reads into two identical configurations.
        Configuration(AA_NAME, model, hparams, device),
    ]
    log(
        "\nHarmoniFuse, the plain speech LM and HarmoniFuse again (A/A), "
        "taking turns:"
    )
    records = run_steps(
        configs, batches, device, meter, flops, warmup=args.warmup, rounds=1
    )
    rounds = 1
    while rounds < max_rounds and not all(
        within(r, target) for r in main_ratios(records).values()
    ):
        log(
            f"  the intervals are wider than +-{100 * target:.0f} %: round "
            f"{rounds + 1}"
        )
        more = run_steps(
            configs,
            batches,
            device,
            meter,
            False,
            warmup=0,
            rounds=1,
            first_round=rounds,
        )
        for name, recs in more.items():
            records[name] += recs
        rounds += 1
    optimizer_bytes = optimizer_memory(configs[0].brain.optimizer)
    log(f"AdamW state (HarmoniFuse): {optimizer_bytes / MiB:.1f} MiB")
    peak_tflops = device_peak_tflops(device, args.peak_tflops)
    results = {
        name: summarise(recs, peak_tflops)
        for name, recs in records.items()
        if name != AA_NAME
    }
    checks = training_checks(model, records["harmonifuse"], llm_dtype)

    options, option_records = {}, {}
    if args.memory_options == "on":
        for config in configs[1:]:  # their optimiser states go
            config.brain = None
        del configs[1:]
        gc.collect()
        variants = [
            ("+ LLM checkpointing", ["checkpointing"]),
            ("+ bf16 encoder outputs", ["bf16_hidden"]),
            ("+ both", ["checkpointing", "bf16_hidden"]),
        ]
        option_configs = [configs[0]]
        for name, opts in variants:
            option_configs.append(
                Configuration(name, model, hparams, device, opts)
            )
        # The first batches of the run above, every shape warmed again in
        # every configuration (checkpointing runs other kernels).
        option_steps = args.option_steps or (1 if device == "cpu" else 5)
        log("\nMemory options (HarmoniFuse), taking turns:")
        option_records = run_steps(
            option_configs,
            batches[: 2 * option_steps],
            device,
            meter,
            flops,
            warmup=args.warmup,
            rounds=1,
        )
        model_flops = {
            r["batch"]: r["flops"]
            for r in records["harmonifuse"]
            if "flops" in r
        }
        for name in ["harmonifuse"] + [name for name, _ in variants]:
            options[name] = summarise(
                option_records[name], peak_tflops, model_flops or None
            )
        results.update(
            {
                name: rows
                for name, rows in options.items()
                if name != "harmonifuse"
            }
        )

    print_table(results, device)
    ratios = main_ratios(records)
    log("")
    log(
        "HarmoniFuse / plain step time (paired, geometric mean [95 % "
        "interval]): "
        + ", ".join(
            f"{k} {format_ratio(v)}" for k, v in ratios.items() if k != "A/A"
        )
    )
    log(f"A/A control: {format_ratio(ratios['A/A'])}")
    if target:
        wide = [k for k, v in ratios.items() if not within(v, target)]
        log(
            f"intervals within +-{100 * target:.0f} % after {rounds} "
            f"round(s): " + ("all" if not wide else f"not {', '.join(wide)}")
        )
    savings = {}
    if options:
        for name, summary in options.items():
            if name == "harmonifuse":
                continue
            savings[name] = {}
            for task, row in summary.items():
                base_row = options["harmonifuse"][task]
                savings[name][task] = {
                    "activation_saving": 1
                    - row["activation_bytes_per_audio_s"]
                    / base_row["activation_bytes_per_audio_s"],
                    "time_ratio": paired_ratio(
                        option_records[name],
                        option_records["harmonifuse"],
                        task,
                    )["ratio"],
                }
                log(
                    f"{name:<24} {task}: activations "
                    f"{-100 * savings[name][task]['activation_saving']:+.0f}%"
                    f", step time x{savings[name][task]['time_ratio']:.2f}"
                )
    log(f"checks: {json.dumps(checks)}")
    output = {
        "size": args.size,
        "device": device,
        "device_name": (
            torch.cuda.get_device_name() if device == "cuda" else "cpu"
        ),
        "threads": torch.get_num_threads(),
        "batch_seconds": batch_seconds,
        "weights_bytes": weights,
        "optimizer_bytes": optimizer_bytes,
        "results": results,
        "ratios": ratios,
        "memory_option_savings": savings,
        "checks": checks,
        "records": {**records},
    }
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(output, f, indent=1)
    return output


def training_checks(model, records, llm_dtype):
    """What must hold after the steps.

    Finite losses, the LLM in its YAML dtype and frozen, LoRA adapters in
    fp32 and updated, the encoder frozen.
    """
    slm = model.speech_lm
    lora = [
        (name, p) for name, p in slm.model.named_parameters() if "lora_" in name
    ]
    return {
        "losses_finite": all(math.isfinite(r["loss"]) for r in records),
        "llm_dtype": str(llm_dtype).replace("torch.", ""),
        "llm_base_frozen": not any(
            p.requires_grad
            for name, p in slm.model.named_parameters()
            if "lora_" not in name
        ),
        "lora_parameters": sum(p.numel() for _, p in lora),
        "lora_fp32": all(p.dtype == torch.float32 for _, p in lora),
        # peft initialises B to zero: non-zero after training steps.
        "lora_updated": any(
            bool(p.detach().abs().sum() > 0)
            for name, p in lora
            if "lora_B" in name
        ),
        "encoder_frozen": not any(
            p.requires_grad for p in model.encoder.parameters()
        ),
    }


if __name__ == "__main__":
    main()
