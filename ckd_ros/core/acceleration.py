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

``precision: auto`` (and ``backend: auto``): :func:`auto_precision` / the pure :func:`choose_precision`
pick, for the CPU class (its flags: :mod:`ckd_ros.core.cpu_info`) or the GPU's compute capability,
the fastest row of :data:`MEASURED_OPTIONS` whose success (SR) change on ckd_tiny is measured within
:data:`SR_BOUND_POINTS`, else fp32 eager, and say why (:class:`PrecisionChoice`).

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
import importlib.util
import io
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .cpu_info import cpu_class, read_cpu_info
from .model import CKDNet
# the vocabularies (one source, torch-free): ckd_ros.core.options
from .options import AUTO, BACKENDS, CPU_ONLY_BACKENDS, PRECISIONS

ONNX_OPSET = 17
_AUTOCAST_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}

Maps = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Acceleration:
    """Precision and backend of the network (defaults: fp32 eager = the official numbers)."""
    precision: str = 'fp32'
    backend: str = 'eager'

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {self.precision!r}')
        if self.backend not in BACKENDS:
            raise ValueError(f'backend must be one of {BACKENDS}, got {self.backend!r}')
        if self.backend in CPU_ONLY_BACKENDS and self.precision != 'fp32':
            raise ValueError(f"backend {self.backend!r} runs in its own number format: use precision 'fp32' "
                             f"with it, got {self.precision!r}")

    @property
    def is_exact(self) -> bool:
        """True for the configuration that reproduces the official numbers."""
        return self.precision == 'fp32' and self.backend == 'eager'

    def check_device(self, device: torch.device) -> None:
        """Refuse combinations the device cannot run, with the alternative in the message."""
        if device.type != 'cuda' and self.precision == 'fp16':
            raise ValueError("precision 'fp16' needs a CUDA device; on the CPU use 'fp32' (exact) or "
                             "backend 'int8' / 'onnxruntime' / 'onnxruntime-int8' for speed")
        if device.type != 'cpu' and self.backend in CPU_ONLY_BACKENDS:
            raise ValueError(f"backend {self.backend!r} runs on the CPU only, the tracker device is {device}; "
                             "on a GPU use backend 'eager' or 'compile' with precision 'fp16'/'bf16'")


class NetworkRunner:
    """Eager PyTorch (optionally under autocast): the reference runner the others are compared with."""

    def __init__(self, network: CKDNet, device: torch.device, precision: str = 'fp32'):
        self.network = network
        self.device = device
        self.precision = precision
        self._templates: list[torch.Tensor] | None = None
        self._mask: torch.Tensor | None = None

    def _autocast(self):
        if self.precision == 'fp32':
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
            raise RuntimeError('set_templates() must be called before running the network')
        with self._autocast():
            out = self._forward(self._templates, list(searches), peak_weight)
        return out['score_map'].float(), out['size_map'].float(), out['offset_map'].float()


class CompiledRunner(NetworkRunner):
    """``torch.compile`` of the network's forward (compiled on the first frame, fixed shapes)."""

    def __init__(self, network: CKDNet, device: torch.device, precision: str = 'fp32'):
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
        warnings.simplefilter('ignore', DeprecationWarning)
        warnings.filterwarnings('ignore', message='.*quantize_per_tensor.*')
        # per-output-channel weight scales: same speed, ~10-30 % smaller map errors than one scale per tensor
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(network).cpu().eval(), {nn.Linear: qconfig},
                                                      dtype=torch.qint8)


class _MapsModule(nn.Module):
    """The network as a function of four crops with a fixed CE template mask -> three maps (export)."""

    def __init__(self, network: CKDNet):
        super().__init__()
        self.network = network
        mask = network.template_mask(1, 'cpu')
        self.has_mask = mask is not None
        self.register_buffer('mask', mask if mask is not None else torch.zeros(0, dtype=torch.bool))

    def forward(self, z_rgb, z_tir, x_rgb, x_tir):
        out = self.network([z_rgb, z_tir], [x_rgb, x_tir], ce_template_mask=self.mask if self.has_mask else None)
        return out['score_map'], out['size_map'], out['offset_map']


