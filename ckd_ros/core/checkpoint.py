"""CKD checkpoints: restricted loading, key mapping onto the inference model, writing, and import of
ViT / OSTrack / DropTrack weights for training initialisation (``docs/spec/CKD.md`` sec. 4.6 and 6).

Official files (``OSTrack_CKD_ep0030.pth.tar``) are ``torch.save`` of a dict with ``net`` (the
training-mode state dict: students, fused head, teachers, teacher heads), ``epoch``,
``optimizer``, ``stats`` (``lib.train.admin.stats.AverageMeter`` / ``StatValue`` objects),
``settings`` (``lib.train.admin.settings.Settings`` with ``lib.train.admin.local.EnvironmentSettings``)
and a few plain entries.  They are read with ``torch.load(weights_only=True)``, whose unpickler only
rebuilds tensors and plain containers; the ``lib.train.admin.*`` names (and ``argparse.Namespace`` of
MAE files) are mapped to inert stand-in classes that store attributes and run no code.  Anything
else a pickle names (``os.system``, ``subprocess.Popen`` ...) is refused with :class:`CheckpointError`
before it can run.
"""
from __future__ import annotations

import math
import os
import pickle
import pickletools
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ckd_ros.core.atomic import atomic_write

INFERENCE_PREFIXES = ('rgb_branch.', 'tir_branch.', 'box_head.')
# training-only parts of a CKD checkpoint's ``net`` that the tracker ignores
TRAINING_ONLY_PREFIXES = ('teacher_rgb.', 'teacher_tir.', 'box_head_v.', 'box_head_i.')
# never read at inference: taken from the file when present, zero-filled when absent
OPTIONAL_SUFFIXES = ('.cls_token', '.pos_embed', 'num_batches_tracked')


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unsafe pickle, truncated file, wrong keys, shapes or dtypes."""


class PickledTrainingObject:
    """Inert stand-in for a training-time class pickled in official checkpoints: keeps the pickled
    attributes (``vars(obj)``), runs no code."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):  # (dict, slots)
            state = {**(state[0] or {}), **state[1]}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__['state'] = state

    def __repr__(self) -> str:
        return f'<stand-in {self.official_name}: {sorted(self.__dict__)}>'

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, PickledTrainingObject) else v for k, v in self.__dict__.items()}


def _stand_in(official_name: str) -> type:
    cls = type(official_name.rsplit('.', 1)[1], (PickledTrainingObject,), {'official_name': official_name})
    cls.__module__ = __name__
    return cls


# Limits on the zip records of a checkpoint (checked before anything is decompressed).  torch writes its
# records stored (uncompressed): their sizes are bytes the file really holds.  A compressed (deflated)
# record, which torch.load also reads, can declare and inflate to ~1000x its size, and torch.load
# allocates and inflates it in one piece: a 3 MB file reached 3.4 GB of memory.  Records that overlap
# (several directory entries on the same data) multiply that again.
MAX_INFLATE_RATIO = 100          # declared / compressed size of the compressed records, all together
MAX_INFLATED_BYTES = 4 << 30     # absolute cap on what the compressed records may inflate to
_RATIO_FREE_BYTES = 1 << 20      # below this much inflated data the ratio is not applied (tiny records)
_ZIP_MAGIC = b'PK\x03\x04'     # what torch.load looks at to read a file as a zip checkpoint
# How many pickles of a legacy (pre-1.6, non-zip) file to scan for globals: magic number, protocol,
# system info, the object, the storage keys; raw tensor bytes follow.
_LEGACY_PICKLES = 5
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


