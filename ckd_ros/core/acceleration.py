"""How the CKD network runs inside the tracker: numeric precision and execution backend.

``Acceleration(precision, backend)`` (``init_tracker(..., precision=, backend=)``, node parameters
``precision`` / ``backend``; speed and accuracy figures: the README's Performance section):

============  ==========================================================================================
precision     effect
============  ==========================================================================================
``fp32``      default; the official numbers (parity).
``bf16``      ``torch.autocast`` to bfloat16 (CPU or CUDA).  On a CPU without AVX-512 BF16 / AMX the
              bf16 matrix products are emulated and *slower* than fp32 (measured: the README's Performance section).
``fp16``      ``torch.autocast`` to float16, CUDA only (CPU fp16 kernels are slow and not accurate).
============  ==========================================================================================

============  ==========================================================================================
backend       effect
============  ==========================================================================================
``eager``     default; PyTorch modules as written.
``compile``   ``torch.compile`` of the network (inductor; on the CPU it needs a C compiler).  The
              first frame compiles (tens of seconds on a small CPU).
``int8``      dynamic int8 quantisation of every ``nn.Linear`` (weights int8 per output channel,
              activations quantised per frame; ``torch.ao.quantization.quantize_dynamic``), CPU only,
              fp32 precision only.
``onnxruntime``  the network exported to ONNX (opset 17, candidate elimination included) and run by
              ONNX Runtime on the CPU, fp32 precision only.
``onnxruntime-int8``  the same ONNX export with every weight MatMul dynamically quantised to int8
              (``onnxruntime.quantization.quantize_dynamic``: weights int8, one scale per tensor;
              activations quantised per call; fused by ONNX Runtime into ``DynamicQuantizeMatMul``),
              CPU only, fp32 precision only.  Attention products, convolutions (patch embedding,
              head) and LayerNorms stay fp32.
============  ==========================================================================================

Every runner returns float32 ``(score_map, size_map, offset_map)``; the tracker's box decoding
is the same for all.  The eager and compile runners run the network with ``search_only`` (the last
block skips the template tokens' outputs, which the head does not read) and, in fp32/bf16/fp16
alike, with the two branches batched into one product per layer (``CKDNet.batch_branches``).
A runner is told the templates once per target (:meth:`NetworkRunner.set_templates`): the
eager/compile/int8 runners keep the template tokens (patch embedding + positional embedding), which
the network would otherwise recompute every frame.
"""
from __future__ import annotations

import copy
import io
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .model import CKDNet

PRECISIONS = ("fp32", "bf16", "fp16")
BACKENDS = ("eager", "compile", "int8", "onnxruntime", "onnxruntime-int8")
# backends that run on the CPU in their own number format (fp32 precision only)
CPU_ONLY_BACKENDS = ("int8", "onnxruntime", "onnxruntime-int8")
ONNX_OPSET = 17
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

Maps = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Acceleration:
    """Precision and backend of the network (defaults: fp32 eager = the official numbers)."""
    precision: str = "fp32"
    backend: str = "eager"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend in CPU_ONLY_BACKENDS and self.precision != "fp32":
            raise ValueError(f"backend {self.backend!r} runs in its own number format: use precision 'fp32' "
                             f"with it, got {self.precision!r}")

    @property
    def is_exact(self) -> bool:
        """True for the configuration that reproduces the official numbers."""
        return self.precision == "fp32" and self.backend == "eager"

    def check_device(self, device: torch.device) -> None:
        """Refuse combinations the device cannot run, with the alternative in the message."""
        if device.type != "cuda" and self.precision == "fp16":
            raise ValueError("precision 'fp16' needs a CUDA device; on the CPU use 'fp32' (exact) or "
                             "backend 'int8' / 'onnxruntime' / 'onnxruntime-int8' for speed")
        if device.type != "cpu" and self.backend in CPU_ONLY_BACKENDS:
            raise ValueError(f"backend {self.backend!r} runs on the CPU only, the tracker device is {device}; "
                             "on a GPU use backend 'eager' or 'compile' with precision 'fp16'/'bf16'")


