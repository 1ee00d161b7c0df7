"""What the machine offers the tracker: CPU model and flags, the cores this process may use, and
the thread count ``torch_threads: 0`` picks.

Pure functions (unit-tested with made-up machines, ``test/test_precision_auto.py``) take the facts
as arguments; the ``read_*`` functions and :func:`choose_threads` read them from this machine:

* CPU flags: the ``flags`` line of ``/proc/cpuinfo`` (x86 Linux; ``Features`` on ARM Linux), else
  the SIMD level torch dispatches to (``torch.backends.cpu.get_cpu_capability()``: ``AVX512``,
  ``AVX2``, ``DEFAULT`` ...), which says nothing about bf16/int8 hardware.
* cores: ``os.sched_getaffinity`` (the CPUs this process may run on: taskset, cpusets), the
  physical cores among them (``/sys/devices/system/cpu/cpuN/topology``: SMT siblings count once),
  and a cgroup v2 CPU quota (``/sys/fs/cgroup/cpu.max``: ``docker --cpus``), whichever is smallest.

Threads: :func:`decide_threads` / :func:`choose_threads`.  ``OMP_WAIT_POLICY`` is read by the
OpenMP runtime when it is loaded (libgomp: when ``torch`` is imported), so it can only be chosen
for this process from outside it (the launch environment); ``torch.set_num_threads`` works at any
time.  :func:`apply_threads` sets the threads and says whether the wait policy is in effect.
"""
from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

CPUINFO = Path('/proc/cpuinfo')
SYSFS_CPU = Path('/sys/devices/system/cpu')
CGROUP_CPU_MAX = Path('/sys/fs/cgroup/cpu.max')

# the flags of each torch.backends.cpu.get_cpu_capability() level (all it tells where /proc/cpuinfo is missing)
_CAPABILITY_FLAGS = {
    'AVX512': ('avx', 'avx2', 'fma', 'avx512f', 'avx512bw', 'avx512vl', 'avx512dq'),
    'AVX2': ('avx', 'avx2', 'fma'),
}


# ---------------------------------------------------------------------------------------------- CPU flags
@dataclass(frozen=True)
class CpuInfo:
    """The CPU as far as the precision choice cares: model name, feature flags, where they came from."""
    model: str
    flags: frozenset
    source: str          # "/proc/cpuinfo" or "torch.backends.cpu.get_cpu_capability() = AVX2" ...
    machine: str = ''    # platform.machine(): x86_64, aarch64, arm64 ...

    def describe(self) -> str:
        """One line for logs and benchmark output: model, class, the flags that matter, source."""
        relevant = sorted(f for f in self.flags if f.startswith(('avx512_bf16', 'avx512_vnni', 'amx', 'avx2',
                                                                  'avx512f', 'bf16', 'i8mm', 'asimd')))
        return (f"CPU {self.model or '?'} ({self.machine or '?'}), class {cpu_class(self.flags)}; flags "
                f"{' '.join(relevant) or '(none of interest)'} [from {self.source}]")


def parse_cpuinfo(text: str) -> tuple[str, frozenset]:
    """``/proc/cpuinfo`` text -> (model name, flags of the first processor).  x86 lists ``flags``,
    ARM ``Features`` (and ``CPU implementer`` instead of a model name)."""
    model, flags = '', None
    for line in text.splitlines():
        key, _, value = line.partition(':')
        key = key.strip().lower()
        if not model and key in ('model name', 'cpu model', 'hardware'):
            model = value.strip()
        elif flags is None and key in ('flags', 'features'):
            flags = frozenset(value.split())
        if model and flags is not None:
            break
    return model, flags if flags is not None else frozenset()


def flags_from_capability(capability: str) -> frozenset:
    """The flags implied by torch's CPU capability string (``AVX512``, ``AVX2``, ``DEFAULT``, ``NO AVX`` ...)."""
    return frozenset(_CAPABILITY_FLAGS.get(capability.strip().upper(), ()))


def read_cpu_info(cpuinfo: str | os.PathLike = CPUINFO) -> CpuInfo:
    """This machine's CPU: flags from ``/proc/cpuinfo``, else (no such file: macOS, Windows; or no
    flag line) from ``torch.backends.cpu.get_cpu_capability()``."""
    machine = platform.machine()
    try:
        model, flags = parse_cpuinfo(Path(cpuinfo).read_text(errors='replace'))
    except OSError:
        model, flags = '', frozenset()
    if flags:
        return CpuInfo(model or platform.processor(), flags, str(cpuinfo), machine)
    try:
        import torch
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:   # noqa: BLE001 - an old torch or a stripped build: no flags at all
        capability = 'unknown'
    return CpuInfo(model or platform.processor(), flags_from_capability(capability),
                   f'torch.backends.cpu.get_cpu_capability() = {capability}', machine)


