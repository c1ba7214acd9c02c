"""The ablation study: every variant x seed, then a report with paired CIs.

    python -m harmonifuse_sb.ablation hparams/ablation_synthetic.yaml
        [--variants harmonifuse naive_multitask] [--seeds 1 2 3]
        [--output_folder DIR] [--debug] [--print-commands]
        [--jobs N | --devices cuda:0 cuda:1 ...] [--key=value ...]

Each variant is a set of overrides of the same training YAML (any YAML with
``fusion.mode``, ``gate.enabled`` and ``interleaving``, the paper's
``hparams/harmonifuse.yaml`` included); each run is an ordinary ``train.py``
run in ``<output_folder>/<variant>/<seed>/``. ``train.py`` writes
``test_results.json`` as its very last act, so a run that has it is finished
and is never run again: a study that was killed resumes where it stopped
(an unfinished run resumes from its own checkpoints, as ``train.py`` does).
``--print-commands`` prints one ``train.py`` command per unfinished run
instead, for a cluster scheduler; run the study again once they are done to
write the report.

``--jobs N`` runs N runs at a time (on a CPU each gets ``cpu_count // N``
threads, through ``OMP_NUM_THREADS``, unless that is set); ``--devices
cuda:0 cuda:1`` runs one run per device at a time, each with ``--device``.
The first run then runs alone: it prepares what every run shares (corpus,
pre-trained encoder and LLM). ``train.py`` also holds a file lock around its
preparations, so runs started by hand or by a scheduler do not prepare the
same folder at once.

The report, ``ablation.md`` and ``ablation.json`` in the output folder, gives
per variant and test set the mean and standard deviation over seeds of WER,
CER (ASR) and UA, WA, macro-F1 (SER), and for each variant the difference to
``naive_multitask`` with a 95 % confidence interval from a paired bootstrap:
the test utterances are resampled (the same resample for both variants and
every seed), each metric is recomputed at corpus level on the resample (WER
= sum of errors / sum of reference words; UA = mean per-class recall), and
the difference is averaged over the seeds that both variants ran. Pictures
(``harmonifuse_sb.plot``): layer weights per task, gate value distributions
per task, validation curves.

Extra ``--key=value`` arguments go to every run (e.g. ``--data_folder=...``).
The package's modules: ``variants`` (what each variant overrides),
``runner`` (the ``train.py`` processes, resumable and parallel),
``statistics`` (corpus-level metrics, paired bootstrap), ``report`` (the
runs read, summarised and written) and ``cli`` (the command line). The
names below are re-exported so that ``harmonifuse_sb.ablation.<name>``
keeps working; to change a setting of the runs in a test (``POLL_S``,
``EXIT_GRACE_S``), patch ``harmonifuse_sb.ablation.runner``, the module
that reads it.

Authors
 * HarmoniFuse-SB developers 2026
"""

from harmonifuse_sb.ablation.cli import (
    add_study_arguments,
    check_study_arguments,
    main,
    parse_args,
    run_sizes,
    study_parser,
)
from harmonifuse_sb.ablation.report import (
    REPORT_JSON,
    REPORT_MD,
    VALIDATION_KEYS,
    format_report,
    headline,
    read_final_validation,
    read_run,
    verdict,
    write_report,
)
from harmonifuse_sb.ablation.runner import (
    RUN_LOG,
    RUN_RECORD,
    _run_all,
    is_finished,
    job_slots,
    plan_runs,
    run_folder,
    run_one,
    run_study,
    size_studies,
    train_command,
    warn_if_other_command,
)
from harmonifuse_sb.ablation.statistics import (
    LOWER_IS_BETTER,
    METRICS,
    PERCENT_METRICS,
    emotion_scores,
    error_rate,
    metric_values,
    paired_bootstrap,
    summarize,
)
from harmonifuse_sb.ablation.variants import (
    BASELINE,
    CORE_VARIANTS,
    DEFAULT_SEEDS,
    HARMONIFUSE,
    READINGS,
    VARIANTS,
    check_yaml_has_switches,
    override_args,
    variant_overrides,
    yaml_variant_overrides,
)

__all__ = [
    "add_study_arguments",
    "check_study_arguments",
    "BASELINE",
    "CORE_VARIANTS",
    "DEFAULT_SEEDS",
    "HARMONIFUSE",
    "LOWER_IS_BETTER",
    "METRICS",
    "PERCENT_METRICS",
    "READINGS",
    "REPORT_JSON",
    "REPORT_MD",
    "RUN_LOG",
    "RUN_RECORD",
    "VALIDATION_KEYS",
    "VARIANTS",
    "_run_all",
    "check_yaml_has_switches",
    "emotion_scores",
    "error_rate",
    "format_report",
    "headline",
    "is_finished",
    "job_slots",
    "main",
    "metric_values",
    "override_args",
    "paired_bootstrap",
    "parse_args",
    "plan_runs",
    "read_final_validation",
    "read_run",
    "run_folder",
    "run_one",
    "run_sizes",
    "run_study",
    "size_studies",
    "study_parser",
    "summarize",
    "train_command",
    "variant_overrides",
    "verdict",
    "warn_if_other_command",
    "write_report",
    "yaml_variant_overrides",
]
