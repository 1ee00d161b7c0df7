#!/usr/bin/env bash
# Builds the ckd_ros package with colcon from the pip wheels into ./install (symlinked Python
# sources, so edits to existing .py files need no rebuild). Skips the build when nothing that
# the build reads has changed since the last successful one.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
# What a build depends on: interface files, CMake/package files, and the list of installed files
# (new or removed files need a new symlink; edits to existing files do not).
want="$( (cat package.xml CMakeLists.txt msg/* srv/* cmake/*; \
          find ckd_ros ckd_train launch config rviz scripts -type f -not -path '*/__pycache__/*' | sort) \
        | sha256sum | cut -d' ' -f1)"
stamp="$root/install/.build.sha256"
if [ "${FORCE_BUILD:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
export VIRTUAL_ENV="$venv"
export PATH="$venv/bin:$PATH"
export AMENT_PREFIX_PATH="$venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
echo "[build] colcon build (ckd_ros)"
# The ros-* wheels' CMake exports carry the include paths of the container they were built in;
# cmake/fix_wheel_python_paths.cmake rewrites them to this interpreter's.
log="$root/log/build.out"
mkdir -p "$root/log"
if ! colcon --log-base "$root/log" build --base-paths "$root" --build-base "$root/build" \
      --install-base "$root/install" --symlink-install \
      --cmake-args -DPython3_EXECUTABLE="$venv/bin/python" -DBUILD_TESTING=OFF \
      -DCMAKE_PROJECT_INCLUDE="$root/cmake/fix_wheel_python_paths.cmake" >"$log" 2>&1; then
  cat "$log"
  echo "[build] colcon build failed (log above, also in $log)" >&2
  exit 1
fi
echo "$want" > "$stamp"
