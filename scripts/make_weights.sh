#!/usr/bin/env bash
# Retrains the shipped demo weights ckd_ros/core/weights/ckd_tiny.pth.tar on synthetic RGB-T data (CPU).
#
# Recipe (all in ckd_train/configs/ckd_tiny_synthetic.yaml): the ckd_tiny network (ViT 128-d, 4 blocks,
# MCE at blocks 1/2/3, 96/192 px crops) trained from scratch with the full CKD stage-1 objective
# (four branches: students + teachers, masked modelling 0.25, style/content distillation) on the
# synthetic sequences with seeds SYNTHETIC.SEEDS; base seed 42; then stripped (no optimizer, no
# teachers) and scored on held-out seeds 900000..900005 (never used in training) as fused vs
# RGB-only vs thermal-only tracking.
#
# Environment: CKD_WEIGHTS_WORK (work folder, default output/make_weights), CKD_WEIGHTS_EPOCHS
# (override TRAIN.EPOCH), CKD_WEIGHTS_THREADS (torch threads, default 1: on a 2-core machine one
# compute thread plus one data worker is faster than two competing OpenMP threads).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
work="${CKD_WEIGHTS_WORK:-$root/output/make_weights}"
threads="${CKD_WEIGHTS_THREADS:-1}"
config="ckd_tiny_synthetic"
dest="$root/ckd_ros/core/weights/ckd_tiny.pth.tar"
epochs_arg=()
if [ -n "${CKD_WEIGHTS_EPOCHS:-}" ]; then epochs_arg=(--epochs "$CKD_WEIGHTS_EPOCHS"); fi

# the repository's sources (not an installed copy) so the weights land in this checkout
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="$threads"
cd "$root"

start=$(date +%s)
echo "[make_weights] training $config into $work (threads $threads)"
"$python" -m ckd_train "$config" --output "$work" --overwrite --threads "$threads" --seed 42 "${epochs_arg[@]}"
ckpt="$(ls "$work/checkpoints/train/ckd/$config"/OSTrack_CKD_ep*.pth.tar | sort | tail -n 1)"
echo "[make_weights] training took $(( $(date +%s) - start )) s; exporting $ckpt"
mkdir -p "$(dirname "$dest")"
"$python" -m ckd_train.export "$ckpt" "$dest" --overwrite  # replaces the shipped weights (the point of the script)
echo "[make_weights] held-out synthetic sequences (seeds 900000..900005, 300 frames, 640x512)"
"$python" -m ckd_train.evaluate --config ckd_tiny --checkpoint "$dest" --seeds 900000:900006 \
  --length 300 --size 640x512 --threads "$threads" --json "$work/heldout.json"
echo "[make_weights] done in $(( $(date +%s) - start )) s: $dest"
