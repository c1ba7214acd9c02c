"""The variants of the ablation study: each a set of overrides of the YAML.

Every variant sets every switch it compares (``fusion``, ``gate``,
``llm_fusion``, ``interleaving``), so none depends on the YAML's defaults; a
training YAML may add its own per-variant overrides
(``ablation_overrides``).

Authors
 * HarmoniFuse-SB developers 2026
"""

import yaml

BASELINE = "naive_multitask"
# The gate as it was before the readings of the gate (open start, no
# budget), and a gate that must select: neutral start and a budget term
# (keep at most half of the components of each task).
OPEN_GATE = {
    "enabled": True,
    "placement": "fused",
    "init_bias": 4.0,
    "sparsity_weight": 0.0,
}
BUDGET_GATE = {
    "enabled": True,
    "init_bias": 0.0,
    "sparsity_weight": 1.0,
    "keep_target": {"asr": 0.5, "ser": 0.5},
}
NO_GATE = {"enabled": False}
INTERLEAVED = {"interleaving": {"schedule": "interleaved"}}
# HarmoniFuse as this project defines it: the switches of the variant
# ``harmonifuse``, from which the single-part ablations derive. The
# reading chosen on validation (docs/ablation/data_size.md): the prompt-
# adaptive fusion of the encoder's layers, the SER classifier on a
# prompt-adaptive fusion of the LLM's layers, the gate as first built.
HARMONIFUSE = {
    "fusion": {"mode": "prompt"},
    "gate": dict(OPEN_GATE),
    "llm_fusion": {"mode": "prompt"},
    **INTERLEAVED,
}


def _derive(**changes):
    """HARMONIFUSE's switches with some replaced (a mapping is merged)."""
    merged = {key: dict(value) for key, value in HARMONIFUSE.items()}
    for key, value in changes.items():
        merged[key] = dict(merged.get(key, {}), **value)
    return merged


# name -> (what it tests, overrides of the training YAML). Every variant
# sets every switch, so none depends on the YAML's defaults (the
# interleaved variants keep the YAML's ASR:SER ratio).
VARIANTS = {
    "harmonifuse": (
        "prompt-adaptive fusion + task gate, batch-interleaved",
        _derive(),
    ),
    "static_fusion": (
        "one learned layer weighting for both tasks (SUPERB style)",
        _derive(fusion={"mode": "static"}),
    ),
    "last_layer": (
        "the encoder's top layer only",
        _derive(fusion={"mode": "last"}),
    ),
    "no_gate": (
        "prompt-adaptive fusion, no gate",
        dict(_derive(), gate=dict(NO_GATE)),
    ),
    BASELINE: (
        "static fusion, no gate, both tasks in every batch",
        {
            "fusion": {"mode": "static"},
            "gate": dict(NO_GATE),
            "llm_fusion": {"mode": "last"},
            "interleaving": {"schedule": "mixed"},
        },
    ),
    "naive_interleaved": (
        "static fusion, no gate, batch-interleaved (the naive model with "
        "HarmoniFuse's schedule)",
        {
            "fusion": {"mode": "static"},
            "gate": dict(NO_GATE),
            "llm_fusion": {"mode": "last"},
            **INTERLEAVED,
        },
    ),
    "asr_only": (
        "the HarmoniFuse model trained on the ASR data only",
        _derive(
            interleaving={"ratio": [1, 0], "epoch_task": "asr"},
        ),
    ),
    "ser_only": (
        "the HarmoniFuse model trained on the SER data only (an epoch is "
        "one pass over the SER training set)",
        _derive(
            interleaving={"ratio": [0, 1], "epoch_task": "ser"},
        ),
    ),
}
# The readings of the paper tried on one seed (screening on validation;
# not run unless named with --variants).
READINGS = {
    "open_gate": (
        "HarmoniFuse as first built: the gate started open (0.98), no "
        "budget, the SER classifier on the LLM's last layer",
        _derive(llm_fusion={"mode": "last"}),
    ),
    "gate_neutral": (
        "HarmoniFuse with the gate started at 0.5, no budget",
        _derive(gate={"init_bias": 0.0}),
    ),
    "gate_budget": (
        "HarmoniFuse with a gate that must select: neutral start, budget "
        "term keeping at most half of each task's components",
        _derive(gate=dict(BUDGET_GATE, placement="fused")),
    ),
    "layer_gate": (
        "HarmoniFuse with the budget gate on every encoder layer before "
        "the fusion (a gated speech encoder)",
        _derive(gate=dict(BUDGET_GATE, placement="layers")),
    ),
    "llm_fusion": (
        "HarmoniFuse whose SER classifier reads a prompt-weighted sum of "
        "the LLM's layers",
        _derive(llm_fusion={"mode": "prompt"}),
    ),
    "llm_fusion_layer_gate": (
        "the two readings together: the LLM-layer fusion for SER and the "
        "budget gate on the encoder layers",
        _derive(
            gate=dict(BUDGET_GATE, placement="layers"),
            llm_fusion={"mode": "prompt"},
        ),
    ),
}
VARIANTS.update(READINGS)
CORE_VARIANTS = [v for v in VARIANTS if v not in READINGS]
DEFAULT_SEEDS = (1, 2, 3)


