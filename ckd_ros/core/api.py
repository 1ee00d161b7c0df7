"""Entry point of the tracker: ``init_tracker(config, checkpoint=None, device="auto")``.

::

    from ckd_ros import init_tracker
    tracker = init_tracker("ckd_tiny")                    # shipped weights
    tracker = init_tracker("ckd_4b_dropmae_ckd_tf_cc_mask.25_maxce_trainhead",
                           checkpoint="OSTrack_CKD_ep0010.pth.tar", device="cuda")
    tracker.initialize(rgb, thermal, (x, y, w, h))       # HxWx3 uint8 RGB; thermal HxW or HxWx3 uint8
    result = tracker.track(rgb, thermal)                  # result.box, result.score, result.state
    tracker = init_tracker("ckd_tiny", precision="auto")  # fastest option measured within 1 SR point, else fp32
    print(tracker.precision_choice.log_line())            # "precision auto: chose fp32/eager because ..."
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .acceleration import PrecisionChoice, check_request, choose_for_device
from .checkpoint import load_model_weights
from .config import CKDConfig, load_config
from .model import CKDNet, build_ckd_model
from .options import DEVICE_GRAMMAR, RECIPE_CHECKPOINTS, parse_device
from .recipe_weights import load_recipe_weights
from .tracker import CKDTracker, TrackerOptions

WEIGHTS_DIR = Path(__file__).resolve().parent / 'weights'


def resolve_device(device: str | torch.device = 'auto') -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` -> torch.device.

    The names are :func:`ckd_ros.core.options.parse_device`'s. Asking for CUDA when it is not available
    (or for a GPU index that does not exist) raises RuntimeError; there is no silent fallback to the CPU.
    """
    if isinstance(device, torch.device):
        spec = str(device)
    elif isinstance(device, str):
        spec = device
    else:
        raise ValueError(f'device must be {DEVICE_GRAMMAR}, got {device!r}')
    try:
        spec = parse_device(spec)
    except ValueError:
        raise ValueError(f'device must be {DEVICE_GRAMMAR}, got {device!r}') from None
    if spec == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if spec == 'cpu':
        return torch.device('cpu')
    resolved = torch.device(spec)
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was requested but CUDA is not available "
                           f"(torch {torch.__version__}); "
                           "use device='cpu' or 'auto'")
    if resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise RuntimeError(f'device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) present')
    return resolved


def select_acceleration(precision: str, backend: str, device: str | torch.device = 'auto') -> PrecisionChoice:
    """``precision`` / ``backend`` as :func:`init_tracker` and the node take them, ``"auto"`` allowed in
    either, resolved for ``device`` (a name as for :func:`resolve_device`, or a torch.device).

    ``precision="auto"`` (backend ``"eager"``): the fastest precision for that backend whose accuracy
    effect is measured within 1 SR point on this CPU class / GPU (:data:`ckd_ros.core.acceleration.
    MEASURED_OPTIONS`), else fp32; ``backend="auto"`` too: the backend may change as well (e.g.
    ``onnxruntime``, exact and faster on the CPU classes where it was measured).  Without ``"auto"``
    the request is checked and returned as is (``automatic=False``).  The result's ``log_line()`` says
    what was chosen and why. The names are checked by :func:`ckd_ros.core.acceleration.check_request`
    and the choice made there (:func:`~ckd_ros.core.acceleration.choose_for_device`); this function only
    resolves the device.
    """
    check_request(precision, backend)
    resolved = device if isinstance(device, torch.device) else resolve_device(device)
    return choose_for_device(precision, backend, resolved)


def shipped_weights_path(config_name: str) -> Path:
    """Where the shipped weights of a small config live (``ckd_ros/core/weights/<name>.pth.tar``)."""
    return WEIGHTS_DIR / f'{config_name}.pth.tar'


def load_network(cfg: CKDConfig, checkpoint: str | os.PathLike | None, device: torch.device) -> CKDNet:
    """The network of ``cfg`` with weights from ``checkpoint`` (see :func:`init_tracker`), on ``device``."""
    if checkpoint is None:
        if cfg.is_official:
            raise ValueError(f"the official config {cfg.name!r} has no shipped weights: pass checkpoint=<path to "
                             f"OSTrack_CKD_ep{cfg.TEST.EPOCH:04d}.pth.tar> (or checkpoint='recipe' for untrained "
                             "deterministic weights)")
        path = shipped_weights_path(cfg.name)
        if not path.is_file():
            raise FileNotFoundError(f"no shipped weights for {cfg.name!r} at {path}; create them with `make weights` "
                                    "(or pass checkpoint=<file>, or checkpoint='recipe' for untrained weights)")
        checkpoint = path
    network = build_ckd_model(cfg, initialize=False)
    if isinstance(checkpoint, str) and checkpoint in RECIPE_CHECKPOINTS:
        load_recipe_weights(network)
    else:
        load_model_weights(network, checkpoint)
    return network.to(device).eval()


def init_tracker(config: str | os.PathLike | CKDConfig, checkpoint: str | os.PathLike | None = None,
                 device: str | torch.device = 'auto', options: TrackerOptions | None = None,
                 precision: str = 'fp32', backend: str = 'eager') -> CKDTracker:
    """Build a ready tracker.

    Args:
        config: official name (``ckd_4b_dropmae_ckd_tf_cc_mask.25``, ``..._maxce_trainhead`` ...),
            ``ckd_tiny`` / ``ckd_small``, a YAML path, or a loaded :class:`CKDConfig`.
        checkpoint: a CKD checkpoint file (official ``*.pth.tar`` or one written by
            :func:`ckd_ros.core.checkpoint.save_checkpoint`); None = the shipped weights of a small
            config (official configs have none: error); ``"recipe"`` (alias ``"random"``) = the
            deterministic untrained recipe weights, for tests and benchmarks.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (see :func:`resolve_device`).
        options: non-official tracker behaviour; default from the config's ``TEST.*`` keys.
        precision: ``"fp32"`` (default, official numbers), ``"bf16"`` (autocast), ``"fp16"`` (CUDA only),
            ``"auto"`` (the fastest precision measured within 1 SR point on this CPU class or GPU, else
            fp32; see :func:`select_acceleration`).
        backend: ``"eager"`` (default), ``"compile"`` (torch.compile), ``"int8"`` (dynamic int8 Linear
            layers, CPU), ``"onnxruntime"`` (ONNX export run by ONNX Runtime, CPU), ``"onnxruntime-int8"``
            (the ONNX export with int8 weight MatMuls, ONNX Runtime, CPU), ``"auto"`` (chosen like
            precision ``"auto"``); see :mod:`ckd_ros.core.acceleration` and the README's Performance
            section for speed and accuracy.

    The tracker's ``precision_choice`` (:class:`~ckd_ros.core.acceleration.PrecisionChoice`) records
    what was chosen and why (``precision_choice.log_line()``; also logged at INFO by ``ckd_ros.core.api``
    when ``"auto"`` chose).
    """
    check_request(precision, backend)   # bad names fail before anything is loaded
    cfg = load_config(config)
    resolved = resolve_device(device)   # the one resolution and check of the device on its way to the network
    choice = choose_for_device(precision, backend, resolved)
    if choice.automatic:
        logging.getLogger(__name__).info(choice.log_line())
    network = load_network(cfg, checkpoint, resolved)
    tracker = CKDTracker(network, cfg, resolved, options, choice.acceleration)
    tracker.precision_choice = choice
    return tracker
