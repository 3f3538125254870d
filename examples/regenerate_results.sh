#!/usr/bin/env bash
# Recompute the chip results of docs/results.md, with the commands written there.
#
#   bash examples/regenerate_results.sh [jsb] [mnist] [ptb] [plots]   # default: all four
#
# Run from the repository root with snuc installed (the README's setup) and the data in
# $SNUC_DATA (default ../shared/data). Every result file under docs/results/ is rewritten
# but the HWA tuning runs (variants trained to scratch files, docs/results.md) and
# mnist_cnn_1000 (session 7's run on the first 1,000 digits, kept for reference);
# the studies written as JSON lines (robustness, mapping knobs, the jsb_snu mapping study)
# go on with --resume, so remove their .jsonl first to recompute them from scratch, and
# rerun this script after an interruption to finish them. Calibration samples and
# calibrated artefacts go to $SNUC_RESULTS_WORK (default: a temporary folder).
#
# What each stage costs on the 2-core machine of docs/results.md: jsb about ten minutes,
# mnist several hours (mnist_cnn's five chips over 10,000 digits most of them), ptb
# about 40 minutes per model.
set -euo pipefail

export SNUC_DATA=${SNUC_DATA:-../shared/data}
python=${PYTHON:-python}
work=${SNUC_RESULTS_WORK:-$(mktemp -d)}
mkdir -p "$work"
out=docs/results
models=examples/models
compensated=(--t-inference 3600,86400 --drift-compensation on)

log() { echo "== $(date -u +%H:%M:%S) $*" >&2; }

calibration() { # task -> path of its calibration samples (made once per work folder)
    local path="$work/$1_cal.npy"
    [[ -f $path ]] || "$python" examples/make_calibration.py "$1" "$path" >&2
    echo "$path"
}

jsb() {
    local cal name
    for name in jsb_snu jsb_ssnu; do
        log "$name"
        snuc eval "$models/$name.onnx" --task jsb --csv "$out/$name.csv" --markdown "$out/$name.md"
        log "$name calibrated"
        snuc compile "$models/$name.onnx" --calibrate "$(calibration jsb)" -o "$work/${name}_cal.snuc"
        snuc eval "$work/${name}_cal.snuc" --task jsb --modes quantized,pcm "${compensated[@]}" \
            --csv "$out/${name}_calibrated.csv" --markdown "$out/${name}_calibrated.md"
        log "$name on the simulator"
        snuc eval "$models/$name.onnx" --task jsb --modes float,pcm --t-inference 3600 --seeds 0 \
            --drift-compensation on --backend sim
    done
    for name in lstm gru; do
        log "jsb_$name calibrated"
        snuc compile "$models/jsb_$name.onnx" --calibrate "$(calibration jsb)" -o "$work/jsb_${name}_cal.snuc"
        snuc eval "$work/jsb_${name}_cal.snuc" --task jsb --modes quantized,pcm "${compensated[@]}" \
            --csv "$out/robustness_calibrated_$name.csv" --markdown "$out/robustness_calibrated_$name.md"
    done
    for name in robustness mapping_knobs_jsb jsb_snu_mapping_study; do
        log "study $name"
        snuc eval --spec "$out/$name.toml" --resume
    done
    for name in jsb_snu_hwa jsb_ssnu_hwa; do
        log "$name"
        snuc eval "$models/$name.onnx" --task jsb --modes float,quantized,pcm \
            --t-inference 3600,86400,31536000 --drift-compensation on \
            --csv "$out/$name.csv" --markdown "$out/$name.md"
    done
}

mnist() {
    local name
    for name in mnist_snu7 mnist_ssnu4; do
        log "$name"
        snuc eval "$models/$name.onnx" --task mnist --modes float,quantized,pcm "${compensated[@]}" \
            --csv "$out/$name.csv" --markdown "$out/$name.md"
    done
    log "mnist_snu7 after a year"
    snuc eval "$models/mnist_snu7.onnx" --task mnist --modes pcm --t-inference 31536000 \
        --drift-compensation on --csv "$out/mnist_snu7_1y.csv"
    log "mnist_snu7_hwa"
    snuc eval "$models/mnist_snu7_hwa.onnx" --task mnist --modes float,quantized,pcm \
        --t-inference 3600,86400,31536000 --drift-compensation on \
        --csv "$out/mnist_snu7_hwa.csv" --markdown "$out/mnist_snu7_hwa.md"
    log "rate codings"
    snuc eval "$models/mnist_snu7.onnx" --task mnist --modes float --coding-seeds 0,1,2,3,4 \
        --csv "$out/mnist_snu7_codings.csv"
    snuc eval "$models/mnist_cnn.onnx" --task mnist --modes float,quantized --coding-seeds 0,1,2,3,4 \
        --csv "$out/mnist_cnn_codings.csv" --markdown "$out/mnist_cnn_codings.md"
    log "mnist_cnn"
    snuc eval "$models/mnist_cnn.onnx" --task mnist --modes float,quantized,pcm "${compensated[@]}" \
        --csv "$out/mnist_cnn.csv" --markdown "$out/mnist_cnn.md"
}

ptb() {
    local name
    for name in ptb_snu ptb_ssnu; do
        log "$name calibrated"
        snuc compile "$models/$name.onnx" --chips 2 --calibrate "$(calibration ptb)" -o "$work/${name}_cal.snuc"
        snuc eval "$work/${name}_cal.snuc" --task ptb --modes float,quantized,pcm "${compensated[@]}" \
            --csv "$out/$name.csv" --markdown "$out/$name.md"
        log "$name default ranges"
        snuc eval "$models/$name.onnx" --task ptb --chips 2 --modes quantized
    done
}

plots() {
    log "plots"
    "$python" examples/plot_results.py "$out/drift.png" "$out/jsb_snu.csv" "$out/jsb_ssnu.csv"
    "$python" examples/plot_results.py "$out/drift_all.png" "$out"/{jsb_snu,jsb_ssnu,mnist_snu7,mnist_ssnu4,ptb_snu,ptb_ssnu}.csv
    "$python" examples/plot_results.py --relative "$out/robustness.png" "$out/robustness.csv"
    "$python" examples/plot_results.py "$out/hwa.png" "$out"/{jsb_snu,jsb_snu_hwa,jsb_ssnu,jsb_ssnu_hwa,mnist_snu7,mnist_snu7_1y,mnist_snu7_hwa}.csv \
        --compensation global
    snuc plot-study "$out/jsb_snu_mapping_study.jsonl" -o "$out/jsb_snu_mapping_study.png"
}

stages=("$@")
[[ ${#stages[@]} -gt 0 ]] || stages=(jsb mnist ptb plots)
for stage in "${stages[@]}"; do  # every name checked before hours of work start
    case $stage in
        jsb | mnist | ptb | plots) ;;
        *) echo "regenerate_results.sh: unknown stage '$stage' (jsb, mnist, ptb, plots)" >&2; exit 2 ;;
    esac
done
for stage in "${stages[@]}"; do "$stage"; done
