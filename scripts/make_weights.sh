#!/usr/bin/env bash
# Retrains the shipped demo weights ckd_ros/core/weights/ckd_tiny.pth.tar on synthetic RGB-T data (CPU).
#
# Recipe: the ckd_tiny network (ViT 128-d, 4 blocks, MCE at blocks 1/2/3, 96/192 px crops) trained with
# the full CKD stage-1 objective (four branches: students + teachers, masked modelling 0.25,
# style/content distillation), base seed 42, in three stages:
#   1. from scratch on the classic synthetic world (ckd_train/configs/ckd_tiny_synthetic.yaml, ~16 min);
#   2. from stage 1's export (`ckd-train --init`) on the realistic world (ckd_train/configs/ckd_tiny_rgbt.yaml:
#      real target motion, natural-photo backgrounds, people / cars / drones, sensor artefacts; 14 epochs,
#      70 min with 1 torch thread on a 2-core AMD EPYC, 2026-12-06);
#   3. from stage 2's last training checkpoint (students, teachers, heads) with modality dropout
#      (ckd_train/configs/ckd_tiny_rgbt_dropout.yaml: one camera black in a fifth of the samples; 10 epochs,
#      53 min on the same machine);
# then stripped (no optimizer, no teachers) and scored on held-out seeds 900000..900005 of the realistic
# world (motion from the 'test' pool of real tracks, never used in training or validation) as fused vs
# RGB-only vs thermal-only tracking. After an interruption, run it again: finished stages are not
# repeated and the interrupted one resumes from its newest checkpoint (delete the work folder for a fresh run).
#
# Environment: CKD_WEIGHTS_WORK (work folder, default output/make_weights), CKD_WEIGHTS_EPOCHS
# (override stage 3's TRAIN.EPOCH), CKD_WEIGHTS_THREADS (torch threads, default 1: on a 2-core machine one
# compute thread plus one data worker is faster than two competing OpenMP threads).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
work="${CKD_WEIGHTS_WORK:-$root/output/make_weights}"
threads="${CKD_WEIGHTS_THREADS:-1}"
dest="$root/ckd_ros/core/weights/ckd_tiny.pth.tar"
epochs_arg=()
if [ -n "${CKD_WEIGHTS_EPOCHS:-}" ]; then epochs_arg=(--epochs "$CKD_WEIGHTS_EPOCHS"); fi

# the repository's sources (not an installed copy) so the weights land in this checkout
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="$threads"
cd "$root"

last_checkpoint() {  # the newest epoch checkpoint of a training run folder, or nothing
  # (`|| true`: with pipefail, ls finding nothing would otherwise end the script under set -e)
  ls "$1/checkpoints/train/ckd/$2"/OSTrack_CKD_ep*.pth.tar 2>/dev/null | sort | tail -n 1 || true
}

start=$(date +%s)
stage1="$work/stage1.pth.tar"
if [ ! -f "$stage1" ]; then
  echo "[make_weights] stage 1: ckd_tiny_synthetic (classic world) into $work/stage1 (threads $threads)"
  "$python" -m ckd_train ckd_tiny_synthetic --output "$work/stage1" --overwrite --threads "$threads" --seed 42
  "$python" -m ckd_train.export "$(last_checkpoint "$work/stage1" ckd_tiny_synthetic)" "$stage1" --overwrite
fi
train_stage() {  # NAME CONFIG INIT [ARGS...]: one stage into $work/NAME, resumed from its newest checkpoint
  local name="$1" config="$2" init="$3"; shift 3
  local resume=() previous
  previous="$(last_checkpoint "$work/$name" "$config")"
  if [ -n "$previous" ]; then resume=(--resume "$previous"); echo "[make_weights] $name resumes from $previous"; fi
  echo "[make_weights] $name: $config into $work/$name (threads $threads)"
  "$python" -m ckd_train "$config" --output "$work/$name" --threads "$threads" --seed 42 --init "$init" \
    "${resume[@]}" "$@"
}
if [ ! -f "$work/stage2.done" ]; then
  train_stage stage2 ckd_tiny_rgbt "$stage1"   # the realistic world
  touch "$work/stage2.done"
fi
train_stage stage3 ckd_tiny_rgbt_dropout "$(last_checkpoint "$work/stage2" ckd_tiny_rgbt)" "${epochs_arg[@]}"
ckpt="$(last_checkpoint "$work/stage3" ckd_tiny_rgbt_dropout)"
echo "[make_weights] training took $(( $(date +%s) - start )) s; exporting $ckpt"
mkdir -p "$(dirname "$dest")"
"$python" -m ckd_train.export "$ckpt" "$dest" --overwrite  # replaces the shipped weights (the point of the script)
echo "[make_weights] held-out synthetic sequences (realistic world, seeds 900000..900005, 300 frames, 640x512)"
"$python" -m ckd_train.evaluate --config ckd_tiny --checkpoint "$dest" --world rgbt --seeds 900000:900006 \
  --length 300 --size 640x512 --threads "$threads" --json "$work/heldout.json"
echo "[make_weights] done in $(( $(date +%s) - start )) s: $dest"