ONNX_INPUTS = ('z_rgb', 'z_tir', 'x_rgb', 'x_tir')
ONNX_OUTPUTS = ('score_map', 'size_map', 'offset_map')


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
        warnings.simplefilter('ignore')
        torch.onnx.export(module, example, buffer, input_names=list(ONNX_INPUTS), output_names=list(ONNX_OUTPUTS),
                          opset_version=ONNX_OPSET, dynamo=False, do_constant_folding=True)
    data = buffer.getvalue()
    if path is not None:
        with open(path, 'wb') as handle:
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
            return 'pre-processing' not in record.getMessage()

    advice = _NoPreprocessAdvice()
    logging.getLogger().addFilter(advice)
    try:
        with tempfile.TemporaryDirectory(prefix='ckd_onnx_int8_') as folder:
            quantized = Path(folder) / 'int8.onnx'
            quantize_dynamic(onnx.load_from_string(model), quantized, per_channel=per_channel,
                             weight_type=QuantType.QInt8, op_types_to_quantize=['MatMul', 'Gemm'])
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
            backend = 'onnxruntime-int8' if int8 else 'onnxruntime'
            raise RuntimeError(f'backend {backend!r} needs the onnxruntime package '
                               '(pip install onnxruntime)') from error
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        model = export_onnx(network, template_size, search_size)
        if int8:
            model = quantize_onnx_int8(model)
        self.session = ort.InferenceSession(model, options, providers=['CPUExecutionProvider'])
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
            raise RuntimeError('set_templates() must be called before running the network')
        feeds = dict(zip(ONNX_INPUTS, self._templates + [self._array(s) for s in searches]))
        score, size, offset = self.session.run(list(ONNX_OUTPUTS), feeds)
        return torch.from_numpy(score), torch.from_numpy(size), torch.from_numpy(offset)


def make_runner(network: CKDNet, device: torch.device, acceleration: Acceleration | None,
                template_size: int, search_size: int):
    """The runner of ``acceleration`` (None = fp32 eager) for ``network`` on ``device``."""
    acceleration = acceleration or Acceleration()
    acceleration.check_device(device)
    if acceleration.backend == 'eager':
        return NetworkRunner(network, device, acceleration.precision)
    if acceleration.backend == 'compile':
        return CompiledRunner(network, device, acceleration.precision)
    if acceleration.backend == 'int8':
        return NetworkRunner(quantize_linear_int8(network), device)
    return OnnxRuntimeRunner(network, template_size, search_size, int8=acceleration.backend == 'onnxruntime-int8')


# ------------------------------------------------------------------------------------------ precision 'auto'
# the accuracy budget of an automatic choice: success (SR, AUC of the success plot) lost against fp32
# eager, in points, on the shipped ckd_tiny weights (the bound: < 1 point)
SR_BOUND_POINTS = 1.0
# an option replaces exact fp32 eager only when it takes at most this share of fp32 eager's time
MAX_SPEED_RATIO = 0.95
_NO_GPU = 'not measured (no GPU was available)'