# Official pickled names -> stand-in classes (the only non-tensor classes a checkpoint may name).
STAND_IN_CLASSES: dict[str, type] = {name: _stand_in(name) for name in (
    'lib.train.admin.settings.Settings',
    'lib.train.admin.stats.AverageMeter',
    'lib.train.admin.stats.StatValue',
    'lib.train.admin.local.EnvironmentSettings',
)}
STAND_IN_CLASSES['argparse.Namespace'] = _stand_in('argparse.Namespace')  # MAE pretraining files store args


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load`` of ``path`` on the CPU with the restricted unpickler described above."""
    if not str(path).strip():
        raise FileNotFoundError('checkpoint path is empty: name a checkpoint file')
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist' + (' (it is a folder)' if path.is_dir() else ''))
    _verify_zip(path)
    allowed = [(cls, name) for name, cls in STAND_IN_CLASSES.items()]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unsafe_reason(str(exc))
        if reason is None:
            # torch's restricted unpickler stops at the first opcode it does not read (the FRAME of
            # protocol 4/5 pickles) before it sees any global, and calls that a failed load: look at the
            # globals the pickle names ourselves (pickletools only parses, it runs nothing).
            unsafe = _unsafe_globals(path)
            if unsafe:
                reason = f"it names {', '.join(unsafe[:5])}{' ...' if len(unsafe) > 5 else ''}"
            elif 'Unsupported operand' in str(exc) and (protocol := _pickle_protocol(path)) >= 4:
                raise CheckpointError(
                    f"refusing to load {path}: its pickle uses protocol {protocol} opcodes that the restricted "
                    f"loader does not read ({_torch_detail(exc)}); no unsafe global was found in it: ask for a file "
                    "written with torch.save's default pickle protocol (2)") from None
            else:
                raise _corrupt(path, exc) from None
        raise CheckpointError(
            f"refusing to load {path}: unsafe, its pickle names something other than tensors, plain containers "
            f"and the known training classes ({', '.join(STAND_IN_CLASSES)}), and loading it could run arbitrary "
            f"code ({reason})") from None
    except Exception as exc:  # zip/EOF/legacy-format errors of torch.load on damaged or foreign files
        raise _corrupt(path, exc) from None


def _verify_zip(path: Path) -> None:
    """Check a zip checkpoint before torch.load reads it: record sizes (:func:`_check_zip_sizes`), then
    CRCs.

    torch.load does not check the CRC-32 of the records of a zip checkpoint: a flipped bit in a tensor
    loads as a silently different weight. Read every record once through ``zipfile``, which checks its
    CRC (about 1 s per GB; torch.load then reads the file from the page cache). Files written with
    torch's CRC computation switched off (every CRC zero) and legacy non-zip files carry no CRCs."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        try:
            with open(path, 'rb') as handle:
                looks_zip = handle.read(4) == _ZIP_MAGIC
        except OSError:
            return   # unreadable: torch.load reports it
        if looks_zip:
            # torch.load would read it as a zip with its own reader, past the size checks below
            raise _corrupt(path, exc) from None
        return   # not a zip (legacy format): torch.load reads or reports it
    with archive:
        _check_zip_sizes(path, archive)
        records = [info for info in archive.infolist() if info.file_size]
        if records and all(info.CRC == 0 for info in records):
            return
        for info in records:
            try:
                with archive.open(info) as handle:
                    while handle.read(1 << 24):
                        pass
            except zipfile.BadZipFile as exc:
                if 'CRC' not in str(exc):
                    return   # damaged structure: torch.load reports it
                raise CheckpointError(f'{path} is corrupt: its record {info.filename} ({info.file_size} bytes) fails '
                                      'its CRC-32 check (a damaged copy or download: copy it again)') from None
            except (OSError, EOFError, ValueError, NotImplementedError):
                return


def _check_zip_sizes(path: Path, archive: zipfile.ZipFile) -> None:
    """Refuse, from the sizes the zip directory declares and before anything is decompressed, a
    checkpoint whose records would inflate far beyond the file (see ``MAX_INFLATE_RATIO``)."""
    file_size = path.stat().st_size
    infos = archive.infolist()

    def refuse(why: str) -> CheckpointError:
        return CheckpointError(f'refusing to load {path} ({file_size} bytes): {why}; a damaged file or a '
                               'decompression bomb, nothing was decompressed')

    stored_total = compressed_total = inflated_total = 0
    for info in infos:
        if info.header_offset + info.compress_size > file_size:
            raise refuse(f'its zip record {info.filename} claims {info.compress_size} bytes at offset '
                         f'{info.header_offset}, past the end of the file')
        if info.compress_type == zipfile.ZIP_STORED:
            if info.file_size != info.compress_size:
                raise refuse(f'its stored (uncompressed) zip record {info.filename} declares {info.file_size} '
                             f'bytes but holds {info.compress_size}')
            stored_total += info.compress_size
        else:
            compressed_total += info.compress_size
            inflated_total += info.file_size
    if stored_total + compressed_total > file_size:
        raise refuse(f'its {len(infos)} zip records declare {stored_total + compressed_total} bytes of data, more '
                     'than the file holds (records overlap)')
    if inflated_total > MAX_INFLATED_BYTES:
        raise refuse(f'its compressed zip records declare {inflated_total} bytes uncompressed, over the cap of '
                     f'{MAX_INFLATED_BYTES} bytes')
    if inflated_total > _RATIO_FREE_BYTES and inflated_total > MAX_INFLATE_RATIO * compressed_total:
        raise refuse(f'its compressed zip records declare {inflated_total} bytes uncompressed from '
                     f'{compressed_total} bytes (ratio {inflated_total / max(compressed_total, 1):.0f}, '
                     f'limit {MAX_INFLATE_RATIO}; torch itself writes uncompressed records)')