def cpu_class(flags: Iterable[str]) -> str:
    """The CPU's class for the precision table (``acceleration.MEASURED_OPTIONS``), best first:

    ``amx`` (AMX tiles with bf16: Xeon Sapphire Rapids and later), ``avx512_bf16`` (AVX-512 BF16
    without AMX: AMD Zen 4/5, Xeon Cooper Lake), ``vnni`` (int8 dot products, no bf16: AVX-512 VNNI
    Cascade/Ice Lake, AVX-VNNI Alder Lake), ``avx512``, ``avx2`` (AMD Zen 2/3, Haswell..Skylake
    client), ``arm_bf16`` (ARMv8.6 BF16: Graviton 3, Neoverse V1/V2), ``arm`` (NEON), ``generic``."""
    flags = {f.lower() for f in flags}
    if {'amx_bf16', 'amx_tile'} <= flags:
        return 'amx'
    if 'avx512_bf16' in flags:
        return 'avx512_bf16'
    if flags & {'avx512_vnni', 'avx_vnni'}:
        return 'vnni'
    if 'avx512f' in flags:
        return 'avx512'
    if 'avx2' in flags:
        return 'avx2'
    if 'bf16' in flags:
        return 'arm_bf16'
    if flags & {'asimd', 'neon'}:
        return 'arm'
    return 'generic'


# ---------------------------------------------------------------------------------------------- cores
def count_physical_cores(cpus: Iterable[int], topology: Mapping[int, tuple]) -> int | None:
    """Physical cores among ``cpus`` (logical CPU ids), given ``topology[cpu] = (package id, core id)``;
    None when the topology of one of them is unknown."""
    cores = set()
    for cpu in cpus:
        if cpu not in topology:
            return None
        cores.add(tuple(topology[cpu]))
    return len(cores) or None


def read_topology(cpus: Iterable[int], sysfs: str | os.PathLike = SYSFS_CPU) -> dict:
    """``{cpu: (physical_package_id, core_id)}`` from sysfs for the CPUs it describes."""
    topology = {}
    for cpu in cpus:
        folder = Path(sysfs) / f'cpu{cpu}' / 'topology'
        try:
            topology[cpu] = (int((folder / 'physical_package_id').read_text()), int((folder / 'core_id').read_text()))
        except (OSError, ValueError):
            continue
    return topology


