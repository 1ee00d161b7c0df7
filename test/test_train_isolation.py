"""ckd_ros never imports ckd_train (training is an offline add-on, not a runtime dependency)."""
import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PROBE = r"""
import importlib, json, pkgutil, sys
import ckd_ros
failed = {}
imported = []
for info in pkgutil.walk_packages(ckd_ros.__path__, "ckd_ros."):
    try:
        importlib.import_module(info.name)
        imported.append(info.name)
    except Exception as exc:  # e.g. ckd_ros.msg before the colcon build
        failed[info.name] = f"{type(exc).__name__}: {exc}"
from ckd_ros import init_tracker  # the lazy public entry point
print(json.dumps({"imported": imported, "failed": failed,
                  "leaked": sorted(m for m in sys.modules if m == "ckd_train" or m.startswith("ckd_train."))}))
"""


def test_importing_every_ckd_ros_module_leaves_ckd_train_unimported():
    proc = subprocess.run([sys.executable, '-c', PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report['leaked'] == []
    for required in ('ckd_ros.core.api', 'ckd_ros.core.tracker', 'ckd_ros.core.model', 'ckd_ros.core.checkpoint',
                     'ckd_ros.core.synthetic'):
        assert required in report['imported'], report['failed'].get(required)


def test_no_ckd_ros_source_mentions_ckd_train_in_an_import():
    """Static check that also covers modules the probe cannot import here (the ROS node before a build)."""
    offenders = []
    for path in (REPO / 'ckd_ros').rglob('*.py'):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and getattr(node.func, 'attr', getattr(node.func, 'id', '')) in (
                    'import_module', '__import__') and node.args and isinstance(node.args[0], ast.Constant):
                names = [str(node.args[0].value)]
            offenders += [f'{path.relative_to(REPO)}:{node.lineno} {n}' for n in names
                          if n == 'ckd_train' or n.startswith('ckd_train.')]
    assert offenders == []