# Lines of torch's weights-only unpickler errors that mean "this pickle wants to run/instantiate code".
_UNSAFE_MARKERS = ('Unsupported global', 'unrecognized function', 'Can only', 'blocked', 'was not an allowed global')
# Parts of torch.load's error text that are advice, not the problem: torch says that weights_only=False
# "will likely succeed" (it would run the pickle's code) or how to allow-list a global.  Never repeated.
_ADVICE_MARKERS = ('weights_only', 'Weights only load failed', 'Please file an issue', 'Check the documentation',
                   'add_safe_globals', 'safe_globals(')


def _unsafe_reason(message: str) -> str | None:
    for line in message.splitlines():
        if any(marker in line for marker in _UNSAFE_MARKERS):
            return line.split(' Please use', 1)[0].strip()
    return None


def _torch_detail(exc: BaseException) -> str:
    """The first line of torch.load's error that states the problem, without torch's advice."""
    for line in str(exc).splitlines():
        line = line.strip().removeprefix('WeightsUnpickler error:').strip()
        if line and not any(marker in line for marker in _ADVICE_MARKERS):
            return line
    return ''


def _corrupt(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(f'{path} ({path.stat().st_size} bytes) is truncated or not a torch checkpoint: '
                           f'{type(exc).__name__}: {_torch_detail(exc)}')


# ---- what a pickle names, without unpickling it ------------------------------------------------------

_STRING_OPS = {'SHORT_BINUNICODE', 'BINUNICODE', 'BINUNICODE8', 'UNICODE', 'STRING', 'BINSTRING', 'SHORT_BINSTRING'}
_NO_PUSH_OPS = {'PROTO', 'FRAME', 'STOP', 'MEMOIZE', 'PUT', 'BINPUT', 'LONG_BINPUT', 'POP', 'POP_MARK',
                'SETITEM', 'SETITEMS', 'APPEND', 'APPENDS', 'ADDITEMS', 'BUILD', 'MARK'}


def _scan_globals(stream, found: list[str]) -> None:
    """Append to ``found`` the ``module.name`` of every global one pickle in ``stream`` names
    (``GLOBAL``/``INST``, and ``STACK_GLOBAL`` with its two strings followed through the memo).  Reads one
    pickle (up to its STOP); raises ValueError on data that is not a pickle."""
    pushed: list = []          # rough model of the stack: strings where known, None otherwise
    memo: dict = {}
    for opcode, arg, _ in pickletools.genops(stream):
        name = opcode.name
        if name in ('GLOBAL', 'INST'):
            found.append('.'.join(str(arg).split(' ', 1)))
            pushed.append(None)
        elif name == 'STACK_GLOBAL':
            module, attr = (pushed[-2], pushed[-1]) if len(pushed) >= 2 else (None, None)
            found.append(f'{module}.{attr}' if isinstance(module, str) and isinstance(attr, str)
                         else '<a global whose name is computed>')
            pushed.append(None)
        elif name in _STRING_OPS:
            pushed.append(arg if isinstance(arg, str) else arg.decode('latin-1') if isinstance(arg, bytes) else None)
        elif name == 'MEMOIZE':
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ('PUT', 'BINPUT', 'LONG_BINPUT'):
            memo[arg] = pushed[-1] if pushed else None
        elif name in ('GET', 'BINGET', 'LONG_BINGET'):
            pushed.append(memo.get(arg))
        elif name not in _NO_PUSH_OPS:
            pushed.append(None)
        del pushed[:-64]        # STACK_GLOBAL reads the two latest entries; keep the model small


def _allowed_globals() -> set[str]:
    """Names the restricted loader accepts: torch's weights-only allow-list, the registered safe globals
    and the stand-in classes."""
    names = set(STAND_IN_CLASSES)
    try:
        from torch import _weights_only_unpickler
        names.update(_weights_only_unpickler._get_allowed_globals())
    except Exception:  # a private helper: without it every global is reported
        pass
    for entry in torch.serialization.get_safe_globals():
        obj, name = entry if isinstance(entry, tuple) else (entry, None)
        names.add(name or f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}")
    return names


def _zip_pickle_name(archive: zipfile.ZipFile) -> str | None:
    """The record torch.load unpickles in a zip checkpoint (``<folder>/data.pkl``)."""
    return next((n for n in archive.namelist() if n == 'data.pkl' or n.endswith('/data.pkl')), None)


def _pickled_globals(path: Path) -> list[str]:
    """The globals named by the pickle(s) of a checkpoint: ``data.pkl`` of a zip (its sizes were checked
    before), else the first pickle of the file and, when that is torch's legacy magic number, the legacy
    layout's following pickles (protocol, system info, object, storage keys)."""
    found: list[str] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = _zip_pickle_name(archive)
                if name is not None:
                    with archive.open(name) as handle:
                        _scan_globals(handle, found)
            return found
        with open(path, 'rb') as handle:
            _scan_globals(handle, found)
            if found:
                return found          # a raw pickle (not torch's legacy layout) naming globals
            handle.seek(0)
            magic = [arg for _, arg, _ in pickletools.genops(handle) if isinstance(arg, int) and arg > 1 << 64]
            if magic == [_LEGACY_MAGIC]:
                for _ in range(_LEGACY_PICKLES - 1):
                    _scan_globals(handle, found)
    except Exception:  # damaged data ends the scan; what was found so far stands
        pass
    return found


def _unsafe_globals(path: Path) -> list[str]:
    allowed = _allowed_globals()
    unsafe = []
    for name in _pickled_globals(path):
        if name not in allowed and name not in unsafe:
            unsafe.append(name)
    return unsafe


def _pickle_protocol(path: Path) -> int:
    """The protocol a checkpoint's (first) pickle declares (0 when none can be read)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = _zip_pickle_name(archive)
                if name is None:
                    return 0
                with archive.open(name) as handle:
                    head = handle.read(2)
        else:
            with open(path, 'rb') as handle:
                head = handle.read(2)
    except Exception:
        return 0
    return head[1] if len(head) == 2 and head[0] == pickle.PROTO[0] else 0


def _as_state_dict(obj: Any, source: str) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping) and 'net' in obj:
        obj = obj['net']
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source}: expected a checkpoint dict with 'net' or a state dict, "
                              f'got {type(obj).__name__}')
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f'{source}: not a state dict (non-tensor entries: {bad[:8]})')
    return obj


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """``state`` without the ``module.`` key prefix of DDP wrappers (the official trainer unwraps before
    saving, but other tools may not)."""
    return OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v) for k, v in state.items())


def _is_optional(key: str) -> bool:
    return key.endswith(OPTIONAL_SUFFIXES)


def _all_finite(tensor: torch.Tensor) -> bool:
    """No NaN/inf in a floating tensor of any dtype: the float8 variants (and any other small float) are
    checked in float32, which holds every one of their values, NaN and inf included."""
    if tensor.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        tensor = tensor.to(torch.float32)
    return bool(torch.isfinite(tensor).all())


def inference_state_dict(raw: Any, model: nn.Module, source: str = 'checkpoint') -> "OrderedDict[str, torch.Tensor]":
    """Map a checkpoint object (``{'net': ...}`` or a plain state dict) onto ``model``'s keys.

    Keeps ``rgb_branch.*``, ``tir_branch.*``, ``box_head.*`` (an optional ``module.`` prefix is
    stripped); ignores ``teacher_rgb/teacher_tir/box_head_v/box_head_i.*``.  ``cls_token``,
    ``pos_embed`` and ``num_batches_tracked`` (never read at inference) may be absent: they are then
    zero.  Raises :class:`CheckpointError` listing missing or unexpected keys, naming keys whose shape
    differs or whose dtype is not a float (integer for ``num_batches_tracked``) or that hold NaN/inf.
    Floating tensors of another precision (float64, float16, bfloat16, float8 ...) are converted to the
    model's dtype before the NaN/inf check (a value can overflow there).  For a shared-student
    model the ``rgb_branch.*`` and ``tir_branch.*`` entries must be equal.
    """
    state = strip_module_prefix(_as_state_dict(raw, source))
    expected = model.state_dict()
    kept = OrderedDict((k, v) for k, v in state.items() if not k.startswith(TRAINING_ONLY_PREFIXES))
    unexpected = [k for k in kept if k not in expected]
    missing = [k for k in expected if k not in kept and not _is_optional(k)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {missing[:12]}{' ...' if len(missing) > 12 else ''}")
        if unexpected:
            parts.append(f'unexpected {len(unexpected)} key(s): '
                         f"{unexpected[:12]}{' ...' if len(unexpected) > 12 else ''}")
        raise CheckpointError(f"{source} does not fit this model ({'; '.join(parts)})")
    out = OrderedDict()
    problems = []
    for key, target in expected.items():
        value = kept.get(key)
        if value is None:
            out[key] = torch.zeros_like(target, device='cpu')
            continue
        if tuple(value.shape) != tuple(target.shape):
            problems.append(f'{key}: shape {tuple(value.shape)} in the file, model needs {tuple(target.shape)}')
            continue
        if target.is_floating_point():
            if not value.is_floating_point():
                problems.append(f'{key}: dtype {value.dtype} in the file, '
                                f'model needs a floating tensor ({target.dtype})')
                continue
            # Convert first, then check: float64 weights of 1e300 are finite in the file but inf in the
            # model's float32, and torch.isfinite is not implemented for the float8 types (and wrong for
            # float8_e8m0fnu, whose NaN it calls finite).
            source_dtype = value.dtype
            try:
                value = value.to(target.dtype)
            except (RuntimeError, NotImplementedError, TypeError) as exc:   # e.g. packed float4
                problems.append(f"{key}: dtype {source_dtype} in the file cannot be converted to the model's "
                                f"{target.dtype} ({type(exc).__name__})")
                continue
            if not _all_finite(value):
                problems.append(f'{key}: contains NaN or infinite values'
                                + (f" once converted from the file's {source_dtype} to the model's {target.dtype}"
                                   if source_dtype != target.dtype else ''))
                continue
        elif value.is_floating_point() or value.is_complex():
            problems.append(f'{key}: dtype {value.dtype} in the file, model needs {target.dtype}')
            continue
        out[key] = value.to(target.dtype)
    if problems:
        raise CheckpointError(f'{source}: {len(problems)} tensor(s) unusable: ' + '; '.join(problems[:8])
                              + (' ...' if len(problems) > 8 else ''))
    if getattr(model, 'shares_student', False):
        differ = [k for k in out if k.startswith('rgb_branch.') and not _is_optional(k)
                  and not torch.equal(out[k], out['tir_branch.' + k[len('rgb_branch.'):]])]
        if differ:
            raise CheckpointError(f"{source}: the config shares one student for RGB and TIR, but the file's "
                                  f"rgb_branch/tir_branch weights differ ({len(differ)} keys, e.g. {differ[0]}); "
                                  "use a two-student config for this file")
    return out


def load_model_weights(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any]) -> nn.Module:
    """Load a CKD checkpoint file (or an already loaded object) into ``model`` in place; returns it."""
    source = str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else 'state dict'
    raw = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    state = inference_state_dict(raw, model, source)
    model.load_state_dict(state, strict=True)
    return model


def _plain(obj: Any) -> Any:
    """Stand-in objects -> dicts, recursively, so a written file needs no classes at all."""
    if isinstance(obj, PickledTrainingObject):
        return _plain(obj.to_dict())
    if isinstance(obj, OrderedDict):
        return OrderedDict((k, _plain(v)) for k, v in obj.items())
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def save_checkpoint(path: str | os.PathLike, net_state_dict: Mapping[str, torch.Tensor], epoch: int = 0,
                    optimizer: Mapping[str, Any] | None = None, stats: Mapping[str, Any] | None = None,
                    settings: Mapping[str, Any] | None = None, actor_type: str = 'OSTrack_CKD_Actor',
                    net_type: str = 'OSTrack_CKD') -> Path:
    """Write a checkpoint in the official layout, atomically (temporary file + rename).

    Top-level keys as ``BaseTrainer.save_checkpoint``: ``epoch``, ``actor_type``, ``net_type``,
    ``net`` (tensors moved to the CPU, ``module.`` prefixes removed, shared storage kept),
    ``net_info`` (None), ``constructor`` (None), ``optimizer``, ``stats``, ``settings``.  ``stats`` and
    ``settings`` are written as plain dicts (not the official classes), so the file loads with
    ``weights_only=True`` everywhere.
    """
    path = Path(path)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise ValueError(f'epoch must be a non-negative int, got {epoch!r}')
    net = strip_module_prefix(_as_state_dict(net_state_dict, 'net_state_dict'))
    payload = {
        'epoch': epoch, 'actor_type': actor_type, 'net_type': net_type,
        'net': OrderedDict((k, v.detach().cpu()) for k, v in net.items()),
        'net_info': None, 'constructor': None,
        'optimizer': _plain(optimizer), 'stats': _plain(stats), 'settings': _plain(settings),
    }
    return atomic_write(path, lambda handle: torch.save(payload, handle))


# ---- ViT / tracker weights for training initialisation (docs/spec/CKD.md sec. 4.6) ---------------

@dataclass
class WeightImport:
    """What :func:`load_vit_weights` / :func:`load_tracker_head` did."""
    layout: str
    loaded: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def resize_token_grid(table: torch.Tensor, grid: int, mode: str) -> torch.Tensor:
    """Resize a (1, N, C) positional table of a square grid to (1, grid*grid, C) (align_corners False)."""
    side = math.isqrt(table.shape[1])
    if side * side != table.shape[1]:
        raise CheckpointError(f'positional table with {table.shape[1]} tokens is not a square grid')
    if side == grid:
        return table
    channels = table.shape[2]
    image = table.reshape(1, side, side, channels).permute(0, 3, 1, 2)
    image = F.interpolate(image.float(), size=(grid, grid), mode=mode, align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(1, grid * grid, channels).to(table.dtype)


def _unwrap_vit(obj: Any, source: str) -> tuple[str, 'OrderedDict[str, torch.Tensor]']:
    """Detect the layout and return ViT-branch keys without prefixes."""
    if isinstance(obj, Mapping):
        for wrapper in ('net', 'model', 'state_dict'):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    state = strip_module_prefix(_as_state_dict(obj, source))
    if any(k.startswith('backbone.') for k in state):
        layout = 'dropmae_track' if any(k.startswith('backbone.temporal_pos_embed') for k in state) else 'ostrack'
        return layout, OrderedDict((k[len('backbone.'):], v) for k, v in state.items() if k.startswith('backbone.'))
    if any(k.startswith(('rgb_branch.', 'tir_branch.')) for k in state):
        raise CheckpointError(f'{source} is a CKD checkpoint; load it with load_model_weights')
    layout = 'mae' if any(k.startswith(('decoder_', 'mask_token')) for k in state) else 'timm'
    return layout, state


def load_vit_weights(branch: nn.Module, source: str | os.PathLike | Mapping[str, Any]) -> WeightImport:
    """Initialise one :class:`~ckd_ros.core.model.VisionTransformerCE` from ViT-B weights.

    Layouts (detected from the keys):

    * ``timm`` / ``mae``: ImageNet ViT (``pos_embed`` (1, 1+14*14, C)); ``pos_embed_z`` / ``pos_embed_x``
      are the 14x14 grid without its cls entry resized bicubically (align_corners False) to the
      template / search grids (official ``finetune_track``).  MAE's ``decoder_*``, ``mask_token`` and
      any classifier ``head.*`` are ignored; a fine-tuned MAE file without ``norm`` uses ``fc_norm``.
    * ``ostrack`` / ``dropmae_track``: tracker files (``net`` -> ``backbone.*``) with their own
      ``pos_embed_z/x``, resized bilinearly if the grid differs; DropTrack files'
      ``temporal_pos_embed_z/x`` are added to them (``docs/spec/CKD.md`` sec. 4.6; the official code
      decides this by the file name containing "DropTrack", here by the presence of those keys).

    Every branch parameter except ``cls_token``/``pos_embed`` must be filled, else CheckpointError.
    """
    src = str(source) if isinstance(source, (str, os.PathLike)) else 'ViT weights'
    raw = read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    layout, state = _unwrap_vit(raw, src)
    report = WeightImport(layout=layout)
    target = branch.state_dict()
    new: dict[str, torch.Tensor] = {}
    if 'norm.weight' not in state and 'fc_norm.weight' in state:
        state['norm.weight'], state['norm.bias'] = state.pop('fc_norm.weight'), state.pop('fc_norm.bias')
    z_grid, x_grid = branch.template_feat_size, branch.search_feat_size
    if layout in ('timm', 'mae'):
        if 'pos_embed' not in state:
            raise CheckpointError(f'{src}: no pos_embed in a {layout} ViT file')
        grid_table = state['pos_embed'][:, 1:]
        new['pos_embed_z'] = resize_token_grid(grid_table, z_grid, 'bicubic')
        new['pos_embed_x'] = resize_token_grid(grid_table, x_grid, 'bicubic')
        report.resized += ['pos_embed_z', 'pos_embed_x']
    else:
        for name, grid in (('pos_embed_z', z_grid), ('pos_embed_x', x_grid)):
            if name not in state:
                raise CheckpointError(f'{src}: tracker file without backbone.{name}')
            table = state[name]
            if table.shape[1] != grid * grid:
                table = resize_token_grid(table, grid, 'bilinear')
                report.resized.append(name)
            temporal = state.get('temporal_' + name)
            if temporal is not None:
                table = table + (resize_token_grid(temporal, grid, 'bilinear') if temporal.shape[1] != grid * grid
                                 else temporal)
            new[name] = table
    for key, value in state.items():
        if key in ('pos_embed_z', 'pos_embed_x') or key.startswith('temporal_pos_embed'):
            continue
        if key in target:
            new[key] = value
        else:
            report.ignored.append(key)
    problems = [f'{k}: {tuple(v.shape)} vs model {tuple(target[k].shape)}' for k, v in new.items()
                if tuple(v.shape) != tuple(target[k].shape)]
    if problems:
        raise CheckpointError(f'{src}: shapes do not fit this branch (different ViT size?): {problems[:6]}')
    report.missing = [k for k in target if k not in new]
    required_missing = [k for k in report.missing if k not in ('cls_token', 'pos_embed')]
    if required_missing:
        raise CheckpointError(f'{src} ({layout} layout) lacks {len(required_missing)} branch key(s): '
                              f'{required_missing[:10]}')
    with torch.no_grad():
        for key, value in new.items():
            target[key].copy_(value.to(target[key].dtype))
    report.loaded = sorted(new)
    return report


def load_tracker_head(head: nn.Module, source: str | os.PathLike | Mapping[str, Any],
                      duplicate_inputs: bool | None = None) -> WeightImport:
    """Initialise a CENTER head from a single-modality tracker's ``box_head.*`` (``docs/spec/CKD.md`` sec. 4.6).

    For the fused head (input channels = 2x the file's) each tower's first conv
    ``conv1_*.0.weight`` (256, 768, 3, 3) is duplicated along input channels to (256, 1536, 3, 3)
    (not halved, as the official code); teacher heads take the file unchanged.  ``duplicate_inputs``
    defaults to "when the channel counts say so".
    """
    src = str(source) if isinstance(source, (str, os.PathLike)) else 'tracker weights'
    raw = read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    if isinstance(raw, Mapping) and 'net' in raw:
        raw = raw['net']
    state = strip_module_prefix(_as_state_dict(raw, src))
    head_state = OrderedDict((k[len('box_head.'):], v) for k, v in state.items() if k.startswith('box_head.'))
    if not head_state:
        raise CheckpointError(f'{src}: no box_head.* keys')
    target = head.state_dict()
    missing = [k for k in target if k not in head_state]
    if missing:
        raise CheckpointError(f'{src}: box_head lacks {missing[:10]}')
    report = WeightImport(layout='ostrack_head', ignored=[k for k in head_state if k not in target])
    new = {}
    for key, want in target.items():
        value = head_state[key]
        if tuple(value.shape) != tuple(want.shape):
            doubled = (value.ndim == 4 and want.ndim == 4 and want.shape[1] == 2 * value.shape[1]
                       and want.shape[0] == value.shape[0] and duplicate_inputs is not False)
            if not doubled:
                raise CheckpointError(f'{src}: box_head.{key} {tuple(value.shape)} does not fit {tuple(want.shape)}')
            value = torch.cat([value, value], dim=1)
            report.resized.append(key)
        new[key] = value
    with torch.no_grad():
        for key, value in new.items():
            target[key].copy_(value.to(target[key].dtype))
    report.loaded = sorted(new)
    return report
