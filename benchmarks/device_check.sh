#!/usr/bin/env bash
# The GPU checks of issue 18 in one run of at most 8 minutes (one H200, 16
# CPU cores): paper-size training step (HarmoniFuse / plain paired ratio
# with its A/A control, MFU, peak memory) and joint CTC/LLM decoding on the
# quick-start model. Everything it prints goes to $OUT (default ./device_out).
#
# The device has torch but not the project's other packages, nor the
# corpus. Here, first (needs the package registry and a trained
# quick-start model):
#
#     bash benchmarks/device_check.sh prepare
#
# writes the wheels to .whl/ and the first 64 ASR test utterances to
# .device_data/ (both ignored by git, about 10 MB); carry them and
# results/harmonifuse_tiny/1986/inference (31 MB) to the device, and run
# there (from the repository root):
#
#     bash benchmarks/device_check.sh
set -u
if [ "${1:-}" = prepare ]; then
    python -m pip download --no-deps -d .whl speechbrain hyperpyyaml \
        ruamel.yaml ruamel.yaml.clib jiwer rapidfuzz peft sentencepiece
    python - <<'PY'
import json, os, shutil
source = "data/synthetic/asr_test.json"
with open(source, encoding="utf-8") as f:
    entries = dict(list(json.load(f).items())[:64])
for entry in entries.values():
    path = entry["wav"].replace("{data_root}", "")
    os.makedirs(os.path.dirname(".device_data" + path), exist_ok=True)
    shutil.copy("data/synthetic" + path, ".device_data" + path)
with open(".device_data/asr_test.json", "w", encoding="utf-8") as f:
    json.dump(entries, f, indent=1)
print(f"{len(entries)} utterances in .device_data")
PY
    exit
fi
OUT=${OUT:-device_out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
if [ -d .whl ]; then
    python -m pip install --quiet --no-index --no-deps --find-links .whl \
        .whl/*.whl > "$OUT/pip.log" 2>&1 || echo "pip: see $OUT/pip.log"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"

# 1. Training step at paper size (random WavLM Large + Qwen2.5-1.5B, bf16,
#    the YAML's 160 s / 80 s batches): 4 batches per task, every shape warm
#    in every configuration first, rounds until the intervals are within
#    +-3 % (at most 3). About 5 minutes.
timeout 330 python benchmarks/bench_train.py --device cuda --steps 4 \
    --max-rounds 3 --memory-options off --workdir /tmp/bench_train \
    --json "$OUT/bench_train_gpu.json" > "$OUT/bench_train_gpu.log" 2>&1
echo "bench_train exit $?"
grep -E "^(harmonifuse|plain)|HarmoniFuse / plain|A/A control|intervals" \
    "$OUT/bench_train_gpu.log"

# 2. Joint decoding on the GPU, quick-start model, first 64 test
#    utterances, 8 beams. About 1 minute.
MODEL=results/harmonifuse_tiny/1986/inference
if [ -d "$MODEL" ]; then
    timeout 120 python benchmarks/bench_decoding.py --device cuda \
        --model "$MODEL" --manifest .device_data/asr_test.json \
        --json "$OUT/bench_decoding_gpu.json" \
        > "$OUT/bench_decoding_gpu.log" 2>&1
    echo "bench_decoding exit $?"
    grep -E "seconds per pass|time ratio|^WER" "$OUT/bench_decoding_gpu.log"
else
    echo "no $MODEL: joint decoding not timed"
fi
