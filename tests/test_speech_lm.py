"""Tests of the speech LM, the word tokenizer and the composed HarmoniFuse.

Tiny random causal LMs (Qwen2, Llama, GPT-2) with a word-level tokenizer are
written to temporary folders and loaded by path, as a hub model would be.
"""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from speechbrain.utils.checkpoints import Checkpointer

from harmonifuse_sb.lobes import (
    ConformerSpeechEncoder,
    PromptAdaptiveFusion,
    SpeechLM,
    SpeechProjector,
    TaskGate,
)
from harmonifuse_sb.lobes.speech_lm import IGNORE_INDEX, make_tiny_causal_lm
from harmonifuse_sb.model import HarmoniFuse
from harmonifuse_sb.tokenizer import build_bpe_tokenizer, prepare_tiny_llm

WORDS = (
    "a b c d e f g h transcribe emotion what is the said assistant "
    "neutral happy sad angry"
).split()
# What make_tiny_causal_lm trains its tokenizer on: the words and a sentence
TOKENIZER_TEXTS = WORDS + [" ".join(WORDS)]
LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
ARCHS = ["qwen2", "llama", "gpt2"]


def save_tiny_lm(folder, arch):
    """Writes a tiny random causal LM of ``arch`` and a word tokenizer."""
    if arch == "qwen2":
        return make_tiny_causal_lm(folder, vocab=WORDS)
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    tokenizer = build_bpe_tokenizer(TOKENIZER_TEXTS)
    ids = {
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=256,
                tie_word_embeddings=False,
                **ids,
            )
        )
    else:
        model = GPT2LMHeadModel(
            GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, **ids)
        )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory):
    """One folder per architecture, written once for the module."""
    return {
        arch: save_tiny_lm(str(tmp_path_factory.mktemp(arch)), arch)
        for arch in ARCHS
    }


@pytest.fixture(scope="module")
def qwen_dir(lm_dirs):
    return lm_dirs["qwen2"]


def speech_for(slm, speech_lens, seed=0):
    """Random speech (B, T, E) with garbage beyond each item's length."""
    gen = torch.Generator().manual_seed(seed)
    time = max(speech_lens)
    speech = torch.randn(len(speech_lens), time, slm.hidden_size, generator=gen)
    for i, n in enumerate(speech_lens):
        speech[i, n:] = 1e3  # must never be read
    return speech, torch.tensor(speech_lens)


def example_batch(slm):
    """Three items whose prompt, speech and response lengths all differ."""
    prompt_ids = slm.prompt_ids(["transcribe", "what is the emotion", "a b"])
    speech, lens = speech_for(slm, [3, 6, 1])
    responses = slm.tokenize(["a b c", "happy", "d e f g h"], add_eos=True)
    return prompt_ids, speech, lens, responses


# --------------------------------------------------------------------------
# SpeechLM: input layout, padding invariance, loss
# --------------------------------------------------------------------------


def test_build_inputs_layout(qwen_dir):
    slm = SpeechLM(
        qwen_dir, prompt_format="what is {prompt}", speech_suffix="assistant"
    ).eval()
    prompt_ids, speech, lens, responses = example_batch(slm)
    assert prompt_ids[0] == slm.tokenize(["what is transcribe"])[0]
    assert slm.suffix_ids == slm.tokenize(["assistant"])[0]
    inputs = slm.build_inputs(prompt_ids, speech, lens, responses)
    n_prefix = [len(p) + int(n) + 1 for p, n in zip(prompt_ids, lens)]
    prefix_len = inputs["prefix_len"]
    assert prefix_len == max(n_prefix)
    width = prefix_len + max(len(r) for r in responses)
    assert inputs["inputs_embeds"].shape == (3, width, slm.hidden_size)
    embed = slm.causal_lm.get_input_embeddings()
    for i in range(3):
        start = prefix_len - n_prefix[i]
        end = prefix_len + len(responses[i])
        mask = inputs["attention_mask"][i]
        assert mask[:start].sum() == 0 and mask[end:].sum() == 0
        assert bool(mask[start:end].all())
        emb = inputs["inputs_embeds"][i]
        assert torch.equal(emb[:start], torch.zeros_like(emb[:start]))
        assert torch.equal(emb[end:], torch.zeros_like(emb[end:]))
        n_p, n_s = len(prompt_ids[i]), int(lens[i])
        with torch.no_grad():
            expected = torch.cat(
                [
                    embed(torch.tensor(prompt_ids[i])),
                    speech[i, :n_s],
                    embed(torch.tensor(slm.suffix_ids)),
                    embed(torch.tensor(responses[i])),
                ]
            )
        assert torch.equal(emb[start:end], expected)
        # the prefix ends at the same column for every item
        assert start + n_p + n_s + 1 == prefix_len
        labels = inputs["labels"][i]
        assert labels[prefix_len:end].tolist() == responses[i]
        assert bool((labels[:prefix_len] == IGNORE_INDEX).all())
        assert bool((labels[end:] == IGNORE_INDEX).all())
        # position ids count real tokens only
        positions = inputs["position_ids"][i, start:end]
        assert positions.tolist() == list(range(end - start))


