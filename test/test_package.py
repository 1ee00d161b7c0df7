"""Package structure: the ROS-free core imports without ROS; the package builds with colcon from the wheels."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO_ROOT

# Import every module of ckd_ros.core with every ROS Python package made unimportable, then check that
# no ROS module was loaded. Runs in a fresh interpreter so that nothing imported by other tests counts.
_CORE_WITHOUT_ROS = textwrap.dedent("""
    import importlib, pkgutil, sys
    ROS_PREFIXES = ('rclpy', 'rcl_interfaces', 'rosidl', 'sensor_msgs', 'std_msgs', 'builtin_interfaces',
                    'diagnostic_msgs', 'lifecycle_msgs', 'std_srvs', 'vision_msgs', 'message_filters',
                    'cv_bridge', 'launch', 'launch_ros', 'ament_index_python', 'ckd_ros.msg', 'ckd_ros.srv',
                    'ckd_ros.ros', 'ckd_ros.cli', 'ckd_train')

    class BlockRos:
        def find_spec(self, name, path=None, target=None):
            if name.startswith(ROS_PREFIXES):
                raise ImportError(f'{name} is blocked: the core must not import ROS')
            return None

    sys.meta_path.insert(0, BlockRos())
    import ckd_ros
    assert 'torch' not in sys.modules, 'import ckd_ros must stay light (lazy exports)'
    import ckd_ros.core
    names = [m.name for m in pkgutil.walk_packages(ckd_ros.core.__path__, 'ckd_ros.core.')]
    for name in names:
        importlib.import_module(name)
    loaded = sorted(m for m in sys.modules if m.startswith(ROS_PREFIXES))
    assert not loaded, loaded
    print(len(names), 'core modules imported without ROS')
