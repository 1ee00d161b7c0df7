"""Value types for the command-line tools' argparse options (ckd-eval, ckd-bag, ckd-train, the demo and
the benchmarks): a bad value is refused by argparse with the reason (exit status 2), never with a
traceback after minutes of setup.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


def size(minimum: int = 16):
    """``WIDTHxHEIGHT`` (each >= ``minimum``) -> (width, height)."""
    def parse(text: str) -> tuple[int, int]:
        try:
            width, height = (int(v) for v in text.lower().split('x'))
        except ValueError:
            raise argparse.ArgumentTypeError(f'must be WIDTHxHEIGHT, e.g. 640x512, got {text!r}') from None
        if width < minimum or height < minimum:
            raise argparse.ArgumentTypeError(f'must be at least {minimum}x{minimum}, got {text!r}')
        return width, height
    return parse


def integer(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'must be an integer >= {minimum}, got {text!r}') from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f'must be an integer >= {minimum}, got {text!r}')
        return value
    return parse


def number(minimum: float = 0.0, inclusive: bool = False):
    """A finite float > ``minimum`` (>= with ``inclusive``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            bound = f'>= {minimum:g}' if inclusive else f'> {minimum:g}'
            raise argparse.ArgumentTypeError(f'must be a finite number {bound}, got {text!r}')
        return value
    return parse


def output_file(text: str) -> Path:
    """A file to write at the end of the run: its folder must exist now (not after the whole benchmark)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f'{text} is a folder; give a file name (e.g. {path / "result.json"})')
    parent = path.parent if str(path.parent) else Path('.')
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f'the folder {parent} does not exist (create it first)')
    if not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(f'the folder {parent} is not writable')
    return path


def config_name(text: str) -> str:
    """A model configuration name or YAML path that ``ckd_ros.core.config.load_config`` knows."""
    from ckd_ros.core.config import ConfigError, load_config
    try:
        load_config(text)
    except (ConfigError, OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
