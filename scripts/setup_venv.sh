#!/usr/bin/env bash
# Creates .venv (first run) and installs the pinned dependencies; later runs only compare a stamp.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.requirements.sha256"
want="$(cat "$root/requirements.txt" "$root/requirements-runtime.txt" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv with $($python --version)"
  "$python" -m venv "$venv"
fi
echo "[setup] installing pinned dependencies (first run: about 2 minutes)"
# pip's notes about this machine's unused local index locations are noise: keep real errors only.
quiet_pip() { "$venv/bin/python" -m pip "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }
quiet_pip install -q --upgrade pip
# The test environment uses OpenCV's contrib build (CSRT/KCF baselines); it and the plain build both
# provide cv2 and must not be installed together: an older .venv with the plain one gets contrib alone.
if "$venv/bin/python" -m pip show -q opencv-python-headless >/dev/null 2>&1; then
  quiet_pip uninstall -q -y opencv-python-headless opencv-contrib-python-headless
fi
quiet_pip install -q -r "$root/requirements.txt"
echo "$want" > "$stamp"