""")


def test_core_imports_without_ros():
    out = subprocess.run([sys.executable, '-c', _CORE_WITHOUT_ROS], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'core modules imported without ROS' in out.stdout


def _imported_modules(path) -> set[str]:
    """Every module an import statement of ``path`` names (also inside functions), relative ones resolved."""
    import ast
    package = '.'.join(path.relative_to(REPO_ROOT).with_suffix('').parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parent = package.split('.')[:len(package.split('.')) - node.level + 1]
                base = '.'.join(parent + ([base] if base else []))
            names.add(base)
            names.update(f'{base}.{alias.name}' for alias in node.names)
    return names


def test_imports_run_downward():
    """cli above ros above core: ``ckd_ros.core`` imports neither ``ckd_ros.ros`` nor ``ckd_ros.cli`` (not
    even inside a function), and ``ckd_ros.ros`` does not import ``ckd_ros.cli``."""
    upward = {'core': ('ckd_ros.ros', 'ckd_ros.cli'), 'ros': ('ckd_ros.cli',)}
    found = []
    for layer, forbidden in upward.items():
        for path in sorted((REPO_ROOT / 'ckd_ros' / layer).rglob('*.py')):
            for name in _imported_modules(path):
                if any(name == f or name.startswith(f + '.') for f in forbidden):
                    found.append(f'{path.relative_to(REPO_ROOT)} imports {name}')
    assert not found, found
    # the check sees an upward import when there is one
    assert 'ckd_ros.ros.bag_play' in _imported_modules(REPO_ROOT / 'ckd_ros' / 'cli' / 'bag.py')


@pytest.mark.slow
def test_colcon_build_from_pip_wheels(tmp_path):
    """A clean colcon build of a copy of the package (not the tree make test built) succeeds, and the
    generated interfaces and the hand-written package import from the new install prefix."""
    src = tmp_path / 'ws' / 'src' / 'ckd_ros'
    ignore = shutil.ignore_patterns('.venv', 'build', 'install', 'log', '.git', '__pycache__', 'demo_output',
                                    '*.pth.tar', 'test')
    shutil.copytree(REPO_ROOT, src, ignore=ignore)
    venv = os.environ['VIRTUAL_ENV']
    env = dict(os.environ, AMENT_PREFIX_PATH=venv, CMAKE_PREFIX_PATH=venv)
    ws = tmp_path / 'ws'
    build = subprocess.run(
        ['colcon', '--log-base', str(ws / 'log'), 'build', '--base-paths', str(ws / 'src'),
         '--build-base', str(ws / 'build'), '--install-base', str(ws / 'install'),
         '--cmake-args', f'-DPython3_EXECUTABLE={sys.executable}', '-DBUILD_TESTING=OFF',
         f'-DCMAKE_PROJECT_INCLUDE={src / "cmake" / "fix_wheel_python_paths.cmake"}'],
        cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    prefix = ws / 'install' / 'ckd_ros'
    site = prefix / 'lib' / 'python3.11' / 'site-packages'
    assert (prefix / 'lib' / 'ckd_ros' / 'ckd_tracker_node').exists()
    assert (prefix / 'share' / 'ckd_ros' / 'package.xml').exists()
    check = subprocess.run(
        [sys.executable, '-c', 'import ckd_ros, ckd_ros.core; from ckd_ros.msg import TrackedTarget, TrackerStatus; '
         'from ckd_ros.srv import SetTarget; print(ckd_ros.__file__)'],
        env=dict(os.environ, PYTHONPATH=str(site),
                 LD_LIBRARY_PATH=f'{prefix / "lib"}:{os.environ.get("LD_LIBRARY_PATH", "")}',
                 AMENT_PREFIX_PATH=f'{prefix}:{venv}'),
        capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert check.returncode == 0, check.stderr
    assert str(site) in check.stdout


@pytest.mark.ros
@pytest.mark.parametrize('tool, first_word', [('ckd-bag', 'usage: ckd-bag'), ('ckd-eval', 'usage: ckd-eval'),
                                              ('ckd-train', 'usage: ckd-train')])
def test_command_line_tools_are_installed_on_path(tool, first_word, tmp_path):
    path = shutil.which(tool)
    assert path is not None and 'install' in path, f'{tool} not on PATH from the install prefix: {path}'
    out = subprocess.run([path, '--help'], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(first_word)


def test_package_xml_declares_every_ros_package_the_code_imports():
    """rosdep installs what package.xml names: geometry_msgs (the node's ~/init_box) was missing."""
    import ast
    import xml.etree.ElementTree as ElementTree

    ament_index = pytest.importorskip('ament_index_python.packages')
    ros_packages = set(ament_index.get_packages_with_prefixes())
    declared = {element.text for element in ElementTree.parse(REPO_ROOT / 'package.xml').getroot()
                if element.tag in ('depend', 'exec_depend', 'build_depend', 'buildtool_depend')}
    imported = set()
    for path in [*(REPO_ROOT / 'ckd_ros' / 'ros').glob('*.py'), *(REPO_ROOT / 'launch').glob('*.py')]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split('.')[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split('.')[0])
    used = (imported & ros_packages) - {'ckd_ros'}
    assert {'rclpy', 'sensor_msgs', 'geometry_msgs'} <= used
    assert used - declared == set()


def test_the_test_runner_picks_a_ros_domain_whose_ports_stay_below_the_ephemeral_range():
    """Fast DDS's ports for domain d are 7400 + 250 d + ...: ids above 101 (except 215..232) reach Linux's
    ephemeral range (32768+), where any program's outgoing socket can take a port a participant needs."""
    env = {k: v for k, v in os.environ.items() if k != 'CKD_TEST_DOMAIN_FIXED'}
    domains = set()
    for _ in range(8):
        out = subprocess.run(['bash', str(REPO_ROOT / 'scripts' / 'run_tests.sh'), '--version'], env=env,
                             capture_output=True, text=True, timeout=60).stdout
        domains.add(int(out.split('ROS_DOMAIN_ID=')[1].split()[0]))
    assert all(1 <= d <= 100 for d in domains), domains
    assert len(domains) > 1   # random per run, so parallel runs on one machine do not meet
