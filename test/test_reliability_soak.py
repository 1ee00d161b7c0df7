"""The short CI variant of benchmarks/soak.py: a few hundred pairs through a node process with a dozen
lifecycle cycles; memory, threads, file descriptors and latency stay flat (the soak's own checks), and every
pair sent is paired by the node."""
import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, ros_subprocess_env

pytestmark = pytest.mark.ros


def test_short_soak_keeps_memory_threads_and_latency_flat(tmp_path):
    report = tmp_path / 'soak.json'
    pairs, cycle_every = 600, 50
    run = subprocess.run(
        [sys.executable, REPO_ROOT / 'benchmarks' / 'soak.py', '--pairs', str(pairs), '--rate', '150',
         '--cycle-every', str(cycle_every), '--model-config', REPO_ROOT / 'test' / 'data' / 'node_micro_config.yaml',
         '--checkpoint', 'random', '--namespace', '/soak_ci', '--max-rss-growth-mib', '15',
         # 600 pairs are too few for a per-10k-pairs trend; the per-cycle trend and the growth still apply
         '--max-rss-slope-mib', '1000', '--json', report],
        env=ros_subprocess_env(), capture_output=True, text=True, timeout=180)
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result['pairs_sent'] == pairs and result['lifecycle_cycles'] == pairs // cycle_every - 1
    assert result['pairs_made'] >= 0.9 * pairs, 'reliable inputs: (nearly) every pair reaches the pairing'
    assert result['targets_received'] > 0.3 * pairs
    assert len(set(result['threads_streaming_per_phase'].values())) == 1
    assert result['rss_mib']['growth_after_warmup'] < 15 and result['rss_mib']['slope_per_cycle'] < 0.5
    assert all(result['checks'].values())
