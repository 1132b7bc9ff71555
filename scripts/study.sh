#!/usr/bin/env bash
# The issue-12 study, every phase in order, each resumable: rerun the same command after
# an interruption (or in the next session) and finished runs are reused, unfinished ones
# continue from their last epoch.
#
#   nohup scripts/study.sh > target/study.log 2>&1 &
#   SLIDEGRADE_BIN=/path/to/slidegrade nohup scripts/study.sh > target/study.log 2>&1 &
#
# 1. default profile: focal synthetic set, Teacher + every Student row at 5×, 2.5×, 1.25×,
#    AT+ weight chosen on validation; ships the synthetic family to models/;
# 2. seeds: 5 seeds of CE, CE + AT+ and the paper's recipe at 2.5× and 1.25× (seed 1 is
#    phase 1's runs), paired by seed;
# 3. real tissue: the same rows on the 200 Arvaniti TMA patches, stratified 5-fold CV;
# 4. real tissue fine-tuned from phase 1's synthetic runs, same folds;
# 5. the real-tissue family trained on all 200 patches from phase 1's weights, shipped as
#    models/*-real;
# 6. every shipped model on the real patches and on the four other-source patches;
# 7. the 2.5× and 1.25× Students fine-tuned on a mixed set (foci and regions), tuned on
#    generated cores.
#
# On resume, phase 1 re-exports models/{teacher-10x,student-*} without the `grading` block
# that `slidegrade bench cores --write-recommendation` added (and, from an old binary,
# without the AT+ output): run `git checkout models/` after it unless you mean to re-tune.
#
# They run in the order 1, 3, 5, 6, 2, 4, 7: the real-tissue phases are short and answer
# questions nothing else does, so they come before the long seeds phase.
# Each phase writes its own section of RESULTS.md. Phases 1–2 are CPU hours on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ -e .deps/onnxruntime ]] || scripts/setup-native.sh
# SLIDEGRADE_BIN: a binary built beforehand (with `--features train`), so that the study
# runs one fixed build while development (and rebuilds of target/) goes on.
bin="${SLIDEGRADE_BIN:-}"
if [[ -z "$bin" ]]; then
  cargo build --release --locked --features train --bin slidegrade
  bin=target/release/slidegrade
fi
train="$bin train"
real=../shared/data/patches/arvaniti
other=../shared/data/patches/prostate

phase() { echo "=== $(date -u +%FT%TZ) $*"; }

phase "1 default profile"
$train recipe --out target/distill --models-dir models --results RESULTS.md --resume

if [[ -d "$real" ]]; then
    phase "3 real tissue, 5-fold CV"
    $train recipe --data "$real" --layout folder --data-mpp 0.23 --cv-folds 5 \
        --out target/distill-real --results RESULTS.md --results-section real-cv --resume

    # Started from phase 1's synthetic runs: phase 4 measured that this helps on real
    # tissue (RESULTS.md, real-cv-finetuned).
    phase "5 real-tissue family on all 200 patches, fine-tuned from synthetic"
    $train recipe --data "$real" --layout folder --data-mpp 0.23 --train-on-all \
        --init-from target/distill \
        --models-dir models --name-suffix=-real --out target/distill-real-all-ft \
        --results RESULTS.md --results-section real-all --resume

    phase "6 shipped models on real patches"
    $bin bench patches --data "$real" --data-mpp 0.23 \
        > target/patches-arvaniti.md
    $bin bench patches --data "$other" --data-mpp 1.0 \
        > target/patches-prostate.md
    cat target/patches-arvaniti.md target/patches-prostate.md
fi
phase "2 seeds"
$train recipe --out target/distill --seeds 1,2,3,4,5 --methods ce,at,paper \
    --student-sizes 32,16 --results RESULTS.md --results-section synthetic-seeds --resume

if [[ -d "$real" ]]; then
    phase "4 real tissue, fine-tuned from synthetic"
    $train recipe --data "$real" --layout folder --data-mpp 0.23 --cv-folds 5 \
        --init-from target/distill --out target/distill-real-finetuned \
        --results RESULTS.md --results-section real-cv-finetuned --resume
fi
# Whole slides hold regions of one pattern as well as foci; the focal-only 2.5× and 1.25×
# Students read such regions of G3 as G4. Fine-tuned on a set of both, they are shipped
# (the Teacher and 5× Student stay the focal ones) when they grade more generated cores
# exactly than the focal ones (`bench cores`; RESULTS.md, "Students trained on foci and
# regions").
phase "7 mixed set: 2.5× and 1.25× Students fine-tuned on foci and regions"
$train recipe --kind mixed --init-from target/distill --out target/distill-mixed \
    --student-sizes 32,16 --teacher-epochs 10 --models-dir target/mixed-models \
    --results RESULTS.md --results-section synthetic-mixed --resume
# 81 cores, radii 0–3, minimum areas 0–1 mm² (the defaults): how every shipped rule was chosen.
$bin bench cores --models-dir target/mixed-models --model student-2p5x \
    --model student-1p25x --write-recommendation
echo "compare with the focal Students' bench cores, then copy the better ones to models/"

phase "done"
