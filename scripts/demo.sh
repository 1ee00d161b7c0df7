#!/usr/bin/env bash
# `make demo`: the tracker node on synthetic RGB-T bags, end to end over ROS 2 (ckd_ros/ros/demo.py;
# `bash scripts/demo.sh --help` lists the options, `make demo DEMO_ARGS='--sequences 1'` passes them).
# Needs the built package in the environment: `source scripts/env.sh` first (make demo does it).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if ! python -c 'import ckd_ros.msg, rclpy' 2>/dev/null; then
  echo "demo: the built ckd_ros package is not in this shell: run 'make build' and 'source scripts/env.sh'" \
       "(or simply 'make demo')" >&2
  exit 2
fi
# DDS stays on this machine (env.sh sets it; kept here for shells that set ROS variables themselves).
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
exec python -m ckd_ros.ros.demo "$@"
