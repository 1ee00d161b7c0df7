# Source this file (bash or zsh): `source scripts/env.sh`. It gives a shell in which the built
# ckd_ros package, its messages and rclpy work: the project's virtual environment, the colcon
# install prefix, and DDS kept on this machine (loopback discovery) in a ROS domain of its own.
# Run `make build` first (make test / make demo do it for you).
_ckd_root="$(cd "$(dirname "${BASH_SOURCE[0]:-${(%):-%x}}")/.." && pwd)"
if [ ! -x "$_ckd_root/.venv/bin/python" ]; then
  echo "ckd_ros: $_ckd_root/.venv is missing: run 'make venv' (or 'make build') first" >&2
  return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
. "$_ckd_root/.venv/bin/activate"
_ckd_prefix="$_ckd_root/install/ckd_ros"
if [ ! -d "$_ckd_prefix" ]; then
  echo "ckd_ros: $_ckd_prefix is missing: run 'make build' first" >&2
else
  # What colcon's install/setup.sh does for this one package, without depending on colcon-bash.
  export AMENT_PREFIX_PATH="$_ckd_prefix:$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
  export CMAKE_PREFIX_PATH="$_ckd_prefix:$VIRTUAL_ENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export LD_LIBRARY_PATH="$_ckd_prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PYTHONPATH="$_ckd_prefix/lib/python3.11/site-packages${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="$_ckd_prefix/bin:$_ckd_prefix/lib/ckd_ros:$PATH"
fi
# DDS: discovery on loopback only, Fast DDS, and a domain id of this shell's own unless set.
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-42}"
# Camera images (~1 MB) exceed Fast DDS's default 512 KiB shared-memory segment and crawl through as
# fragments; the package's profile gives shared memory room for them (README: "Large images over Fast DDS").
if [ "$RMW_IMPLEMENTATION" = "rmw_fastrtps_cpp" ]; then
  export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$_ckd_root/config/fastdds_large_images.xml}"
fi
# The project's own sources must not shadow the installed package (which holds the generated messages).
export PYTHONSAFEPATH=1
unset _ckd_root _ckd_prefix
