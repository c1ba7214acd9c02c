#!/usr/bin/env bash
# Issue 20 on one GPU machine (H200, 16 CPU cores) in one run of about
# 9 minutes: trains the quick-start model twice from scratch on the same
# corpus, with the default augmentation and with --rooms=True (and
# --codecs=True when CODECS=True),
# then runs benchmarks/bench_robustness.py on both exported models (the
# conditions split over 4 processes per model). Everything goes to $OUT
# (default ./device_out): train_<rooms>.log, robust_<rooms>_<group>.json,
# and a summary on standard output.
#
# The device has torch but not the project's other packages: here, first,
#     python -m pip download --no-deps --only-binary=:all: \
#         --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#         -d .whl cffi espeakng-loader hyperpyyaml jiwer pycparser \
#         pyroomacoustics rapidfuzz 'ruamel.yaml<0.19' ruamel.yaml.clib \
#         silero-vad soundfile speechbrain webvtt-py
# and carry .whl (about 30 MB). DEBUG=1 runs it small (--debug, 8
# utterances), as a check on the CPU: DEVICE=cpu DEBUG=1 bash ...
set -u
OUT=${OUT:-device_out}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-/tmp/rooms}
LIMIT=200
EXTRA=()
if [ "${DEBUG:-0}" = 1 ]; then LIMIT=8; EXTRA=(--debug); fi
mkdir -p "$OUT" "$WORK"
if [ -d .whl ] && ! python3 -c "import speechbrain" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        > "$OUT/pip.log" 2>&1 || { echo "pip failed"; tail "$OUT/pip.log"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-}:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
start=$(date +%s)
for rooms in False True; do
    codecs=False; [ "$rooms" = True ] && codecs=${CODECS:-False}
    ( s=$SECONDS
      OMP_NUM_THREADS=4 timeout ${TRAIN_LIMIT:-420} python3 train.py \
        hparams/harmonifuse_tiny.yaml --device "$DEVICE" \
        --data_folder="$WORK/data" --output_folder="$WORK/rooms_$rooms" \
        --rooms=$rooms --codecs=$codecs "${EXTRA[@]}"
      echo "exit $? wall $(( SECONDS - s )) s" ) > "$OUT/train_$rooms.log" 2>&1 &
    sleep 2  # the first run takes the preparation lock
done
wait
echo "training done after $(( $(date +%s) - start )) s"
for rooms in False True; do
    echo "== rooms=$rooms"
    grep -E "epoch: [0-9]+|Test synthetic|Epoch loaded" "$OUT/train_$rooms.log" | tail -9 | cut -c1-400
    grep -E "^exit .* wall" "$OUT/train_$rooms.log"
done
G1=("clean" "silence 0.5 s around" "white 30 dB SNR" "white 20 dB SNR" "white 10 dB SNR" "telephone 8 kHz")
G2=("babble 30 dB SNR" "babble 20 dB SNR" "babble 10 dB SNR" "gain -20 dB" "gain -12 dB" "gain +6 dB" "speed 0.9" "speed 1.1")
G3=("reverb RT60 0.5 s" "room RT60 0.3 s, talker 1 m" "room RT60 0.3 s, talker 3 m" "room RT60 0.6 s, talker 1 m" "room RT60 0.6 s, talker 3 m")
G4=("room RT60 0.9 s, talker 1 m" "room RT60 0.9 s, talker 3 m" "far talker 3 m, RT60 0.5 s, babble 20 dB" "MP3 24 kbit/s" "Opus 12 kbit/s")
left=$(( ${TOTAL_LIMIT:-570} - ($(date +%s) - start) ))
echo "benchmarks get $left s"
for rooms in True False; do
    for g in 1 2 3 4; do
        declare -n group="G$g"
        skip=(--no-non-speech); [ "$g" = 4 ] && skip=()
        OMP_NUM_THREADS=2 timeout $left python3 benchmarks/bench_robustness.py \
            --device "$DEVICE" --model "$WORK/rooms_$rooms/inference" \
            --asr-manifest "$WORK/data/asr_test.json" \
            --ser-manifest "$WORK/data/ser_test.json" \
            --data-root "$WORK/data" --limit $LIMIT --batch-size 50 \
            --conditions "${group[@]}" "${skip[@]}" \
            --json "$OUT/robust_${rooms}_$g.json" \
            > "$WORK/robust_${rooms}_$g.log" 2>&1 &
    done
done
wait
echo "benchmarks done after $(( $(date +%s) - start )) s"
for rooms in False True; do
    echo "== bench_robustness, rooms=$rooms"
    cat "$WORK"/robust_${rooms}_*.log | grep -E "^\| [a-zA-Z]|Non-speech|Error|error" | grep -v "condition |"
done
tar czf "$OUT/logs.tgz" -C "$WORK" $(cd "$WORK" && ls *.log) rooms_True/train_log.txt rooms_False/train_log.txt 2>/dev/null