@dataclass(frozen=True)
class MeasuredOption:
    """One row of :data:`MEASURED_OPTIONS`: an option on a class of hardware, its speed and its accuracy.

    ``speed_ratio``: time per frame / fp32 eager's on the same machine, frames interleaved
    (``benchmarks/bench_acceleration.py``); None = not measured, ``speed`` then says why it is
    expected to be faster.  ``sr_change``: success (SR) change against fp32 eager in points, ckd_tiny
    with its shipped weights, closed loop, scored as ``make demo`` scores; None = not measured.
    ``sr_change_ci``: the half-width of its 95 % interval (paired over sequences); ``open_loop_sr_change``
    / ``open_loop_ci``: the same with every frame started from fp32's state (the number format's own
    effect, without closed-loop luck; ``bench_acceleration.py`` prints all four).

    Within the bound: with the open-loop figures, the per-frame effect is above -bound with 95 %
    confidence (change - ci > -bound) and the closed-loop change is not significantly below -bound
    (change + ci > -bound): on a few dozen sequences a closed-loop change alone spans +-5 points of luck
    and can neither prove nor refute a 1-point bound.  Rows without open-loop figures (exact options,
    earlier measurements) need a closed-loop change above -bound."""
    device: str          # "cpu" or "cuda"
    hardware: str        # cpu_info.cpu_class() or cuda_class()
    precision: str
    backend: str
    speed_ratio: float | None
    speed: str
    sr_change: float | None
    accuracy: str
    sr_change_ci: float | None = None
    open_loop_sr_change: float | None = None
    open_loop_ci: float | None = None

    @property
    def has_intervals(self) -> bool:
        """Measured with intervals and open loop (``bench_acceleration.py`` since 2026-12-06)."""
        return None not in (self.sr_change_ci, self.open_loop_sr_change, self.open_loop_ci)

    @property
    def accuracy_within_bound(self) -> bool:
        if self.sr_change is None:
            return False
        if not self.has_intervals:
            return self.sr_change > -SR_BOUND_POINTS
        return (self.open_loop_sr_change - self.open_loop_ci > -SR_BOUND_POINTS
                and self.sr_change + self.sr_change_ci > -SR_BOUND_POINTS)

    def accuracy_summary(self) -> str:
        """``-2.1 +- 6.5 SR points closed loop, -0.01 +- 0.06 open loop`` (or the closed-loop change alone)."""
        if self.sr_change is None:
            return 'accuracy effect not measured'
        if not self.has_intervals:
            return f'{self.sr_change:+.1f} SR points'
        return (f'{self.sr_change:+.1f} +- {self.sr_change_ci:.1f} SR points closed loop, '
                f'{self.open_loop_sr_change:+.2f} +- {self.open_loop_ci:.2f} open loop')

    @property
    def faster(self) -> bool:
        return self.speed_ratio is None or self.speed_ratio <= MAX_SPEED_RATIO

    @property
    def option(self) -> str:
        return f'{self.precision}/{self.backend}'

    def rejection(self) -> str | None:
        """Why 'auto' does not take this row (None: it may)."""
        if not self.faster:
            return f'{self.option} x{self.speed_ratio:.2f}, not faster'
        if self.sr_change is None:
            return f'{self.option} accuracy effect not measured'
        if not self.accuracy_within_bound:
            return f'{self.option} {self.accuracy_summary()}, outside the {SR_BOUND_POINTS:g}-point bound'
        return None


_TINY_24 = ('ckd_tiny shipped weights, the 24 demo-style sequences of `bench_acceleration.py --sequences demo '
            '--count 24` (7176 frames), on the Zen 4')
_ZEN4 = 'AMD EPYC Zen 4 (avx512_bf16, avx512_vnni), 1 thread'
_ZEN3 = 'AMD EPYC Zen 3 (AVX2), 1 thread'
_ZEN4_TINY = f'ckd_tiny, 24 demo-style sequences, {_ZEN4}'
_XEON_AMX = 'full-size model (MCE), Xeon with AMX-BF16/AMX-INT8, 1 thread'


@dataclass(frozen=True)
class AccuracyEffect:
    """An option's measured accuracy effect on ckd_tiny (see :class:`MeasuredOption`)."""
    sr_change: float
    sr_change_ci: float | None = None
    open_loop_sr_change: float | None = None
    open_loop_ci: float | None = None


# Figures of _TINY_24 (2026-12-06, stage-3 weights; fp32 eager SR 70.1): closed-loop change +- 95 %
# interval, open-loop change +- interval. The closed-loop changes are luck either way (their intervals
# span zero); the open-loop ones show each format moving SR by hundredths of a point. On 12 held-out
# sequences at 640x512 (--first-seed 900000 --size 640x512): onnxruntime-int8 +2.4 +- 3.9 / -0.03 +- 0.06,
# bf16 +1.3 +- 3.8 / -0.02 +- 0.06. (Stage-2 weights: -2.1 +- 6.5 / -0.01 +- 0.06 and +2.6 +- 5.3 /
# -0.01 +- 0.06.)
_ORT_INT8 = AccuracyEffect(+1.9, 6.3, -0.02, 0.05)    # ONNX Runtime dynamic int8 MatMuls
_BF16 = AccuracyEffect(+2.1, 6.7, +0.05, 0.06)        # bf16 autocast (native bf16 products on the Zen 4)
_INT8 = AccuracyEffect(+2.1, 5.7, -0.03, 0.09)        # torch dynamic int8 Linear (per-channel weights)
_EXACT = AccuracyEffect(0.0)                          # maps within 1e-6 of fp32 eager, same boxes
# fp16 autocast (the CUDA candidate), emulated on the Zen 4 CPU (fp16 inputs, fp32 accumulation, as on
# tensor cores; maps within 2.5e-3 of fp32) with the earlier (stage-1) weights: 50.5 against 53.3 on 12
# demo-style sequences cut to 100 frames (1200 frames), closed loop only: not re-measured, so 'auto'
# does not take it
_FP16 = AccuracyEffect(-2.8)
_FP16_ACCURACY = ('fp16 autocast emulated on the CPU (fp16 inputs, fp32 accumulation), earlier ckd_tiny weights, '
                  '12 demo-style sequences x 100 frames')


