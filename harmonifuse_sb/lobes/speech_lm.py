"""Speech LM: a transformers causal LM that reads speech embeddings.

The LLM sees ``[prompt ; speech ; suffix ; response]``: the text of the task
prompt, the projected speech frames, an optional fixed text suffix (for
example the assistant turn of a chat template) and, in training, the response
tokens. Every item of a batch is laid out the same way::

    [left pads | prompt_i | speech_i | suffix | response_i | right pads]
     <------------ prefix: left padded ------> <- right padded -->

so the prefix of every item ends at the same column. The hidden state there
is the one the SER head reads ("the last position before the response"),
generation continues from there, and position ids count real tokens only, so
an item gives the same outputs alone as inside a padded batch. The same
``build_inputs`` serves training, validation and inference.

LoRA adapters come from peft (a ``LoraConfig`` or a dict of its arguments);
with them, only adapters, the SER head and other trainable weights go into
checkpoints (the base LLM comes back from its source).

Authors
 * HarmoniFuse-SB developers 2026
"""

import logging

import torch
import torch.nn.functional as F

from harmonifuse_sb.lobes.checkpointing import PartialCheckpointMixin

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


class SpeechLM(PartialCheckpointMixin, torch.nn.Module):
    """A causal LM with its tokenizer, LoRA adapters and an SER head.

    Arguments
    ---------
    source : str
        Hub id or local folder of a transformers causal LM and its tokenizer
        (Qwen2, Llama, GPT-2, SmolLM, ...).
    save_path : str, optional
        Cache folder for downloads from the hub.
    lora_config : peft.LoraConfig or dict, optional
        LoRA adapters to add. A dict is passed to ``peft.LoraConfig`` with
        ``task_type="CAUSAL_LM"``. With adapters, the base LLM is frozen.
    freeze : bool
        Freeze the LLM's own weights (ignored for the adapters). Set False
        with no ``lora_config`` to train the whole LLM (for a small LLM
        trained from scratch).
    num_classes : int
        Number of emotion classes of the SER classifier head (0: no head).
    prompt_format : str
        Template with ``{prompt}`` that wraps the task prompt text, e.g. a
        chat template's user turn.
    speech_suffix : str
        Fixed text placed after the speech, before the response.
    dtype : str or torch.dtype, optional
        Dtype to load the LLM in (e.g. ``"bfloat16"``).
    attn_implementation : str, optional
        Passed to ``from_pretrained`` (``"sdpa"``, ``"eager"``, ...).
    gradient_checkpointing : bool
        Activation checkpointing of the LLM's decoder layers in training
        (transformers' ``gradient_checkpointing_enable``, non-reentrant):
        each layer keeps only its input and recomputes the rest in the
        backward pass. Less memory for about one more forward pass of the
        LLM per step.

    Example
    -------
    >>> import tempfile
    >>> from harmonifuse_sb.lobes.speech_lm import make_tiny_causal_lm
    >>> folder = make_tiny_causal_lm(tempfile.mkdtemp())
    >>> slm = SpeechLM(folder, num_classes=4, freeze=False)
    >>> speech = torch.randn(2, 6, slm.hidden_size)
    >>> prompts = slm.tokenize(["transcribe", "transcribe"])
    >>> out = slm(prompts, speech, torch.tensor([6, 4]),
    ...           slm.tokenize(["a b", "c"], add_eos=True))
    >>> out["loss"].shape, out["prefix_hidden"].shape
    (torch.Size([]), torch.Size([2, 32]))
    """

    def __init__(
        self,
        source,
        save_path=None,
        lora_config=None,
        freeze=True,
        num_classes=0,
        prompt_format="{prompt}",
        speech_suffix="",
        dtype=None,
        attn_implementation=None,
        gradient_checkpointing=False,
    ):
        super().__init__()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(
            source, cache_dir=save_path
        )
        if self.tokenizer.eos_token_id is None:
            raise ValueError(
                f"The tokenizer of '{source}' has no EOS token; SpeechLM "
                "needs one to end responses."
            )
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        kwargs = {"cache_dir": save_path}
        if dtype is not None:
            kwargs["dtype"] = (
                getattr(torch, dtype) if isinstance(dtype, str) else dtype
            )
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        if freeze or lora_config is not None:
            model.requires_grad_(False)
        if gradient_checkpointing:
            set_activation_checkpointing(model, True)
        if lora_config is not None:
            import peft

            if isinstance(lora_config, dict):
                lora_config = peft.LoraConfig(
                    task_type="CAUSAL_LM", **lora_config
                )
            model = peft.get_peft_model(model, lora_config)
        self.model = model
        self.hidden_size = self.causal_lm.config.get_text_config().hidden_size
        self.prompt_format = prompt_format
        self.suffix_ids = self.tokenize([speech_suffix])[0]
        self.ser_head = None
        if num_classes > 0:
            self.ser_head = torch.nn.Sequential(
                torch.nn.LayerNorm(self.hidden_size),
                torch.nn.Linear(self.hidden_size, num_classes),
            )

    @property
    def causal_lm(self):
        """The transformers causal LM (inside the peft wrapper, if any)."""
        if hasattr(self.model, "get_base_model"):
            return self.model.get_base_model()
        return self.model

    @property
    def eos_id(self):
        """Id of the token that ends a response."""
        return self.tokenizer.eos_token_id

    def tokenize(self, texts, add_eos=False):
        """Tokenises texts without special tokens.

        Arguments
        ---------
        texts : list of str
            The texts.
        add_eos : bool
            Append the EOS token (for responses).

        Returns
        -------
        list of list of int
        """
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        if add_eos:
            ids = [seq + [self.eos_id] for seq in ids]
        return ids

    def prompt_ids(self, prompts):
        """Token ids of task prompts wrapped in ``prompt_format``.

        Arguments
        ---------
        prompts : list of str
            Task prompt texts, one per item.

        Returns
        -------
        list of list of int
        """
        return self.tokenize(
            [self.prompt_format.format(prompt=p) for p in prompts]
        )

    def embed(self, ids):
        """Input embeddings of a tensor of token ids."""
        return self.causal_lm.get_input_embeddings()(ids)

    def prompt_embedding(self, prompts):
        """The prompt embedding ``p``: mean token embedding of each prompt.

        Computed on the prompt text alone (not the template), so a
        paraphrased instruction lands near its task.

        Arguments
        ---------
        prompts : list of str
            Task prompt texts.

        Returns
        -------
        torch.Tensor
            (B, P) with P the LLM's embedding size.
        """
        ids = self.tokenize(prompts)
        for text, seq in zip(prompts, ids):
            if not seq:
                raise ValueError(f"Task prompt {text!r} has no tokens.")
        flat = torch.tensor(
            [t for seq in ids for t in seq], device=self._device()
        )
        emb = self.embed(flat)  # (sum of lengths, P)
        return torch.stack(
            [chunk.mean(0) for chunk in emb.split([len(s) for s in ids])]
        )

    def _device(self):
        return self.causal_lm.get_input_embeddings().weight.device

    def build_inputs(self, prompt_ids, speech, speech_lens, response_ids=None):
        """Builds ``[prompt ; speech ; suffix ; response]`` for the LLM.

        Arguments
        ---------
        prompt_ids : list of list of int
            Token ids of each item's prompt (see ``prompt_ids``).
        speech : torch.Tensor
            Projected speech (B, T, E).
        speech_lens : torch.Tensor
            Absolute number of valid speech frames per item (B,).
        response_ids : list of list of int, optional
            Response token ids (ending with EOS) for teacher forcing.

        Returns
        -------
        dict
            ``inputs_embeds`` (B, S, E), ``attention_mask`` (B, S),
            ``position_ids`` (B, S), ``labels`` (B, S) aligned with the inputs
            (-100 on prompt, speech, suffix and padding) and ``prefix_len``,
            the column where every response starts.
        """
        batch = speech.shape[0]
        # The LLM may be in bf16 while the speech path runs in fp32
        speech = speech.to(self.causal_lm.get_input_embeddings().weight.dtype)
        if len(prompt_ids) != batch:
            raise ValueError(
                f"{len(prompt_ids)} prompts for a batch of {batch} items."
            )
        responses = response_ids or [[] for _ in range(batch)]
        texts = [p + self.suffix_ids + r for p, r in zip(prompt_ids, responses)]
        flat = torch.tensor(
            [t for seq in texts for t in seq], dtype=torch.long
        ).to(speech.device)
        token_emb = self.embed(flat).to(speech.dtype)  # (sum of lengths, E)
        token_emb = token_emb.split([len(seq) for seq in texts])
        n_suffix = len(self.suffix_ids)
        prefixes, suffixes = [], []
        for i in range(batch):
            n_prompt, n_speech = len(prompt_ids[i]), int(speech_lens[i])
            emb = token_emb[i]
            prefixes.append(
                torch.cat(
                    [
                        emb[:n_prompt],
                        speech[i, :n_speech],
                        emb[n_prompt : n_prompt + n_suffix],
                    ]
                )
            )
            suffixes.append(emb[n_prompt + n_suffix :])
        prefix_lens = torch.tensor([len(p) for p in prefixes])
        resp_lens = torch.tensor([len(r) for r in responses])
        prefix_len, resp_len = int(prefix_lens.max()), int(resp_lens.max())
        embeds = speech.new_zeros(
            batch, prefix_len + resp_len, speech.shape[-1]
        )
        mask = torch.zeros(batch, prefix_len + resp_len, dtype=torch.long)
        labels = torch.full_like(mask, IGNORE_INDEX)
        for i in range(batch):
            start, end = prefix_len - prefix_lens[i], prefix_len + resp_lens[i]
            embeds[i, start:prefix_len] = prefixes[i]
            embeds[i, prefix_len:end] = suffixes[i]
            mask[i, start:end] = 1
            labels[i, prefix_len:end] = torch.tensor(responses[i])
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        device = speech.device
        return {
            "inputs_embeds": embeds,
            "attention_mask": mask.to(device),
            "position_ids": position_ids.to(device),
            "labels": labels.to(device),
            "prefix_len": prefix_len,
        }

    def forward(
        self, prompt_ids, speech, speech_lens, response_ids=None, layers=False
    ):
        """Runs the LLM on speech and, if given, teacher-forced responses.

        Arguments
        ---------
        prompt_ids : list of list of int
            Token ids of each item's prompt.
        speech : torch.Tensor
            Projected speech (B, T, E).
        speech_lens : torch.Tensor
            Absolute number of valid speech frames per item (B,).
        response_ids : list of list of int, optional
            Response token ids (ending with EOS).
        layers : bool
            Also return the two poolings of every layer's hidden state (for
            a fusion of the LLM's layers, ``HarmoniFuse(llm_fusion=...)``).

        Returns
        -------
        dict
            ``prefix_hidden`` (B, H): the last hidden state at the last
            position before the response; ``prefix_mean`` (B, H): its mean
            over the positions before the response; with ``layers``,
            ``prefix_hidden_layers`` and ``prefix_mean_layers`` (N+1, B, H):
            the same for the embeddings and each of the N decoder layers
            (the last one after the final norm, as ``prefix_hidden``);
            ``logits`` (B, R, V): predictions
            of the R response positions (None without responses); ``loss``:
            the token cross-entropy on the responses (None without them);
            ``inputs``: what ``build_inputs`` returned.
        """
        inputs = self.build_inputs(
            prompt_ids, speech, speech_lens, response_ids
        )
        prefix_len = inputs["prefix_len"]
        decoder = self.causal_lm.get_decoder()
        decoded = decoder(
            inputs_embeds=inputs["inputs_embeds"],
            attention_mask=inputs["attention_mask"],
            position_ids=inputs["position_ids"],
            use_cache=False,
            output_hidden_states=layers,
        )
        hidden = decoded.last_hidden_state  # (B, S, H)
        prefix_mask = inputs["attention_mask"][:, :prefix_len, None]
        prefix_mask = prefix_mask.to(hidden.dtype)  # (B, P, 1)

        def pool(states):
            """Last prefix position, and the mean over prompt, speech and
            suffix (left padding excluded).
            """
            mean = (states[:, :prefix_len] * prefix_mask).sum(1)
            return states[:, prefix_len - 1], mean / prefix_mask.sum(1)

        out = {"logits": None, "loss": None, "inputs": inputs}
        out["prefix_hidden"], out["prefix_mean"] = pool(hidden)
        if layers:
            pooled = [pool(states) for states in decoded.hidden_states]
            out["prefix_hidden_layers"] = torch.stack([p[0] for p in pooled])
            out["prefix_mean_layers"] = torch.stack([p[1] for p in pooled])
        if response_ids is not None:
            # Position t predicts the token at t + 1: the shift is explicit.
            lm_head = self.causal_lm.get_output_embeddings()
            logits = lm_head(hidden[:, prefix_len - 1 : -1])  # (B, R, V)
            targets = inputs["labels"][:, prefix_len:]  # (B, R)
            out["logits"] = logits
            out["loss"] = F.cross_entropy(
                logits.float().transpose(1, 2),
                targets,
                ignore_index=IGNORE_INDEX,
            )
        return out

    def classify(self, prefix_hidden):
        """Emotion logits from the SER classifier head.

        Arguments
        ---------
        prefix_hidden : torch.Tensor
            Hidden states at the last position before the response (B, H).

        Returns
        -------
        torch.Tensor
            Logits (B, num_classes).
        """
        if self.ser_head is None:
            raise RuntimeError(
                "SpeechLM has no SER head: build it with num_classes > 0."
            )
        return self.ser_head(prefix_hidden.to(self.ser_head[1].weight.dtype))

    def score_candidates(self, prompt_ids, speech, speech_lens, candidates):
        """Label-restricted scoring: log-probability of each candidate text.

        Arguments
        ---------
        prompt_ids : list of list of int
            Token ids of each item's prompt.
        speech : torch.Tensor
            Projected speech (B, T, E).
        speech_lens : torch.Tensor
            Absolute number of valid speech frames per item (B,).
        candidates : list of list of int
            Token ids of the K candidate responses (e.g. label words + EOS).

        Returns
        -------
        torch.Tensor
            Summed token log-probabilities (B, K): usable as class logits.
        """
        batch, n_cand = speech.shape[0], len(candidates)
        rep = torch.arange(batch, device=speech.device).repeat_interleave(
            n_cand
        )
        out = self.forward(
            [prompt_ids[i] for i in rep.tolist()],
            speech[rep],
            speech_lens[rep.to(speech_lens.device)],
            [candidates[k] for _ in range(batch) for k in range(n_cand)],
        )
        targets = out["inputs"]["labels"][:, out["inputs"]["prefix_len"] :]
        logp = out["logits"].float().log_softmax(-1)  # (B*K, R, V)
        valid = targets != IGNORE_INDEX
        token_logp = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1))
        scores = (token_logp.squeeze(-1) * valid).sum(-1)  # (B*K,)
        return scores.view(batch, n_cand)

    @torch.no_grad()
    def generate(
        self,
        prompt_ids,
        speech,
        speech_lens,
        max_new_tokens=64,
        num_beams=1,
        **generate_kwargs,
    ):
        """Decodes responses with the KV cache (greedy or beam search).

        Uses transformers' ``generate`` on the prefix embeddings; position
        ids follow the attention mask, as in training.

        Arguments
        ---------
        prompt_ids : list of list of int
            Token ids of each item's prompt.
        speech : torch.Tensor
            Projected speech (B, T, E).
        speech_lens : torch.Tensor
            Absolute number of valid speech frames per item (B,).
        max_new_tokens : int
            Maximum response length.
        num_beams : int
            1 for greedy search, more for beam search.
        **generate_kwargs : dict
            Further arguments of ``generate`` (e.g. ``length_penalty``).

        Returns
        -------
        list of list of int
            Response token ids per item, without EOS and padding.
        """
        inputs = self.build_inputs(prompt_ids, speech, speech_lens)
        generated = self.model.generate(
            inputs_embeds=inputs["inputs_embeds"],
            attention_mask=inputs["attention_mask"],
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            eos_token_id=self.eos_id,
            pad_token_id=self.tokenizer.pad_token_id,
            **generate_kwargs,
        )
        hyps = []
        for seq in generated.tolist():
            if self.eos_id in seq:
                seq = seq[: seq.index(self.eos_id)]
            hyps.append(seq)
        return hyps

    def decode(self, ids):
        """Texts of token id sequences."""
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)


