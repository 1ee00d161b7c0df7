"""CKD configurations: the four official experiment files by name, smaller sizes, or any YAML path.

A configuration is the official nested structure (``DATA`` / ``MODEL`` / ``TRAIN`` / ``TEST``, as in
``lib/config/ckd/config.py`` of the official code) read from a YAML file and merged onto
:data:`DEFAULTS`.  Keys that the official code does not have and that this package adds:

* ``MODEL.BACKBONE.EMBED_DIM``, ``DEPTH``, ``NUM_HEADS``, ``MLP_RATIO``: the ViT size (ViT-B/16 by
  default; the official builder is hard-wired to it).
* ``MODEL.BACKBONE.CE_MODE``: ``MCE`` (official: one selection from the element-wise maximum of
  both branches' attention) or ``CE`` (plain OSTrack candidate elimination per branch).  Only
  relevant when ``CE_LOC`` is non-empty.
* ``TEST.LOST_THRESHOLD`` (``null`` = off), ``TEST.MAX_SCALE_CHANGE`` (``null`` = off),
  ``TEST.REDETECT_GROWTH`` (``null`` = off) and ``TEST.REDETECT_MAX_FACTOR``,
  ``TEST.TEMPLATE_UPDATE_INTERVAL`` (0 = off) and
  ``TEST.TEMPLATE_UPDATE_THRESHOLD``: tracker options that are not in the official tracker (see
  :mod:`ckd_ros.core.tracker`); off in the official files.

Unknown keys and values of the wrong type or outside their range raise :class:`ConfigError`.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / 'configs'

OFFICIAL_CONFIG_NAMES = (
    'ckd_4b_dropmae_ckd_tf_cc_mask.25',
    'ckd_4b_sot_ckd_tf_cc_mask.25',
    'ckd_4b_dropmae_ckd_tf_cc_mask.25_maxce_trainhead',
    'ckd_4b_dropmae_ckd_tf_cc_mask.25_share',
)
SMALL_CONFIG_NAMES = ('ckd_tiny', 'ckd_small')

CE_TEMPLATE_RANGES = ('ALL', 'CTR_POINT', 'CTR_REC')
CE_MODES = ('MCE', 'CE')


class ConfigError(ValueError):
    """A configuration name, file, key or value is not valid."""


# Official defaults (lib/config/ckd/config.py) plus this package's extra keys, documented above.
DEFAULTS: dict[str, Any] = {
    'MODEL': {
        'PRETRAIN_FILE': '',
        'EXTRA_MERGER': False,
        'RETURN_INTER': False,
        'RETURN_STAGES': [],
        'RGB_BRANCH': '',
        'TIR_BRANCH': '',
        'RGB_TEACHER': '',
        'TIR_TEACHER': '',
        'SHARE_STUDENT': False,
        'TRAIN_RGB_BRANCH': True,
        'TRAIN_TIR_BRANCH': True,
        'TRAIN_RGB_TEACHER': True,
        'TRAIN_TIR_TEACHER': True,
        'BACKBONE': {
            'TYPE': 'vit_base_patch16_224',
            'STRIDE': 16,
            'MID_PE': False,
            'SEP_SEG': False,
            'CAT_MODE': 'direct',
            'MERGE_LAYER': 0,
            'ADD_CLS_TOKEN': False,
            'CLS_TOKEN_USE_MODE': 'ignore',
            'CE_LOC': [],
            'CE_KEEP_RATIO': [],
            'CE_TEMPLATE_RANGE': 'ALL',
            # extra keys of this package
            'EMBED_DIM': 768,
            'DEPTH': 12,
            'NUM_HEADS': 12,
            'MLP_RATIO': 4.0,
            'CE_MODE': 'MCE',
        },
        'HEAD': {
            'TYPE': 'CENTER',
            'NUM_CHANNELS': 256,
        },
    },
    'TRAIN': {
        'CKD_LOSS': 'CKD',
        'MASK_PROBABILITY': 0.0,
        'INPUT_MASK_RATIO': 0.0,
        # not in the official code (0 = off there): per training sample, the probability that one
        # modality (drawn at random) is blanked, so that the fused network learns to track on the other
        'MODALITY_DROPOUT': 0.0,
        'PARAM_KEY': [],
        'LR': 0.0001,
        'WEIGHT_DECAY': 0.0001,
        'EPOCH': 500,
        'LR_DROP_EPOCH': 400,
        'BATCH_SIZE': 16,
        'NUM_WORKER': 6,
        'OPTIMIZER': 'ADAMW',
        'BACKBONE_MULTIPLIER': 0.1,
        'GIOU_WEIGHT': 2.0,
        'L1_WEIGHT': 5.0,
        'STYLE_DISTILL_WEIGHT': 0.01,
        'CONTENT_DISTILL_WEIGHT': 0.1,
        'STOP_CONTENT_GRADIENT': True,
        'STOP_STYLE_GRADIENT': False,
        'STYLE_LOSS_TYPE': 'channel',
        'CONTENT_LOSS_TYPE': 'channel',
        'ENABLE_CONTENT': True,
        'ENABLE_STYLE': True,
        'FREEZE_LAYERS': [0],
        'PRINT_INTERVAL': 50,
        'VAL_EPOCH_INTERVAL': 20,
        'GRAD_CLIP_NORM': 0.1,
        'AMP': False,
        'CE_START_EPOCH': 10,
        'CE_WARM_EPOCH': 20,
        'DROP_PATH_RATE': 0.1,
        'SCHEDULER': {'TYPE': 'step', 'DECAY_RATE': 0.1},
    },
    'DATA': {
        'SAMPLER_MODE': 'causal',
        'MEAN': [0.485, 0.456, 0.406],
        'STD': [0.229, 0.224, 0.225],
        'MAX_SAMPLE_INTERVAL': 200,
        'ENABLE_AUG1': False,
        'ENABLE_NOISE': False,
        'TRAIN': {'DATASETS_NAME': ['LasHeR_trainingSet'], 'DATASETS_RATIO': [1], 'SAMPLE_PER_EPOCH': 60000},
        'VAL': {'DATASETS_NAME': ['LasHeR_testingSet'], 'DATASETS_RATIO': [1], 'SAMPLE_PER_EPOCH': 10000},
        'SEARCH': {'SIZE': 256, 'FACTOR': 4.0, 'CENTER_JITTER': 3.0, 'SCALE_JITTER': 0.25, 'NUMBER': 1},
        'TEMPLATE': {'NUMBER': 1, 'SIZE': 128, 'FACTOR': 2.0, 'CENTER_JITTER': 0.0, 'SCALE_JITTER': 0.0},
    },
    'TEST': {
        'TEMPLATE_FACTOR': 2.0,
        'TEMPLATE_SIZE': 128,
        'SEARCH_FACTOR': 4.0,
        'SEARCH_SIZE': 256,
        'EPOCH': 30,
        # extra keys of this package (tracker options, off = official behaviour)
        'LOST_THRESHOLD': None,
        'MAX_SCALE_CHANGE': None,
        'REDETECT_GROWTH': None,
        'REDETECT_MAX_FACTOR': 3.0,
        'TEMPLATE_UPDATE_INTERVAL': 0,
        'TEMPLATE_UPDATE_THRESHOLD': 0.5,
    },
}

# Keys that may be null (YAML ``null``) besides their default's type.
_NULLABLE = {'TEST.LOST_THRESHOLD', 'TEST.MAX_SCALE_CHANGE', 'TEST.REDETECT_GROWTH', 'TRAIN.SCHEDULER.TYPE'}


class ConfigNode(Mapping[str, Any]):
    """Read-only nested mapping with attribute access (``cfg.MODEL.BACKBONE.CE_LOC``)."""

    def __init__(self, data: Mapping[str, Any], path: str = ''):
        self._path = path
        self._data = {k: ConfigNode(v, f'{path}{k}.') if isinstance(v, Mapping) else v
                      for k, v in data.items()}

    def __getattr__(self, name: str) -> Any:
        if name.startswith('_'):
            raise AttributeError(name)
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(f'configuration has no key {self._path}{name}') from None

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f'ConfigNode({self.to_dict()!r})'

    def to_dict(self) -> dict[str, Any]:
        """A deep plain-dict copy (for YAML dumps and overrides)."""
        return {k: v.to_dict() if isinstance(v, ConfigNode) else copy.deepcopy(v) for k, v in self._data.items()}


class CKDConfig(ConfigNode):
    """A validated CKD configuration; ``name`` is the official/small name or the YAML file stem."""

    def __init__(self, data: Mapping[str, Any], name: str, source: Path | None):
        super().__init__(data)
        self.__dict__['name'] = name
        self.__dict__['source'] = source

    @property
    def is_official(self) -> bool:
        return self.name in OFFICIAL_CONFIG_NAMES

    def with_overrides(self, overrides: Mapping[str, Any]) -> "CKDConfig":
        """A new validated config with ``overrides`` (nested dict) merged in."""
        data = self.to_dict()
        _merge(data, overrides, DEFAULTS, '')
        _validate(data)
        return CKDConfig(data, self.name, self.source)

    def __repr__(self) -> str:
        return f'CKDConfig(name={self.name!r}, source={str(self.source)!r})'


def available_configs() -> list[str]:
    """Names accepted by :func:`load_config` (the YAML files shipped in ``configs/``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob('*.yaml'))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """The YAML file for an official/small config name, or an existing ``.yaml``/``.yml`` path."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith(('.yaml', '.yml')) or '/' in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f'configuration file {path} does not exist')
        return path
    path = CONFIG_DIR / f'{text}.yaml'
    if not path.is_file():
        raise ConfigError(f"unknown configuration name {text!r}; known names: {', '.join(available_configs())} "
                          "(or pass the path of a .yaml file)")
    return path


def load_config(name_or_path: str | Path | CKDConfig, overrides: Mapping[str, Any] | None = None) -> CKDConfig:
    """Load and validate a configuration.

    ``name_or_path``: an official name (e.g. ``ckd_4b_dropmae_ckd_tf_cc_mask.25``), ``ckd_tiny`` /
    ``ckd_small``, a path to a YAML file in the same structure, or an already loaded config.
    ``overrides``: optional nested dict merged on top (same key rules as the file).
    """
    if isinstance(name_or_path, CKDConfig):
        return name_or_path.with_overrides(overrides) if overrides else name_or_path
    path = resolve_config_path(name_or_path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f'{path} is not valid YAML: {exc}') from exc
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, Mapping):
        raise ConfigError(f'{path}: the top level must be a mapping with DATA/MODEL/TRAIN/TEST, '
                          f'got {type(loaded).__name__}')
    data = copy.deepcopy(DEFAULTS)
    try:
        _merge(data, loaded, DEFAULTS, '')
        if overrides:
            _merge(data, overrides, DEFAULTS, '')
        _validate(data)
    except ConfigError as exc:
        raise ConfigError(f'{path}: {exc}') from None
    return CKDConfig(data, path.stem, path)


def _merge(target: dict, update: Mapping, defaults: Mapping, prefix: str) -> None:
    for key, value in update.items():
        full = f'{prefix}{key}'
        if key not in defaults:
            hint = ''
            if full in ('BASE', 'SYNTHETIC'):  # a ckd-train training file given where a model config is read
                hint = (" (BASE and SYNTHETIC belong to ckd-train training files: give the tracker the "
                        "model configuration the file's BASE names)")
            raise ConfigError(f"unknown key {full}; allowed keys here: {', '.join(sorted(defaults))}{hint}")
        default = defaults[key]
        if isinstance(default, Mapping):
            if not isinstance(value, Mapping):
                raise ConfigError(f'{full} must be a mapping, got {value!r}')
            _merge(target[key], value, default, f'{full}.')
        else:
            target[key] = _check_type(full, value, default)


def _check_type(full: str, value: Any, default: Any) -> Any:
    if isinstance(value, Mapping):
        raise ConfigError(f'{full} must be a single value, got a mapping')
    if value is None and full in _NULLABLE:
        return None
    if default is None:  # nullable number (TEST.LOST_THRESHOLD)
        default = 0.0
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f'{full} must be true/false, got {value!r}')
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f'{full} must be a number, got {value!r}')
        if isinstance(default, int) and not isinstance(value, int):
            if float(value).is_integer():
                return int(value)
            raise ConfigError(f'{full} must be an integer, got {value!r}')
        if not math.isfinite(value):
            raise ConfigError(f'{full} must be finite, got {value!r}')
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f'{full} must be a string, got {value!r}')
        return value
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f'{full} must be a list, got {value!r}')
        return value
    return value


def _validate(d: dict) -> None:
    """Value checks that need more than the type (sizes, CE layout, ranges)."""
    backbone = d['MODEL']['BACKBONE']
    stride = backbone['STRIDE']
    embed, depth, heads = backbone['EMBED_DIM'], backbone['DEPTH'], backbone['NUM_HEADS']
    if stride < 1:
        raise ConfigError(f'MODEL.BACKBONE.STRIDE must be >= 1, got {stride}')
    if depth < 1 or heads < 1 or embed < 1:
        raise ConfigError(f'MODEL.BACKBONE EMBED_DIM/DEPTH/NUM_HEADS must be >= 1, got {embed}/{depth}/{heads}')
    if embed % heads:
        raise ConfigError(f'MODEL.BACKBONE.EMBED_DIM ({embed}) must be divisible by NUM_HEADS ({heads})')
    if backbone['MLP_RATIO'] <= 0:
        raise ConfigError(f"MODEL.BACKBONE.MLP_RATIO must be > 0, got {backbone['MLP_RATIO']}")
    ce_loc, keep = backbone['CE_LOC'], backbone['CE_KEEP_RATIO']
    if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < depth for i in ce_loc):
        raise ConfigError(f'MODEL.BACKBONE.CE_LOC entries must be block indices 0..{depth - 1}, got {ce_loc}')
    if sorted(set(ce_loc)) != list(ce_loc):
        raise ConfigError(f'MODEL.BACKBONE.CE_LOC must be strictly increasing, got {ce_loc}')
    if len(keep) < len(ce_loc):
        raise ConfigError(f'MODEL.BACKBONE.CE_KEEP_RATIO needs one ratio per CE_LOC entry ({len(ce_loc)}), got {keep}')
    if any(isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1 for r in keep):
        raise ConfigError(f'MODEL.BACKBONE.CE_KEEP_RATIO entries must be in (0, 1], got {keep}')
    if backbone['CE_TEMPLATE_RANGE'] not in CE_TEMPLATE_RANGES:
        raise ConfigError(f"MODEL.BACKBONE.CE_TEMPLATE_RANGE must be one of {CE_TEMPLATE_RANGES} "
                          f"(GT_BOX is not supported), got {backbone['CE_TEMPLATE_RANGE']!r}")
    if backbone['CE_MODE'] not in CE_MODES:
        raise ConfigError(f"MODEL.BACKBONE.CE_MODE must be one of {CE_MODES}, got {backbone['CE_MODE']!r}")
    if backbone['CAT_MODE'] != 'direct' or backbone['SEP_SEG'] or backbone['ADD_CLS_TOKEN'] or backbone['MID_PE']:
        raise ConfigError("only the official token layout is implemented: MODEL.BACKBONE.CAT_MODE 'direct', "
                          "SEP_SEG/ADD_CLS_TOKEN/MID_PE false")
    head = d['MODEL']['HEAD']
    if head['TYPE'] != 'CENTER':
        raise ConfigError(f"MODEL.HEAD.TYPE must be CENTER (the only head of CKD), got {head['TYPE']!r}")
    if head['NUM_CHANNELS'] < 8 or head['NUM_CHANNELS'] % 8:
        raise ConfigError(f"MODEL.HEAD.NUM_CHANNELS must be a positive multiple of 8 (towers use C, C/2, C/4, C/8), "
                          f"got {head['NUM_CHANNELS']}")
    data, test = d['DATA'], d['TEST']
    for section, key in (('TEMPLATE', 'SIZE'), ('SEARCH', 'SIZE')):
        size = data[section][key]
        if size < stride or size % stride:
            raise ConfigError(f'DATA.{section}.SIZE ({size}) must be a positive multiple of '
                              f'MODEL.BACKBONE.STRIDE ({stride})')
    if test['TEMPLATE_SIZE'] != data['TEMPLATE']['SIZE'] or test['SEARCH_SIZE'] != data['SEARCH']['SIZE']:
        raise ConfigError(f"TEST.TEMPLATE_SIZE/SEARCH_SIZE ({test['TEMPLATE_SIZE']}/{test['SEARCH_SIZE']}) must equal "
                          f"DATA.TEMPLATE.SIZE/DATA.SEARCH.SIZE ({data['TEMPLATE']['SIZE']}/{data['SEARCH']['SIZE']}): "
                          "the network's positional tables are built for the DATA sizes")
    for key in ('TEMPLATE_FACTOR', 'SEARCH_FACTOR'):
        if test[key] <= 0:
            raise ConfigError(f'TEST.{key} must be > 0, got {test[key]}')
    for key in ('MEAN', 'STD'):
        values = data[key]
        if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
            raise ConfigError(f'DATA.{key} must be 3 numbers, got {values}')
    if any(v <= 0 for v in data['STD']):
        raise ConfigError(f"DATA.STD entries must be > 0, got {data['STD']}")
    if test['LOST_THRESHOLD'] is not None and not 0 <= test['LOST_THRESHOLD'] <= 1:
        raise ConfigError(f"TEST.LOST_THRESHOLD must be null or in [0, 1], got {test['LOST_THRESHOLD']}")
    if test['MAX_SCALE_CHANGE'] is not None and not test['MAX_SCALE_CHANGE'] > 1:
        raise ConfigError(f"TEST.MAX_SCALE_CHANGE must be null or > 1, got {test['MAX_SCALE_CHANGE']}")
    if test['REDETECT_GROWTH'] is not None and not 1 < test['REDETECT_GROWTH'] <= 2:
        raise ConfigError(f"TEST.REDETECT_GROWTH must be null or in (1, 2], got {test['REDETECT_GROWTH']}")
    if not 1 <= test['REDETECT_MAX_FACTOR'] <= 8:
        raise ConfigError(f"TEST.REDETECT_MAX_FACTOR must be in [1, 8], got {test['REDETECT_MAX_FACTOR']}")
    if test['TEMPLATE_UPDATE_INTERVAL'] < 0:
        raise ConfigError('TEST.TEMPLATE_UPDATE_INTERVAL must be >= 0 (0 = off), '
                          f"got {test['TEMPLATE_UPDATE_INTERVAL']}")
    if not 0 <= test['TEMPLATE_UPDATE_THRESHOLD'] <= 1:
        raise ConfigError(f"TEST.TEMPLATE_UPDATE_THRESHOLD must be in [0, 1], got {test['TEMPLATE_UPDATE_THRESHOLD']}")
    train = d['TRAIN']
    if not 0 <= train['INPUT_MASK_RATIO'] <= 1:
        raise ConfigError(f"TRAIN.INPUT_MASK_RATIO must be in [0, 1], got {train['INPUT_MASK_RATIO']}")
    if not 0 <= train['MODALITY_DROPOUT'] <= 1:
        raise ConfigError(f"TRAIN.MODALITY_DROPOUT must be in [0, 1] (0 = off, as the official code), "
                          f"got {train['MODALITY_DROPOUT']}")
    if not 0 <= train['DROP_PATH_RATE'] < 1:
        raise ConfigError(f"TRAIN.DROP_PATH_RATE must be in [0, 1), got {train['DROP_PATH_RATE']}")
    for entry in train['PARAM_KEY']:
        if (not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], str)
                or isinstance(entry[1], bool) or not isinstance(entry[1], (int, float))):
            raise ConfigError(f'TRAIN.PARAM_KEY entries must be [name_substring, lr] pairs, got {entry!r}')