@pytest.mark.parametrize("arch", ARCHS)
def test_padding_invariance(lm_dirs, arch):
    slm = SpeechLM(lm_dirs[arch], num_classes=3, speech_suffix="assistant")
    slm.eval()
    prompt_ids, speech, lens, responses = example_batch(slm)
    with torch.no_grad():
        batch = slm(prompt_ids, speech, lens, responses)
        worst = 0.0
        for i in range(3):
            n = int(lens[i])
            alone = slm(
                [prompt_ids[i]],
                speech[i : i + 1, :n],
                lens[i : i + 1],
                [responses[i]],
            )
            n_resp = len(responses[i])
            worst = max(
                worst,
                (alone["prefix_hidden"][0] - batch["prefix_hidden"][i])
                .abs()
                .max()
                .item(),
                (alone["logits"][0] - batch["logits"][i, :n_resp])
                .abs()
                .max()
                .item(),
            )
    assert batch["logits"].shape[:2] == (3, max(len(r) for r in responses))
    assert worst < 1e-4, worst


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_is_token_cross_entropy(lm_dirs, arch):
    slm = SpeechLM(lm_dirs[arch], speech_suffix="assistant").eval()
    prompt_ids, speech, lens, responses = example_batch(slm)
    with torch.no_grad():
        out = slm(prompt_ids, speech, lens, responses)
        # by hand from the returned logits
        total, count = 0.0, 0
        for i, resp in enumerate(responses):
            logp = out["logits"][i].log_softmax(-1)
            for j, token in enumerate(resp):
                total -= logp[j, token].item()
                count += 1
        manual = total / count
        # and as transformers computes it, with labels aligned to the inputs
        inputs = out["inputs"]
        reference = slm.causal_lm(
            inputs_embeds=inputs["inputs_embeds"],
            attention_mask=inputs["attention_mask"],
            position_ids=inputs["position_ids"],
            labels=inputs["labels"],
        ).loss
    assert abs(out["loss"].item() - manual) < 1e-5
    assert abs(out["loss"].item() - reference.item()) < 1e-5
    assert count == sum(len(r) for r in responses)


# --------------------------------------------------------------------------
# SpeechLM: decoding and scoring
# --------------------------------------------------------------------------


def greedy_without_cache(slm, prompt_ids, speech, lens, steps):
    """Greedy decoding that re-runs the whole sequence at every step."""
    hyps = [[] for _ in prompt_ids]
    with torch.no_grad():
        for _ in range(steps):
            inputs = slm.build_inputs(prompt_ids, speech, lens, hyps)
            logits = slm.causal_lm(
                inputs_embeds=inputs["inputs_embeds"],
                attention_mask=inputs["attention_mask"],
                position_ids=inputs["position_ids"],
                use_cache=False,
            ).logits[:, -1]  # (B, V)
            for hyp, token in zip(hyps, logits.argmax(-1).tolist()):
                hyp.append(token)
    return [h[: h.index(slm.eos_id)] if slm.eos_id in h else h for h in hyps]