def override_args(overrides):
    """Turns nested overrides into ``--key=value`` arguments of train.py.

    Arguments
    ---------
    overrides : dict
        Top-level key -> value (a mapping is merged into the YAML's).

    Returns
    -------
    list of str

    Example
    -------
    >>> override_args({"gate": {"enabled": False}, "seed": 2})
    ['--gate={enabled: false}', '--seed=2']
    """
    return [
        f"--{key}="
        + yaml.safe_dump(
            value, default_flow_style=True, sort_keys=False, width=10**6
        )
        .strip()
        .removesuffix("\n...")
        .removesuffix(" ...")
        for key, value in overrides.items()
    ]


def check_yaml_has_switches(hparams_file, variants):
    """Fails early if the YAML lacks a key that a variant overrides.

    The YAML is composed, not loaded: nothing is built.

    Arguments
    ---------
    hparams_file : str
        The training YAML.
    variants : list of str
        The variants to run.
    """
    with open(hparams_file, encoding="utf-8") as f:
        root = yaml.compose(f)
    top = {key.value: value for key, value in root.value}
    for variant in variants:
        for key, value in VARIANTS[variant][1].items():
            node = top.get(key)
            if node is None or not isinstance(node, yaml.MappingNode):
                raise ValueError(
                    f"{hparams_file} has no mapping `{key}`, which the "
                    f"variant {variant!r} overrides ({value}). Add it (see "
                    "hparams/harmonifuse.yaml) or leave the variant out."
                )
            inner = {k.value for k, _ in node.value}
            missing = [k for k in value if k not in inner]
            if missing and key != "interleaving":
                raise ValueError(
                    f"{hparams_file}: `{key}` has no key {missing}, which "
                    f"the variant {variant!r} sets. Add it to `{key}` (see "
                    "hparams/harmonifuse.yaml)."
                )


def yaml_variant_overrides(hparams_file):
    """The training YAML's own overrides per variant (``ablation_overrides``).

    A YAML may hold, for example::

        ablation_overrides:
            ser_only: {number_of_epochs: 8}

    to give a variant what it needs to be compared fairly in that setting
    (here: a single-task SER run as many SER batches as the interleaved
    runs see). They are applied after the variant's switches (a mapping is
    merged into the switch of the same name); a key that the study's
    command line also sets (``--number_of_epochs=5``) is left to the
    command line. Plain values only (no ``!ref``).

    Arguments
    ---------
    hparams_file : str
        The training YAML.

    Returns
    -------
    dict
        variant -> overrides (empty when the YAML has none).

    Raises
    ------
    ValueError
        An unknown variant, or a value that is not a plain mapping.
    """
    with open(hparams_file, encoding="utf-8") as f:
        root = yaml.compose(f)
    hparams = {key.value: value for key, value in root.value}  # nodes
    node = hparams.get("ablation_overrides")
    if node is None:
        return {}
    try:
        found = yaml.safe_load(yaml.serialize(node))
    except yaml.YAMLError as err:
        raise ValueError(
            f"{hparams_file}: `ablation_overrides` must hold plain values "
            f"(no !ref or other tags): {err}"
        ) from None
    found = found or {}
    if not isinstance(found, dict) or not all(
        isinstance(v, dict) for v in found.values()
    ):
        raise ValueError(
            f"{hparams_file}: `ablation_overrides` must map variant names "
            f"to mappings of overrides, e.g. {{ser_only: {{number_of_epochs: "
            f"8}}}}; got {found!r}"
        )
    unknown = sorted(set(found) - set(VARIANTS))
    if unknown:
        raise ValueError(
            f"{hparams_file}: `ablation_overrides` names unknown variants "
            f"{unknown}; known: {', '.join(VARIANTS)}"
        )
    return found


def variant_overrides(variant, yaml_overrides=None):
    """A variant's switches with the YAML's overrides for it merged in.

    Arguments
    ---------
    variant : str
        A key of ``VARIANTS``.
    yaml_overrides : dict, optional
        Top-level key -> value; a mapping is merged into the variant's
        switch of the same name, anything else replaces it.

    Returns
    -------
    dict
        Top-level key -> value, for :func:`override_args`.

    Example
    -------
    >>> variant_overrides("ser_only", {"number_of_epochs": 8})["number_of_epochs"]
    8
    >>> variant_overrides("ser_only", {"interleaving": {"ratio": [0, 2]}})[
    ...     "interleaving"]
    {'schedule': 'interleaved', 'ratio': [0, 2], 'epoch_task': 'ser'}
    """
    merged = {key: dict(value) for key, value in VARIANTS[variant][1].items()}
    for key, value in (yaml_overrides or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return merged
