"""ckd_ros: CKD RGB-T single-object tracking (ROS 2 node + ROS-free core).

``import ckd_ros`` is light: it imports neither torch nor rclpy.  The tracker entry points are
loaded on first use::

    from ckd_ros import init_tracker
    tracker = init_tracker("ckd_tiny")          # or an official config name / YAML path
    tracker.initialize(rgb, thermal, (x, y, w, h))
    result = tracker.track(rgb, thermal)         # result.box, result.score, result.state
"""
from importlib import import_module

__version__ = '0.1.0'

# public name -> module that defines it (imported lazily by __getattr__)
_LAZY_EXPORTS = {
    'init_tracker': 'ckd_ros.core.api',
}

__all__ = ['__version__', *_LAZY_EXPORTS]


def __getattr__(name):
    module = _LAZY_EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ckd_ros' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY_EXPORTS))