def sharpen(slm, scale=30.0):
    """Scales the LM head so that a random LM has clear argmaxes."""
    with torch.no_grad():
        slm.causal_lm.get_output_embeddings().weight.mul_(scale)


def generate_alone(slm, prompt_ids, speech, lens, i, **kwargs):
    """Decodes item ``i`` of a batch on its own, without any padding."""
    n = int(lens[i])
    return slm.generate(
        [prompt_ids[i]], speech[i : i + 1, :n], lens[i : i + 1], **kwargs
    )[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_greedy_equals_uncached(lm_dirs, arch):
    slm = SpeechLM(lm_dirs[arch], speech_suffix="assistant").eval()
    sharpen(slm)
    prompt_ids, speech, lens, _ = example_batch(slm)
    steps = 8
    cached = slm.generate(prompt_ids, speech, lens, max_new_tokens=steps)
    reference = greedy_without_cache(slm, prompt_ids, speech, lens, steps)
    assert cached == reference
    assert len(cached) == 3
    assert min(len(h) for h in cached) >= 3  # not an immediate EOS
    # the item with the most left padding gives the same alone
    assert (
        generate_alone(slm, prompt_ids, speech, lens, 2, max_new_tokens=steps)
        == cached[2]
    )


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_beam_search(lm_dirs, arch):
    slm = SpeechLM(lm_dirs[arch], speech_suffix="assistant").eval()
    sharpen(slm, 10.0)
    prompt_ids, speech, lens, _ = example_batch(slm)
    reference = greedy_without_cache(slm, prompt_ids, speech, lens, 6)
    one_beam = slm.generate(
        prompt_ids, speech, lens, max_new_tokens=6, num_beams=1
    )
    assert one_beam == reference
    beams = slm.generate(
        prompt_ids, speech, lens, max_new_tokens=6, num_beams=3
    )
    assert len(beams) == 3
    assert all(isinstance(t, int) for hyp in beams for t in hyp)
    assert all(slm.eos_id not in hyp for hyp in beams)
    assert all(0 < len(hyp) <= 6 for hyp in beams)
    # batched beam search gives each item what it gets alone
    for i in (0, 2):
        alone = generate_alone(
            slm, prompt_ids, speech, lens, i, max_new_tokens=6, num_beams=3
        )
        assert alone == beams[i]


@pytest.mark.parametrize("arch", ARCHS)
def test_score_candidates_by_hand(lm_dirs, arch):
    slm = SpeechLM(lm_dirs[arch], speech_suffix="assistant").eval()
    prompt_ids, speech, lens, _ = example_batch(slm)
    candidates = slm.tokenize(["neutral", "happy", "sad angry"], add_eos=True)
    with torch.no_grad():
        scores = slm.score_candidates(prompt_ids, speech, lens, candidates)
        embed = slm.causal_lm.get_input_embeddings()
        expected = torch.zeros(3, 3)
        for i in range(3):
            n = int(lens[i])
            for k, cand in enumerate(candidates):
                text = torch.tensor(slm.suffix_ids + cand)
                seq = torch.cat(
                    [
                        embed(torch.tensor(prompt_ids[i])),
                        speech[i, :n],
                        embed(text),
                    ]
                )
                logp = slm.causal_lm(inputs_embeds=seq[None]).logits[0]
                logp = logp.log_softmax(-1)
                start = len(prompt_ids[i]) + n + len(slm.suffix_ids)
                for j, token in enumerate(cand):
                    expected[i, k] += logp[start - 1 + j, token]
    assert scores.shape == (3, 3)
    assert torch.allclose(scores, expected, atol=1e-4), scores - expected


# --------------------------------------------------------------------------
# SpeechLM: LoRA and partial checkpoints
# --------------------------------------------------------------------------


def is_trainable_name(name):
    return "lora_" in name or name.startswith("ser_head.")


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_lora_trains_only_adapters_and_head(lm_dirs, arch):
    slm = SpeechLM(lm_dirs[arch], lora_config=LORA, num_classes=3)
    trainable = [n for n, p in slm.named_parameters() if p.requires_grad]
    assert trainable and all(is_trainable_name(n) for n in trainable)
    lora_names = [n for n in trainable if "lora_" in n]
    # A and B of q_proj and v_proj in each of the 2 layers
    assert len(lora_names) == 2 * 2 * 2
    prompt_ids, speech, lens, responses = example_batch(slm)
    out = slm(prompt_ids, speech, lens, responses)
    logits = slm.classify(out["prefix_hidden"])
    loss = out["loss"] + F.cross_entropy(logits, torch.tensor([0, 1, 2]))
    loss.backward()
    for name, param in slm.named_parameters():
        if is_trainable_name(name):
            assert param.grad is not None, name
        else:
            assert param.grad is None, name
    # lora_B starts at zero, so only it gets a non-zero gradient at first
    assert all(
        p.grad.abs().sum() > 0
        for n, p in slm.named_parameters()
        if "lora_B" in n or n.startswith("ser_head.")
    )


def perturb_trainable(slm, seed=3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in slm.parameters():
            if param.requires_grad:
                param.add_(0.5 * torch.randn(param.shape, generator=gen))


def outputs(slm):
    prompt_ids, speech, lens, responses = example_batch(slm)
    with torch.no_grad():
        out = slm(prompt_ids, speech, lens, responses)
        return out["logits"], slm.classify(out["prefix_hidden"])


def test_lora_checkpoint_round_trip(qwen_dir, tmp_path):
    slm = SpeechLM(qwen_dir, lora_config=LORA, num_classes=3).eval()
    perturb_trainable(slm)
    logits, classes = outputs(slm)
    checkpointer = Checkpointer(str(tmp_path), recoverables={"slm": slm})
    ckpt = checkpointer.save_checkpoint()

    torch.manual_seed(123)  # other LoRA and head initialisations
    fresh = SpeechLM(qwen_dir, lora_config=LORA, num_classes=3).eval()
    before, _ = outputs(fresh)
    assert not torch.allclose(before, logits)  # the round trip has teeth
    Checkpointer(
        str(tmp_path), recoverables={"slm": fresh}
    ).recover_if_possible()
    new_logits, new_classes = outputs(fresh)
    assert torch.equal(new_logits, logits)
    assert torch.equal(new_classes, classes)

    # the file holds LoRA and the SER head only
    path = ckpt.paramfiles["slm"]
    state = torch.load(path)
    assert state and all(is_trainable_name(k) for k in state)
    assert sum("lora_" in k for k in state) == 8
    base_keys = [
        k for k, _ in slm.named_parameters() if not is_trainable_name(k)
    ]
    assert not set(base_keys) & set(state)
    stored = sum(v.numel() for v in state.values())
    total = sum(p.numel() for p in slm.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in slm.parameters())
    assert stored < 0.1 * total
    assert os.path.getsize(path) < 0.5 * model_bytes


def test_checkpoint_without_lora_refused_by_lora_model(qwen_dir, tmp_path):
    plain = SpeechLM(qwen_dir, num_classes=3)  # frozen LLM: saves the head
    Checkpointer(str(tmp_path), recoverables={"slm": plain}).save_checkpoint()
    state = torch.load(
        Checkpointer(str(tmp_path)).find_checkpoint().paramfiles["slm"]
    )
    assert sorted(state) == [
        "ser_head.0.bias",
        "ser_head.0.weight",
        "ser_head.1.bias",
        "ser_head.1.weight",
    ]
    lora = SpeechLM(qwen_dir, lora_config=LORA, num_classes=3)
    checkpointer = Checkpointer(str(tmp_path), recoverables={"slm": lora})
    with pytest.raises(RuntimeError, match="LoRA"):
        checkpointer.recover_if_possible()


# --------------------------------------------------------------------------
# Word tokenizer and the tiny LLM
# --------------------------------------------------------------------------


def test_word_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    tok = build_bpe_tokenizer(["the cat sat", "the dog"])
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    ids = tok("the dog sat", add_special_tokens=False)["input_ids"]
    # every word of the training texts is one token (in the form seen there)
    assert tok.convert_ids_to_tokens(ids) == ["the", "\u0120dog", "\u0120sat"]
    assert tok.decode(ids) == "the dog sat"
    # an unknown word falls back to byte-level pieces: no <unk>, exact decode
    unknown = tok("the bird sat", add_special_tokens=False)["input_ids"]
    assert unknown[0] == ids[0] and unknown[-1] == ids[-1]
    assert len(unknown) > 3
    assert tok.unk_token_id is None
    assert tok.decode(unknown) == "the bird sat"

    tok.save_pretrained(str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    texts = ["the cat sat", "dog the  cat", "a bird", "", "caf\u00e9 \u2014 ok"]
    for text in texts:
        expected = tok(text, add_special_tokens=False)["input_ids"]
        got = loaded(text, add_special_tokens=False)["input_ids"]
        assert got == expected
        assert loaded.decode(got) == text
    assert len(loaded) == len(tok)
    assert loaded.eos_token_id == tok.eos_token_id


@pytest.mark.parametrize("arch", ARCHS)
def test_speech_lm_tokenizer_matches_built_one(lm_dirs, arch):
    """Saved next to any architecture, the tokenizer loads unchanged."""
    reference = build_bpe_tokenizer(TOKENIZER_TEXTS)
    slm = SpeechLM(lm_dirs[arch])
    texts = ["a b c", "what is the emotion", "happy", "zebra crossing"]
    assert slm.tokenize(texts) == [
        reference(t, add_special_tokens=False)["input_ids"] for t in texts
    ]
    assert slm.decode(slm.tokenize(texts)) == texts
    assert slm.eos_id == reference.eos_token_id
    assert slm.causal_lm.config.vocab_size == len(reference)


def test_prepare_tiny_llm_skips_and_rebuilds(tmp_path):
    manifest = tmp_path / "train.json"
    manifest.write_text(
        json.dumps({"u1": {"wrd": "hello world"}, "u2": {"wrd": "good day"}})
    )
    folder = str(tmp_path / "llm")
    config = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    }
    extra = ["transcribe speech", "neutral happy"]
    assert prepare_tiny_llm(folder, str(manifest), extra, config) == folder
    weights = os.path.join(folder, "model.safetensors")
    stamp = os.stat(weights).st_mtime_ns

    # same inputs: nothing is rewritten
    prepare_tiny_llm(folder, str(manifest), extra, dict(config))
    assert os.stat(weights).st_mtime_ns == stamp
    # nor from a copy of the manifest elsewhere, touched later (another
    # checkout of the same corpus): the stamp is the transcripts' content
    copy = tmp_path / "elsewhere" / "train.json"
    copy.parent.mkdir()
    copy.write_text(manifest.read_text())
    os.utime(copy, ns=(stamp + 10**9, stamp + 10**9))
    prepare_tiny_llm(folder, str(copy), extra, dict(config))
    assert os.stat(weights).st_mtime_ns == stamp

    slm = SpeechLM(folder)
    # words of the transcripts and the extra texts are single tokens
    for text in ["hello world", "good day", "transcribe speech"]:
        assert len(slm.tokenize([text])[0]) == 2, text
    assert slm.hidden_size == 16
    vocab = len(slm.tokenizer)

    # another config: rebuilt
    prepare_tiny_llm(folder, str(manifest), extra, dict(config, hidden_size=24))
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["hidden_size"] == 24
    assert SpeechLM(folder).hidden_size == 24

    # another manifest (new word): rebuilt with the new vocabulary
    stamp = os.stat(weights).st_mtime_ns
    manifest.write_text(json.dumps({"u1": {"wrd": "hello there"}}))
    os.utime(manifest, ns=(stamp + 10**9, stamp + 10**9))
    prepare_tiny_llm(folder, str(manifest), extra, dict(config, hidden_size=24))
    assert os.stat(weights).st_mtime_ns != stamp
    slm = SpeechLM(folder)
    assert len(slm.tokenize(["hello there"])[0]) == 2
    assert len(slm.tokenizer) != vocab


# --------------------------------------------------------------------------
# HarmoniFuse: end-to-end gradient flow and encoder reuse
# --------------------------------------------------------------------------

EMOTIONS = ["neutral", "happy"]


def build_model(source, lora=True, ser_mode="classifier"):
    torch.manual_seed(0)
    slm = SpeechLM(
        source,
        lora_config=LORA if lora else None,
        freeze=False,
        num_classes=len(EMOTIONS),
    )
    encoder = ConformerSpeechEncoder(
        n_mels=20,
        d_model=16,
        num_layers=2,
        nhead=2,
        d_ffn=32,
        kernel_size=3,
        dropout=0.0,
        subsampling_channels=4,
    )
    return HarmoniFuse(
        encoder,
        PromptAdaptiveFusion(
            encoder.num_layers, slm.hidden_size, hidden_dim=16
        ),
        TaskGate(encoder.output_dim, slm.hidden_size),
        SpeechProjector(encoder.output_dim, slm.hidden_size, stack=2),
        slm,
        prompts={"asr": "transcribe", "ser": "what is the emotion"},
        emotions=EMOTIONS,
        ser_mode=ser_mode,
    )


def audio(batch=2, samples=8000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    wavs = 0.1 * torch.randn(batch, samples, generator=gen)
    return wavs, torch.tensor([1.0, 0.7][:batch])


def test_model_gradient_flow(qwen_dir):
    model = build_model(qwen_dir)
    # fine-tune the top of the encoder only, as a YAML may ask
    model.encoder.subsampling.requires_grad_(False)
    wavs, lens = audio()
    out = model(asr=(wavs, lens, ["a b", "c"]), ser=(wavs, lens))
    assert torch.isfinite(out["asr"]["loss"])
    assert out["ser"]["logits"].shape == (2, len(EMOTIONS))
    loss = out["asr"]["loss"] + F.cross_entropy(
        out["ser"]["logits"], torch.tensor([0, 1])
    )
    loss.backward()

    def grad_norm(param):
        assert param.grad is not None
        return param.grad.abs().sum().item()

    fusion, gate, proj = model.fusion, model.gate, model.projector
    assert grad_norm(fusion.w0) > 0
    assert grad_norm(fusion.mlp[-1].weight) > 0
    # no gradient reaches the first layer yet: the last one starts at zero
    assert grad_norm(fusion.mlp[0].weight) == 0
    assert grad_norm(gate.feat_proj.weight) > 0
    assert grad_norm(gate.cond_proj.weight) > 0
    assert all(grad_norm(p) > 0 for p in proj.parameters())
    assert all(grad_norm(p) > 0 for p in model.heads["ser"].parameters())
    top = list(model.encoder.layers[-1].parameters())
    assert sum(grad_norm(p) for p in top) > 0
    for name, param in model.named_parameters():
        if "lora_B" in name:
            assert grad_norm(param) > 0, name
        elif "lora_A" in name:
            assert param.grad is not None, name
        elif name.startswith("speech_lm.model.") or name.startswith(
            "encoder.subsampling."
        ):
            assert not param.requires_grad and param.grad is None, name


def test_model_encoder_reuse_fusion_separates_after_training(qwen_dir):
    model = build_model(qwen_dir)
    wavs, lens = audio()

    def both_tasks():
        with torch.no_grad():
            hidden, frame_lens = model.encode_speech(wavs, lens)
            asr = model.task_features(hidden, frame_lens, "asr")
            ser = model.task_features(hidden, frame_lens, "ser")
        return asr, ser

    asr, ser = both_tasks()
    assert torch.equal(asr["fusion_weights"], ser["fusion_weights"])
    assert torch.equal(asr["gate"], ser["gate"])
    assert not torch.equal(asr["prompt_emb"], ser["prompt_emb"])

    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=0.05
    )
    for step in range(4):  # interleaved: one task per step
        if step % 2 == 0:
            loss = model(asr=(wavs, lens, ["a b", "c"]))["asr"]["loss"]
        else:
            logits = model(ser=(wavs, lens))["ser"]["logits"]
            loss = F.cross_entropy(logits, torch.tensor([0, 1]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    asr, ser = both_tasks()
    weights_gap = (asr["fusion_weights"] - ser["fusion_weights"]).abs().max()
    assert weights_gap > 3e-3, weights_gap  # measured: 0.0064
    assert (asr["gate"] - ser["gate"]).abs().max() > 3e-3  # measured: 0.0073
    for feats in (asr, ser):
        assert torch.allclose(
            feats["fusion_weights"].sum(-1), torch.ones(2), atol=1e-6
        )


def test_model_batch_equals_items_alone(qwen_dir):
    model = build_model(qwen_dir, ser_mode="lm_scoring").eval()
    wavs, lens = audio()
    with torch.no_grad():
        feats = model.task_features(*model.encode_speech(wavs, lens), "ser")
        batch = model.ser_logits(feats)
        alone = []
        for i in range(2):
            n = int(round(lens[i].item() * wavs.shape[1]))
            item = model.task_features(
                *model.encode_speech(wavs[i : i + 1, :n], torch.ones(1)), "ser"
            )
            alone.append(model.ser_logits(item)[0])
    assert batch.shape == (2, len(EMOTIONS))
    assert torch.allclose(batch, torch.stack(alone), atol=1e-4)


def test_model_checkpoint_round_trip(qwen_dir, tmp_path):
    """HarmoniFuse checkpoints hold what trains and reproduce the outputs."""
    model = build_model(qwen_dir).eval()
    perturb_trainable(model)
    wavs, lens = audio()

    def ser_logits(net):
        with torch.no_grad():
            return net.ser_logits(
                net.task_features(*net.encode_speech(wavs, lens), "ser")
            )

    expected = ser_logits(model)
    ckpt = Checkpointer(str(tmp_path), {"model": model}).save_checkpoint()
    state = torch.load(ckpt.paramfiles["model"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert trainable <= set(state)
    assert frozen and not frozen & set(state)

    fresh = build_model(qwen_dir).eval()
    perturb_trainable(fresh, seed=9)  # other trainable values
    assert not torch.allclose(ser_logits(fresh), expected)
    Checkpointer(str(tmp_path), {"model": fresh}).recover_if_possible()
    assert torch.equal(ser_logits(fresh), expected)


def test_prepare_tiny_llm_pretrains_on_the_transcripts(tmp_path):
    sentences = ["the cat sat on the mat", "a dog ran in the park"] * 4
    manifest = tmp_path / "train.json"
    manifest.write_text(
        json.dumps({f"u{i}": {"wrd": s} for i, s in enumerate(sentences)})
    )
    config = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    }
    pretrain = {"steps": 40, "batch_size": 4, "lr": 0.01}

    def text_loss(folder):
        """Mean token cross-entropy of the saved LM on the sentences."""
        slm = SpeechLM(folder)
        lm = slm.causal_lm
        ids = torch.tensor(
            [seq + [slm.eos_id] for seq in slm.tokenize(sentences[:2])]
        )
        with torch.no_grad():
            return lm(input_ids=ids, labels=ids).loss.item()

    random_folder = str(tmp_path / "random")
    prepare_tiny_llm(random_folder, str(manifest), [], config)
    folder = str(tmp_path / "pretrained")
    prepare_tiny_llm(folder, str(manifest), [], config, pretrain=pretrain)
    # Random: about ln(vocabulary) nats per token; pre-trained: far lower
    assert text_loss(random_folder) > 5.0
    assert text_loss(folder) < 1.0
    # Same inputs: kept; other pre-training: rebuilt
    weights = os.path.join(folder, "model.safetensors")
    stamp = os.stat(weights).st_mtime_ns
    prepare_tiny_llm(folder, str(manifest), [], config, pretrain=pretrain)
    assert os.stat(weights).st_mtime_ns == stamp
    prepare_tiny_llm(
        folder, str(manifest), [], config, pretrain=dict(pretrain, steps=2)
    )
    assert os.stat(weights).st_mtime_ns != stamp