def set_activation_checkpointing(model, enabled):
    """Turns activation checkpointing of a transformers model on or off.

    transformers' ``activation_checkpointing_enable`` (named
    ``gradient_checkpointing_enable`` before transformers 5), non-reentrant:
    the inputs need not require grad (the base weights of a LoRA LLM are
    frozen) and it works with DDP's ``find_unused_parameters``.

    Arguments
    ---------
    model : transformers.PreTrainedModel
        The causal LM (not its peft wrapper).
    enabled : bool
        On or off.
    """
    new_api = hasattr(model, "activation_checkpointing_enable")
    if not enabled:
        if new_api:
            model.activation_checkpointing_disable()
        else:
            model.gradient_checkpointing_disable()
        return
    kwargs = {"use_reentrant": False}
    if new_api:
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs=kwargs
        )
    else:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=kwargs
        )


def make_tiny_causal_lm(folder, vocab=None, hidden_size=32, num_layers=2):
    """Writes a tiny random Qwen2 LM and a word-level tokenizer to a folder.

    For tests and doctests: the folder loads like a hub model.

    Arguments
    ---------
    folder : str
        Where to save.
    vocab : list of str, optional
        Words of the tokenizer (default: a few letters).
    hidden_size : int
        Width of the model.
    num_layers : int
        Number of decoder layers.

    Returns
    -------
    str
        The folder.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from harmonifuse_sb.tokenizer import build_bpe_tokenizer

    words = vocab or ["a", "b", "c", "d", "transcribe", "emotion"]
    # Whole sentences too, so words after a space are single tokens as well
    tokenizer = build_bpe_tokenizer(words + [" ".join(words)])
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