def _row(device: str, hardware: str, option: str, speed_ratio: float | None, speed: str, effect: AccuracyEffect,
         accuracy: str) -> 'MeasuredOption':
    precision, backend = option.split('/')
    return MeasuredOption(device, hardware, precision, backend, speed_ratio, speed, effect.sr_change, accuracy,
                          effect.sr_change_ci, effect.open_loop_sr_change, effect.open_loop_ci)


# What 'auto' may choose from: only rows whose accuracy effect is measured within SR_BOUND_POINTS and
# that are faster (speed_ratio <= MAX_SPEED_RATIO); a hardware class without such a row runs the
# exact fp32 eager path.  Add a row with measured figures (and their command) to extend it.  The
# accuracy of a number format carries over between processors that compute it the same way (bf16 or
# fp16 products with fp32 accumulation: AVX-512 BF16, AMX, CUDA tensor cores; int8 products with int32
# accumulation: VNNI, AMX-INT8), so accuracy rows name where they were measured; speed does not carry
# over, so it is per hardware class.  Figures: benchmarks/bench_acceleration.py (frame-interleaved
# ratios to fp32 eager, same process).  AVX2 int8 is not carried over: without VNNI the u8 x s8 products
# can saturate in 16 bits, so its earlier closed-loop figure stands.
MEASURED_OPTIONS: tuple[MeasuredOption, ...] = (
    # Intel Xeon with AMX (Sapphire Rapids and later): the team's speed figures, accuracy from the Zen 4
    _row('cpu', 'amx', 'bf16/compile', 0.40, _XEON_AMX, _BF16, 'bf16 autocast (measured eager), ' + _TINY_24),
    _row('cpu', 'amx', 'bf16/eager', 0.45, _XEON_AMX, _BF16, _TINY_24),
    _row('cpu', 'amx', 'fp32/int8', 0.46, _XEON_AMX, _INT8, _TINY_24),
    # AVX-512 BF16 + VNNI without AMX (AMD EPYC Zen 4, family 25 model 17, 2 vCPUs, KVM); the full-size model
    # on it (recipe weights, 8 frames): onnxruntime-int8 x0.32, int8 x0.33, bf16 x0.56 of the official way
    _row('cpu', 'avx512_bf16', 'bf16/eager', 0.96, _ZEN4_TINY, _BF16, _TINY_24),
    _row('cpu', 'avx512_bf16', 'fp32/int8', 0.84, _ZEN4_TINY, _INT8, _TINY_24),
    _row('cpu', 'avx512_bf16', 'fp32/onnxruntime', 0.70, _ZEN4_TINY, _EXACT,
         'maps within 1.4e-6 of fp32 eager, same boxes and SR on ' + _TINY_24),
    _row('cpu', 'avx512_bf16', 'fp32/onnxruntime-int8', 0.52, _ZEN4_TINY, _ORT_INT8, _TINY_24),
    # AVX2 only (AMD Zen 2/3, older Xeons): README Performance, ckd_tiny on the demo sequences, earlier weights
    _row('cpu', 'avx2', 'bf16/eager', 7.7, f'ckd_tiny, 3 demo sequences, {_ZEN3} (bf16 emulated)', _BF16,
         'measured on the Zen 4, ' + _TINY_24),
    _row('cpu', 'avx2', 'fp32/compile', 1.00, f'ckd_tiny, 3 demo sequences, {_ZEN3}', _EXACT,
         'maps within 1e-6 of fp32 eager'),
    _row('cpu', 'avx2', 'fp32/int8', 0.93, f'ckd_tiny, 3 demo sequences, {_ZEN3}', AccuracyEffect(-9.2),
         'earlier weights, 12 demo-style sequences, closed loop, on the Zen 3'),
    _row('cpu', 'avx2', 'fp32/onnxruntime', 0.66, f'ckd_tiny, 3 demo sequences, {_ZEN3}', _EXACT,
         'maps within 1e-6 of fp32 eager, same boxes'),
    _row('cpu', 'avx2', 'fp32/onnxruntime-int8', 0.55, f'ckd_tiny, 3 demo sequences, {_ZEN3}', AccuracyEffect(-2.3),
         'earlier weights, 12 demo-style sequences, closed loop, on the Zen 3'),
    # CUDA: autocast on tensor cores is the standard fast path (its speed for these models is not
    # measured: no GPU was available); accuracy from the same number format computed on the CPU
    _row('cuda', 'sm80+', 'bf16/eager', None, 'bf16 tensor cores (Ampere+); ' + _NO_GPU, _BF16,
         'bf16 autocast measured on the CPU (Zen 4, native bf16 products), ' + _TINY_24),
    _row('cuda', 'sm80+', 'fp16/eager', None, 'fp16 tensor cores; ' + _NO_GPU, _FP16, _FP16_ACCURACY),
    _row('cuda', 'sm70+', 'fp16/eager', None, 'fp16 tensor cores (Volta, Turing); ' + _NO_GPU, _FP16, _FP16_ACCURACY),
)


