"""The option vocabularies of the tracker, one source each, importable without torch: precision,
backend, the device grammar and the checkpoint names that are no file. The node's parameters
(:mod:`ckd_ros.ros.params`), ``ckd-eval run`` (:mod:`ckd_ros.cli.eval`), :func:`ckd_ros.core.api.init_tracker`
and :mod:`ckd_ros.core.acceleration` all take their names from here. The thermal gain modes and their
default live with the gain control (:data:`ckd_ros.core.image.GAIN_MODES`, ``DEFAULT_GAIN_MODE``).
"""
from __future__ import annotations

# chosen for this machine's CPU class / GPU (ckd_ros.core.acceleration.auto_precision)
AUTO = 'auto'
# what each means: ckd_ros.core.acceleration
PRECISIONS = ('fp32', 'bf16', 'fp16')
BACKENDS = ('eager', 'compile', 'int8', 'onnxruntime', 'onnxruntime-int8')
# backends that run on the CPU in their own number format (fp32 precision only)
CPU_ONLY_BACKENDS = ('int8', 'onnxruntime', 'onnxruntime-int8')
# what the node's precision / backend parameters and ckd-eval run's --precision / --backend take
PRECISION_CHOICES = PRECISIONS + (AUTO,)
BACKEND_CHOICES = BACKENDS + (AUTO,)

# ``checkpoint=`` values that select the deterministic recipe weights (untrained; tests, benchmarks)
RECIPE_CHECKPOINTS = ('recipe', 'random')

DEVICE_GRAMMAR = "'auto', 'cpu', 'cuda' or 'cuda:N'"


def parse_device(device: str) -> str:
    """A device name as :func:`ckd_ros.core.api.resolve_device` takes it, checked and normalised (stripped,
    lower case): ``auto``, ``cpu``, ``cuda`` or ``cuda:N``. Whether that device exists is
    :func:`~ckd_ros.core.api.resolve_device`'s to say (it needs torch). ValueError for anything else."""
    spec = device.strip().lower() if isinstance(device, str) else None
    if spec in ('auto', 'cpu', 'cuda') or (spec is not None and spec.startswith('cuda:') and spec[5:].isdigit()):
        return spec
    raise ValueError(f'device must be {DEVICE_GRAMMAR}, got {device!r}')