class NetworkRunner:
    """Eager PyTorch (optionally under autocast): the reference runner the others are compared with."""

    def __init__(self, network: CKDNet, device: torch.device, precision: str = "fp32"):
        self.network = network
        self.device = device
        self.precision = precision
        self._templates: list[torch.Tensor] | None = None
        self._mask: torch.Tensor | None = None

    def _autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_AUTOCAST_DTYPES[self.precision])

    @torch.inference_mode()
    def set_templates(self, templates: Sequence[torch.Tensor], template_mask: torch.Tensor | None) -> None:
        """Normalised ``[z_rgb, z_tir]`` crops of the current target and the CE template mask."""
        with self._autocast():
            self._templates = self.network.embed_templates(templates)
        self._mask = template_mask

    def _forward(self, templates: list[torch.Tensor], searches: list[torch.Tensor],
                 peak_weight: torch.Tensor | None) -> dict:
        # search_only: the tracker reads the maps only, so the last block skips the template tokens;
        # peak_weight: size/offset only where the tracker's decode reads them
        return self.network(templates, searches, ce_template_mask=self._mask, search_only=True,
                            peak_weight=peak_weight)

    @torch.inference_mode()
    def __call__(self, searches: Sequence[torch.Tensor], peak_weight: torch.Tensor | None = None) -> Maps:
        """``[x_rgb, x_tir]`` normalised search crops -> float32 (score_map, size_map, offset_map).

        ``peak_weight`` (the tracker's Hann window): a runner may then compute size and offset only at
        the arg-max of ``peak_weight * score_map`` (NaN elsewhere; the eager runner does, exactly);
        others return full maps."""
        if self._templates is None:
            raise RuntimeError("set_templates() must be called before running the network")
        with self._autocast():
            out = self._forward(self._templates, list(searches), peak_weight)
        return out["score_map"].float(), out["size_map"].float(), out["offset_map"].float()


class CompiledRunner(NetworkRunner):
    """``torch.compile`` of the network's forward (compiled on the first frame, fixed shapes)."""

    def __init__(self, network: CKDNet, device: torch.device, precision: str = "fp32"):
        super().__init__(network, device, precision)
        self._compiled = torch.compile(network, dynamic=False)

    def _forward(self, templates: list[torch.Tensor], searches: list[torch.Tensor],
                 peak_weight: torch.Tensor | None) -> dict:
        # full maps: the data-dependent peak window would break the compiled graph
        return self._compiled(templates, searches, ce_template_mask=self._mask, search_only=True)


def quantize_linear_int8(network: CKDNet) -> CKDNet:
    """A copy of ``network`` whose ``nn.Linear`` layers are dynamically quantised to int8 (CPU).

    The copy keeps a shared student shared (deepcopy preserves aliasing); convolutions (patch
    embedding, head) and LayerNorms stay fp32.
    """
    with warnings.catch_warnings():
        # torch 2.13 flags torch.ao.quantization as deprecated (successor: torchao, not installed here);
        # the dynamic int8 Linear kernels still run and are tested (test/test_acceleration.py)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        # per-output-channel weight scales: same speed, ~10-30 % smaller map errors than one scale per tensor
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(network).cpu().eval(), {nn.Linear: qconfig},
                                                      dtype=torch.qint8)


class _MapsModule(nn.Module):
    """The network as a function of four crops with a fixed CE template mask -> three maps (export)."""

    def __init__(self, network: CKDNet):
        super().__init__()
        self.network = network
        mask = network.template_mask(1, "cpu")
        self.has_mask = mask is not None
        self.register_buffer("mask", mask if mask is not None else torch.zeros(0, dtype=torch.bool))

    def forward(self, z_rgb, z_tir, x_rgb, x_tir):
        out = self.network([z_rgb, z_tir], [x_rgb, x_tir], ce_template_mask=self.mask if self.has_mask else None)
        return out["score_map"], out["size_map"], out["offset_map"]


ONNX_INPUTS = ("z_rgb", "z_tir", "x_rgb", "x_tir")
ONNX_OUTPUTS = ("score_map", "size_map", "offset_map")


def export_onnx(network: CKDNet, template_size: int, search_size: int, path=None) -> bytes:
    """The network (batch 1, fixed crop sizes, candidate elimination included) as an ONNX model.

    Inputs ``z_rgb, z_tir`` (1, 3, T, T) and ``x_rgb, x_tir`` (1, 3, S, S) normalised crops; outputs
    ``score_map, size_map, offset_map``.  Returns the serialised model (also written to ``path``).
    Candidate elimination exports as TopK/GatherElements/ScatterElements: the selection is data
    dependent but its sizes are fixed by the keep ratios, so one static graph serves every frame.
    """
    module = _MapsModule(copy.deepcopy(network).cpu().float().eval())
    example = (torch.zeros(1, 3, template_size, template_size), torch.zeros(1, 3, template_size, template_size),
               torch.zeros(1, 3, search_size, search_size), torch.zeros(1, 3, search_size, search_size))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the tracer warns about Python-side shape checks; shapes are fixed for this export by design
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, buffer, input_names=list(ONNX_INPUTS), output_names=list(ONNX_OUTPUTS),
                          opset_version=ONNX_OPSET, dynamo=False, do_constant_folding=True)
    data = buffer.getvalue()
    if path is not None:
        with open(path, "wb") as handle:
            handle.write(data)
    return data


