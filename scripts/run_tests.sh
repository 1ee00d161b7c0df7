#!/usr/bin/env bash
# Runs the pytest suite against the installed package (source scripts/env.sh first; make test does).
# Each run gets a ROS domain id of its own so that parallel runs on one machine do not see each other.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${CKD_TEST_DOMAIN_FIXED:-}" ]; then
  # 1..100: on Linux only ids 0..101 and 215..232 keep every DDS port below the ephemeral port range
  # (32768+), where another program's socket can take a port a participant needs; 0 is everyone's default
  export ROS_DOMAIN_ID=$(( (RANDOM % 100) + 1 ))
fi
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
cd "$root"
echo "[test] ROS_DOMAIN_ID=$ROS_DOMAIN_ID"
exec pytest "$@"