def parse_cgroup_cpu_max(text: str) -> float | None:
    """cgroup v2 ``cpu.max`` (``"max 100000"`` or ``"150000 100000"``) -> CPUs' worth of time, None = no limit."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == 'max':
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


@dataclass(frozen=True)
class Cores:
    """The CPUs this process may use."""
    logical: int                 # os.sched_getaffinity (or os.cpu_count)
    physical: int | None         # physical cores among them (None: topology unknown)
    quota: float | None = None   # cgroup CPU limit in CPUs (None: none)

    @property
    def usable(self) -> int:
        """Cores to plan threads for: the smallest of affinity, physical cores and quota (>= 1)."""
        counts = [self.logical] + [c for c in (self.physical,) if c] + (
            [max(1, math.floor(self.quota))] if self.quota else [])
        return max(1, min(counts))

    def describe(self) -> str:
        text = f"{self.logical} CPU(s) in this process's affinity"
        if self.physical and self.physical != self.logical:
            text += f' on {self.physical} physical core(s)'
        if self.quota:
            text += f', cgroup quota {self.quota:g} CPU(s)'
        return text


def read_cores(cgroup_cpu_max: str | os.PathLike = CGROUP_CPU_MAX, sysfs: str | os.PathLike = SYSFS_CPU) -> Cores:
    """The CPUs available to this process (affinity, physical cores, cgroup quota)."""
    if hasattr(os, 'sched_getaffinity'):
        cpus = sorted(os.sched_getaffinity(0))
    else:   # macOS, Windows: no affinity call
        cpus = list(range(os.cpu_count() or 1))
    physical = count_physical_cores(cpus, read_topology(cpus, sysfs))
    try:
        quota = parse_cgroup_cpu_max(Path(cgroup_cpu_max).read_text())
    except OSError:
        quota = None
    return Cores(logical=len(cpus), physical=physical, quota=quota)


# ---------------------------------------------------------------------------------------------- threads
# on this many usable cores or fewer, other processes (camera driver, DDS, the ROS executor) are
# assumed to need them too: one torch thread (measured best in every node run on the 2-core machine)
SMALL_MACHINE_CORES = 2
# cap of the automatic choice: batch-1 inference parallelises over one image pair; not measured
# beyond 2 cores here, the cap keeps a many-core server from being taken over by one tracker
MAX_AUTO_THREADS = 8
PASSIVE = 'PASSIVE'


@dataclass(frozen=True)
class ThreadChoice:
    """``torch_threads`` resolved: the thread count, the OpenMP wait policy wanted (None: leave the
    runtime's default), and why (for the node's log)."""
    threads: int
    wait_policy: str | None
    reason: str

    def __iter__(self):   # ``threads, reason = choose_threads(0)``
        return iter((self.threads, self.reason))

    def log_line(self) -> str:
        return f'torch_threads: {self.threads} ({self.reason})'


def decide_threads(requested: int, cores: Cores) -> ThreadChoice:
    """Pure: the torch thread count for ``requested`` (0 = choose) on ``cores``.

    * ``requested > 0``: that many; the reason says when it exceeds the usable cores.
    * 0 on <= 2 usable cores: 1 thread, wait policy PASSIVE.  Other processes share the cores; a
      second OpenMP thread that spins while waiting for work collapses under load (README: ckd_tiny
      forward 1168 ms instead of 22.9 ms with 2 threads at load ~4), and 1 thread was fastest in
      every node run (the camera and the executor need the other core).
    * 0 on more cores: one core left for the executor, image conversion and DDS, at most
      :data:`MAX_AUTO_THREADS`; wait policy PASSIVE (threads sleep instead of spinning between
      parallel regions: a little wake-up latency, no stolen cycles; not measured beyond 2 cores).
    """
    if requested < 0:
        raise ValueError(f'torch_threads must be >= 0 (0 = choose), got {requested}')
    usable = cores.usable
    if requested > 0:
        reason = f'requested; {cores.describe()}'
        if requested > usable:
            reason += f': {requested} threads on {usable} usable core(s) oversubscribe them (slower under load)'
        return ThreadChoice(requested, None, reason)
    if usable <= SMALL_MACHINE_CORES:
        return ThreadChoice(1, PASSIVE, f'auto: {cores.describe()}, {usable} usable: other processes share so few '
                                        'cores, and a second OpenMP thread collapses when they are busy; '
                                        '1 thread was fastest in every node run on 2 cores')
    threads = min(usable - 1, MAX_AUTO_THREADS)
    capped = ' (capped)' if threads < usable - 1 else ''
    return ThreadChoice(threads, PASSIVE, f'auto: {cores.describe()}, {usable} usable: {threads}{capped}, '
                                          'one core left for the executor, image conversion and DDS')


def choose_threads(requested: int) -> ThreadChoice:
    """:func:`decide_threads` for this machine's cores (``threads, reason = choose_threads(0)`` works)."""
    return decide_threads(requested, read_cores())


def wait_policy_note(choice: ThreadChoice, environ: Mapping[str, str] | None = None) -> str | None:
    """None when the wanted OpenMP wait policy is in effect (or none is wanted), else what to do.

    OpenMP reads ``OMP_WAIT_POLICY`` when its runtime is loaded (libgomp: at ``import torch``), so
    setting it in a running process changes nothing for that process: it must be in the launch
    environment (launch file ``SetEnvironmentVariable('OMP_WAIT_POLICY', 'PASSIVE')``, or
    ``OMP_WAIT_POLICY=PASSIVE ros2 run ...``).  With 1 thread there is no OpenMP team to wait, so
    the policy does not matter then.  (libgomp's ``OMP_DISPLAY_ENV`` prints ``PASSIVE`` when the variable
    is unset, but then spins ``GOMP_SPINCOUNT`` times before sleeping; only an explicit PASSIVE sleeps at once.)"""
    environ = os.environ if environ is None else environ
    if choice.wait_policy is None or choice.threads <= 1:
        return None
    current = environ.get('OMP_WAIT_POLICY', '')
    if current.strip().upper() == choice.wait_policy:
        return None
    return (f"OMP_WAIT_POLICY is {current or 'unset'}: idle OpenMP threads of the {choice.threads} spin before "
            f"sleeping (libgomp: up to GOMP_SPINCOUNT iterations); set OMP_WAIT_POLICY={choice.wait_policy} in the "
            "launch environment (it is read when torch is imported, setting it later has no effect)")


def apply_threads(choice: ThreadChoice) -> str | None:
    """``torch.set_num_threads(choice.threads)``; returns :func:`wait_policy_note` (None = all in effect)."""
    import torch
    torch.set_num_threads(choice.threads)
    return wait_policy_note(choice)
