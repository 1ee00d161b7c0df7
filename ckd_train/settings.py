"""Training configurations and the data sources they name.

A training run takes either a model configuration (official name, ``ckd_tiny``/``ckd_small`` or a
YAML path in the structure of ``ckd_ros/core/configs``) or a *training file* in
``ckd_train/configs``: the same structure plus two training-only top-level keys:

* ``BASE``: the model configuration the file's ``DATA``/``MODEL``/``TRAIN``/``TEST`` entries
  override (default: the official defaults);
* ``SYNTHETIC``: the synthetic sequences the dataset names ``SYNTHETIC`` (training) and
  ``SYNTHETIC_VAL`` (validation) stand for: ``SEEDS`` / ``VAL_SEEDS`` as ``[start, stop)``,
  ``LENGTH`` (frames), ``SIZE`` (``[width, height]``) and optional generator options
  (``FAILURE_FRACTION``, ``NOISE``, ``WORLD``: ``classic`` or the realistic ``rgbt`` world of
  ``ckd_ros.core.synthetic``, where training draws real target motion from the ``train`` pool of tracks and
  validation from the ``val`` pool).

Real datasets are named as in the official configs (``LasHeR_trainingSet``, ``LasHeR_testingSet``,
``RGBT234``, ``RGBT210``, ``GTOT``, ``VTUAV``); their folders are given at run time
(``--data-root NAME=PATH``), never in the file, because they differ per machine (the official
code's host-IP lookup, defect D10, is what this replaces).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ckd_ros.core.config import DEFAULTS, CKDConfig, ConfigError, _merge, load_config
from ckd_ros.core.datasets import official_dataset_kinds
from ckd_ros.core.synthetic import WORLDS

TRAIN_CONFIG_DIR = Path(__file__).resolve().parent / 'configs'

# official dataset name -> reader kind of ckd_ros.core.datasets.open_dataset (the dataset records'
# official_names: ckd_ros.core.datasets.KINDS)
DATASET_KINDS = official_dataset_kinds()
SYNTHETIC_NAMES = ('SYNTHETIC', 'SYNTHETIC_VAL')

_SYNTHETIC_KEYS = {'SEEDS', 'VAL_SEEDS', 'LENGTH', 'SIZE', 'FAILURE_FRACTION', 'NOISE', 'WORLD'}


@dataclass(frozen=True)
class SyntheticSettings:
    seeds: tuple[int, int] = (0, 32)
    val_seeds: tuple[int, int] = (100000, 100008)
    length: int = 150
    size: tuple[int, int] = (320, 256)
    failure_fraction: float = 0.4
    noise: float = 3.0
    world: str = 'classic'  # ckd_ros.core.synthetic.WORLDS

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, source: str) -> "SyntheticSettings":
        if not data:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(f'{source}: SYNTHETIC must be a mapping, got {data!r}')
        unknown = sorted(set(data) - _SYNTHETIC_KEYS)
        if unknown:
            raise ConfigError(f'{source}: unknown SYNTHETIC keys {unknown}; allowed: {sorted(_SYNTHETIC_KEYS)}')
        d = cls()

        def pair(key, default):
            value = data.get(key, default)
            if (not isinstance(value, (list, tuple)) or len(value) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
                raise ConfigError(f'{source}: SYNTHETIC.{key} must be two non-negative integers, got {value!r}')
            return int(value[0]), int(value[1])

        seeds, val_seeds, size = pair('SEEDS', d.seeds), pair('VAL_SEEDS', d.val_seeds), pair('SIZE', d.size)
        for key, (lo, hi) in (('SEEDS', seeds), ('VAL_SEEDS', val_seeds)):
            if hi <= lo:
                raise ConfigError(f'{source}: SYNTHETIC.{key} is [start, stop) with stop > start, got {[lo, hi]}')
        if max(seeds[0], val_seeds[0]) < min(seeds[1], val_seeds[1]):
            raise ConfigError(f'{source}: SYNTHETIC.SEEDS {list(seeds)} and VAL_SEEDS {list(val_seeds)} overlap; '
                              'validation must use sequences training never sees')
        length = data.get('LENGTH', d.length)
        if not isinstance(length, int) or isinstance(length, bool) or length < 20:
            raise ConfigError(f'{source}: SYNTHETIC.LENGTH must be an integer >= 20 (the sampler needs 20 frames), '
                              f'got {length!r}')
        if min(size) < 64:
            raise ConfigError(f'{source}: SYNTHETIC.SIZE must be [width, height] >= 64, got {list(size)}')
        ff = data.get('FAILURE_FRACTION', d.failure_fraction)
        noise = data.get('NOISE', d.noise)
        for key, value in (('FAILURE_FRACTION', ff), ('NOISE', noise)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f'{source}: SYNTHETIC.{key} must be a number, got {value!r}')
        world = data.get('WORLD', d.world)
        if world not in WORLDS:
            raise ConfigError(f'{source}: SYNTHETIC.WORLD must be one of {list(WORLDS)}, got {world!r}')
        return cls(seeds, val_seeds, int(length), size, float(ff), float(noise), world)

    def to_dict(self) -> dict:
        return {'SEEDS': list(self.seeds), 'VAL_SEEDS': list(self.val_seeds), 'LENGTH': self.length,
                'SIZE': list(self.size), 'FAILURE_FRACTION': self.failure_fraction, 'NOISE': self.noise,
                'WORLD': self.world}


@dataclass(frozen=True)
class TrainConfig:
    """A model configuration plus the training-only settings."""

    cfg: CKDConfig
    synthetic: SyntheticSettings = field(default_factory=SyntheticSettings)
    name: str = ''
    source: Path | None = None

    def with_overrides(self, overrides: Mapping[str, Any]) -> "TrainConfig":
        return TrainConfig(self.cfg.with_overrides(overrides), self.synthetic, self.name, self.source)

    def to_dict(self) -> dict:
        """Plain-dict form (checkpoint ``settings``, YAML dump)."""
        return {'name': self.name, 'source': str(self.source) if self.source else None,
                'config': self.cfg.to_dict(), 'synthetic': self.synthetic.to_dict()}


def _without_source(message: str) -> str:
    """A :func:`load_config` message without its leading ``<file>: `` (the caller names the files)."""
    head, sep, rest = message.partition(': ')
    return rest if sep and head.endswith(('.yaml', '.yml')) else message


def available_train_configs() -> list[str]:
    return sorted(p.stem for p in TRAIN_CONFIG_DIR.glob('*.yaml'))


def load_train_config(name_or_path: str | Path, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """A training file of ``ckd_train/configs`` (by stem or path) or any model configuration."""
    text = str(name_or_path)
    path = None
    if (TRAIN_CONFIG_DIR / f'{text}.yaml').is_file() and '/' not in text:
        path = TRAIN_CONFIG_DIR / f'{text}.yaml'
    elif text.endswith(('.yaml', '.yml')) or '/' in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f'configuration file {path} does not exist')
    if path is None:  # a model configuration name
        cfg = load_config(text, overrides)
        return TrainConfig(cfg, SyntheticSettings(), cfg.name, cfg.source)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f'{path} is not valid YAML: {exc}') from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f'{path}: the top level must be a mapping')
    data = dict(data)
    base = data.pop('BASE', None)
    has_synthetic = 'SYNTHETIC' in data
    synthetic = SyntheticSettings.from_mapping(data.pop('SYNTHETIC', None), str(path))
    if base is None:
        if has_synthetic:
            raise ConfigError(f'{path}: a file with a SYNTHETIC section needs BASE (the model configuration '
                              'it overrides, e.g. BASE: ckd_tiny)')
        cfg = load_config(path, overrides)
    else:
        if not isinstance(base, str):
            raise ConfigError(f'{path}: BASE must be a configuration name or path, got {base!r}')
        base_path = Path(base)
        if not base_path.is_absolute() and (path.parent / base).is_file():
            base = str(path.parent / base)
        # the keys and values of this file first, on their own: an unknown key here must be reported as this
        # file's, not as one of the BASE file it is merged into
        try:
            _merge(copy.deepcopy(DEFAULTS), data, DEFAULTS, '')
        except ConfigError as exc:
            raise ConfigError(f'{path}: {exc}') from None
        try:
            cfg = load_config(base, data)
        except ConfigError as exc:
            try:
                load_config(base)
            except ConfigError as base_exc:  # the BASE file itself is at fault; its message names it
                raise ConfigError(f'{path}: BASE: {base_exc}') from None
            raise ConfigError(f'{path} (over its BASE {base!r}): {_without_source(str(exc))}') from None
        if overrides:
            cfg = cfg.with_overrides(overrides)
    return TrainConfig(cfg, synthetic, path.stem, path)