def quantize_onnx_int8(model: bytes, per_channel: bool = False) -> bytes:
    """``model`` (serialised ONNX) with the weights of its MatMul/Gemm nodes dynamically quantised to int8.

    ``onnxruntime.quantization.quantize_dynamic``: weights int8 (one scale per tensor, or per output
    column with ``per_channel``), activations quantised to uint8 per call; MatMuls of two activations
    (attention) stay fp32.  Per tensor is the default: with the shipped ckd_tiny weights it stayed
    closer to fp32 than per channel (max score-map error on 30 demo-sequence crops 0.035 against 0.098,
    score peak on the fp32 cell 30/30 against 29/30; 7-bit weights, ``reduce_range``, did not help)
    at the same speed.
    """
    import logging
    import tempfile
    from pathlib import Path

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class _NoPreprocessAdvice(logging.Filter):
        # quantize_dynamic logs advice to run its pre-processing (shape inference, ORT optimisation):
        # the session optimises the quantised graph itself (fusing DynamicQuantizeMatMul) at load
        def filter(self, record):
            return "pre-processing" not in record.getMessage()

    advice = _NoPreprocessAdvice()
    logging.getLogger().addFilter(advice)
    try:
        with tempfile.TemporaryDirectory(prefix="ckd_onnx_int8_") as folder:
            quantized = Path(folder) / "int8.onnx"
            quantize_dynamic(onnx.load_from_string(model), quantized, per_channel=per_channel,
                             weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
            return quantized.read_bytes()
    finally:
        logging.getLogger().removeFilter(advice)


class OnnxRuntimeRunner:
    """The exported network in an ONNX Runtime CPU session (threads = torch's thread count);
    ``int8``: its weight MatMuls dynamically quantised (:func:`quantize_onnx_int8`)."""

    def __init__(self, network: CKDNet, template_size: int, search_size: int, threads: int | None = None,
                 int8: bool = False):
        try:
            import onnxruntime as ort
        except ImportError as error:  # pinned in requirements.txt; a system install may lack it
            backend = "onnxruntime-int8" if int8 else "onnxruntime"
            raise RuntimeError(f"backend {backend!r} needs the onnxruntime package (pip install onnxruntime)") from error
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        model = export_onnx(network, template_size, search_size)
        if int8:
            model = quantize_onnx_int8(model)
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self._templates: list[np.ndarray] | None = None

    @staticmethod
    def _array(tensor: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(tensor.detach().cpu().float().numpy())

    def set_templates(self, templates: Sequence[torch.Tensor], template_mask: torch.Tensor | None) -> None:
        # the template mask is part of the exported graph (it only depends on the config)
        self._templates = [self._array(t) for t in templates]

    def __call__(self, searches: Sequence[torch.Tensor], peak_weight: torch.Tensor | None = None) -> Maps:
        # peak_weight is not used: the exported graph computes the full maps
        if self._templates is None:
            raise RuntimeError("set_templates() must be called before running the network")
        feeds = dict(zip(ONNX_INPUTS, self._templates + [self._array(s) for s in searches]))
        score, size, offset = self.session.run(list(ONNX_OUTPUTS), feeds)
        return torch.from_numpy(score), torch.from_numpy(size), torch.from_numpy(offset)


def make_runner(network: CKDNet, device: torch.device, acceleration: Acceleration | None,
                template_size: int, search_size: int):
    """The runner of ``acceleration`` (None = fp32 eager) for ``network`` on ``device``."""
    acceleration = acceleration or Acceleration()
    acceleration.check_device(device)
    if acceleration.backend == "eager":
        return NetworkRunner(network, device, acceleration.precision)
    if acceleration.backend == "compile":
        return CompiledRunner(network, device, acceleration.precision)
    if acceleration.backend == "int8":
        return NetworkRunner(quantize_linear_int8(network), device)
    return OnnxRuntimeRunner(network, template_size, search_size, int8=acceleration.backend == "onnxruntime-int8")