def cuda_class(capability: tuple[int, int] | None) -> str:
    """``sm80+`` (Ampere and later: bf16 and fp16 tensor cores), ``sm70+`` (Volta, Turing: fp16 tensor
    cores only), ``older``; ``unknown`` without a capability."""
    if capability is None:
        return 'unknown'
    major = int(capability[0])
    return 'sm80+' if major >= 8 else 'sm70+' if major >= 7 else 'older'


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``precision: auto`` (or ``backend: auto``) chose, on what hardware, and why."""
    precision: str
    backend: str
    reason: str
    hardware: str = ''     # e.g. "cpu:avx512_bf16" or "cuda:sm80+"
    automatic: bool = True

    @property
    def acceleration(self) -> Acceleration:
        return Acceleration(self.precision, self.backend)

    def log_line(self) -> str:
        """``precision auto: chose bf16/eager because ...`` (the node logs it at configure)."""
        if not self.automatic:
            return f'precision {self.precision}, backend {self.backend} ({self.reason})'
        return f'precision auto: chose {self.precision}/{self.backend} because {self.reason}'


def choose_precision(device_type: str, cpu_flags: Iterable[str] = (), cuda_capability: tuple[int, int] | None = None,
                     precision: str | None = None, backend: str | None = 'eager',
                     table: Sequence[MeasuredOption] = MEASURED_OPTIONS, unavailable_backends: Iterable[str] = (),
                     device_name: str = '') -> PrecisionChoice:
    """Pure: the fastest option of ``table`` for this hardware whose accuracy effect is measured within
    :data:`SR_BOUND_POINTS`, else the exact path.

    ``device_type``: ``"cpu"`` (class from ``cpu_flags``: :func:`ckd_ros.core.cpu_info.cpu_class`),
    ``"cuda"`` (class from ``cuda_capability``, ``torch.cuda.get_device_capability``: :func:`cuda_class`)
    or another torch device type (no rows: fp32).  ``precision`` / ``backend``: fixed by the caller
    (None = chosen too; the default chooses the precision for the eager backend).
    ``unavailable_backends``: left out (onnxruntime not installed, no C compiler for compile).
    """
    device_type = str(device_type).split(':')[0]
    if device_type == 'cpu':
        hardware = cpu_class(cpu_flags)
        what = f"CPU{' ' + device_name if device_name else ''} of class '{hardware}'"
    elif device_type == 'cuda':
        hardware = cuda_class(cuda_capability)
        capability = 'unknown capability' if cuda_capability is None else \
            f'compute capability {cuda_capability[0]}.{cuda_capability[1]}'
        what = f"CUDA GPU{' ' + device_name if device_name else ''} ({capability}, class '{hardware}')"
    else:
        hardware = device_type
        what = f"device type '{device_type}'"
    fallback_precision = precision or 'fp32'
    fallback_backend = backend or 'eager'
    unavailable = set(unavailable_backends)
    rows = [row for row in table if row.device == device_type and row.hardware == hardware
            and (precision is None or row.precision == precision) and (backend is None or row.backend == backend)
            and (row.precision, row.backend) != (fallback_precision, fallback_backend)]
    rejected = [f'{row.option} unavailable here' for row in rows if row.backend in unavailable]
    rows = [row for row in rows if row.backend not in unavailable]
    rejected += [row.rejection() for row in rows if row.rejection()]
    eligible = [row for row in rows if row.rejection() is None]
    tag = f'{device_type}:{hardware}'
    if eligible:
        # measured ratios first, fastest first; unmeasured (CUDA) rows in table order after them
        best = min(eligible, key=lambda row: (row.speed_ratio is None, row.speed_ratio or 0.0))
        speed = f'x{best.speed_ratio:.2f} of fp32 eager ({best.speed})' if best.speed_ratio is not None else best.speed
        reason = (f'{what}: fastest option documented within {SR_BOUND_POINTS:g} SR point: {speed}; '
                  f'accuracy {best.accuracy_summary()} ({best.accuracy})')
        others = rejected + [f'{row.option} slower' for row in eligible if row is not best]
        if others:
            reason += '; not chosen: ' + '; '.join(others)
        return PrecisionChoice(best.precision, best.backend, reason, tag)
    if rows or rejected:
        reason = (f"{what}: no option measured faster and within {SR_BOUND_POINTS:g} SR point "
                  f"({'; '.join(rejected)}): {fallback_precision}/{fallback_backend}")
    else:
        reason = (f'{what}: no measured option for this hardware in acceleration.MEASURED_OPTIONS: '
                  f'{fallback_precision}/{fallback_backend}')
    if (fallback_precision, fallback_backend) == ('fp32', 'eager'):
        reason += ' (exact, the official numbers)'
    return PrecisionChoice(fallback_precision, fallback_backend, reason, tag)


def _compiler_available() -> bool:
    import shutil
    return any(shutil.which(name) for name in ('g++', 'c++', 'clang++'))


def auto_precision(device: torch.device | str, precision: str = AUTO, backend: str = 'eager') -> PrecisionChoice:
    """:func:`choose_precision` for this machine: the CPU's flags (``/proc/cpuinfo``, else torch's CPU
    capability) or the GPU's compute capability.  ``precision`` / ``backend``: ``"auto"`` = chosen,
    anything else = fixed (then only the other one is chosen)."""
    device = torch.device(device)
    flags, capability, name = (), None, ''
    if device.type == 'cpu':
        info = read_cpu_info()
        flags, name = info.flags, info.model
    elif device.type == 'cuda':
        capability = tuple(torch.cuda.get_device_capability(device))
        name = torch.cuda.get_device_name(device)
    unavailable = []
    if importlib.util.find_spec('onnxruntime') is None:
        unavailable += ['onnxruntime', 'onnxruntime-int8']
    if device.type == 'cpu' and not _compiler_available():
        unavailable.append('compile')
    return choose_precision(device.type, flags, capability, precision=None if precision == AUTO else precision,
                            backend=None if backend == AUTO else backend, unavailable_backends=unavailable,
                            device_name=name)


def check_request(precision: str, backend: str) -> None:
    """``precision`` / ``backend`` as :func:`ckd_ros.core.api.init_tracker` and the node take them
    (:data:`~ckd_ros.core.options.PRECISION_CHOICES`, :data:`~ckd_ros.core.options.BACKEND_CHOICES`), and
    without ``"auto"`` a combination that exists (e.g. not bf16 with a CPU-only backend). ValueError."""
    if precision != AUTO and precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS} or {AUTO!r}, got {precision!r}')
    if backend != AUTO and backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS} or {AUTO!r}, got {backend!r}')
    if AUTO not in (precision, backend):
        Acceleration(precision=precision, backend=backend)


def choose_for_device(precision: str, backend: str, device: torch.device) -> PrecisionChoice:
    """A request that passed :func:`check_request`, for a resolved ``device``: ``"auto"`` chosen
    (:func:`auto_precision`), the result checked against the device (:meth:`Acceleration.check_device`)."""
    if AUTO in (precision, backend):
        choice = auto_precision(device, precision, backend)
    else:
        choice = PrecisionChoice(precision, backend, 'as requested', device.type, automatic=False)
    choice.acceleration.check_device(device)
    return choice
