"""``precision: auto`` and ``torch_threads: 0``: the pure choices with made-up machines (CPU flag sets,
CUDA capabilities, core counts), the readers of this machine, and init_tracker(precision='auto')."""
from __future__ import annotations

import pytest
import torch

from ckd_ros.core import cpu_info
from ckd_ros.core.acceleration import (BACKENDS, MEASURED_OPTIONS, PRECISIONS, SR_BOUND_POINTS, Acceleration,
                                       MeasuredOption, PrecisionChoice, auto_precision, choose_precision, cuda_class)
from ckd_ros.core.api import init_tracker, select_acceleration
from ckd_ros.core.cpu_info import (Cores, ThreadChoice, count_physical_cores, cpu_class, decide_threads,
                                   flags_from_capability, parse_cgroup_cpu_max, parse_cpuinfo, read_cpu_info,
                                   wait_policy_note)

_BASE = 'fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma bmi1 bmi2 avx2'
# Xeon Sapphire Rapids (AVX-512, AVX512_BF16, AMX-BF16, AMX-INT8)
XEON_AMX = set((_BASE + ' avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile '
                        'amx_int8').split())
EPYC_ZEN3 = set((_BASE + ' sha_ni clzero').split())                       # AVX2 only
EPYC_ZEN4 = set((_BASE + ' avx512f avx512bw avx512vl avx512_vnni avx512_bf16').split())
ARM_NO_FLAGS: set = set()
GRAVITON3 = set('fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp bf16 i8mm sve'.split())


# ------------------------------------------------------------------------------------------ CPU classes
@pytest.mark.parametrize('flags, expected', [
    (XEON_AMX, 'amx'), (EPYC_ZEN4, 'avx512_bf16'), (EPYC_ZEN3, 'avx2'), (ARM_NO_FLAGS, 'generic'),
    (GRAVITON3, 'arm_bf16'), ({'asimd'}, 'arm'), ({'avx2', 'avx_vnni'}, 'vnni'), ({'avx2', 'avx512f'}, 'avx512'),
    ({'amx_tile'} | EPYC_ZEN4, 'avx512_bf16'),   # AMX tiles without AMX-BF16 are not the AMX class
])
def test_cpu_class(flags, expected):
    assert cpu_class(flags) == expected


def test_parse_cpuinfo_x86_and_arm():
    x86 = 'processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t: x\n'
    assert parse_cpuinfo(x86) == ('AMD EPYC 9B14', frozenset({'fpu', 'avx2', 'avx512_bf16'}))
    arm = 'processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd bf16 i8mm\nCPU implementer\t: 0x41\n'
    assert parse_cpuinfo(arm) == ('', frozenset({'fp', 'asimd', 'bf16', 'i8mm'}))
    assert parse_cpuinfo('') == ('', frozenset())


def test_flags_from_torch_capability():
    assert cpu_class(flags_from_capability('AVX512')) == 'avx512'
    assert cpu_class(flags_from_capability('AVX2')) == 'avx2'
    assert flags_from_capability('DEFAULT') == frozenset() and flags_from_capability('NO AVX') == frozenset()


def test_read_cpu_info_falls_back_to_torch_capability(tmp_path):
    info = read_cpu_info(tmp_path / 'no_cpuinfo')
    capability = torch.backends.cpu.get_cpu_capability()
    assert info.source == f'torch.backends.cpu.get_cpu_capability() = {capability}'
    assert info.flags == flags_from_capability(capability)
    (tmp_path / 'cpuinfo').write_text('model name\t: Fake CPU\nflags\t: avx2 fma\n')
    info = read_cpu_info(tmp_path / 'cpuinfo')
    assert (info.model, info.flags, cpu_class(info.flags)) == ('Fake CPU', frozenset({'avx2', 'fma'}), 'avx2')
    assert 'class avx2' in info.describe() and 'avx2' in info.describe()


def test_read_cpu_info_on_this_machine():
    info = read_cpu_info()
    assert info.model or info.machine
    assert cpu_class(info.flags) in {'amx', 'avx512_bf16', 'vnni', 'avx512', 'avx2', 'arm_bf16', 'arm', 'generic'}


# ------------------------------------------------------------------------------------------ precision table
def test_measured_options_are_valid_rows():
    seen = set()
    for row in MEASURED_OPTIONS:
        acceleration = Acceleration(row.precision, row.backend)   # valid names and combination
        if row.device == 'cpu':
            acceleration.check_device(torch.device('cpu'))
        assert row.device in ('cpu', 'cuda') and row.speed and row.accuracy
        assert row.speed_ratio is not None or row.device == 'cuda'   # every CPU speed is measured
        key = (row.device, row.hardware, row.precision, row.backend)
        assert key not in seen, key
        seen.add(key)


def test_cuda_class():
    assert [cuda_class(c) for c in ((9, 0), (8, 0), (8, 6), (7, 5), (7, 0), (6, 1), None)] == \
        ['sm80+', 'sm80+', 'sm80+', 'sm70+', 'sm70+', 'older', 'unknown']


def test_amx_xeon_takes_bf16_whose_per_frame_effect_is_within_bound():
    """bf16 is x0.45 (eager) and x0.40 (compile) on the AMX Xeon; its accuracy effect on ckd_tiny, measured
    open loop on the Zen 4's native bf16 products, is hundredths of a point, and its closed-loop change is
    not significantly below -1 point."""
    choice = choose_precision('cpu', XEON_AMX, device_name='Xeon')
    assert (choice.precision, choice.backend, choice.hardware) == ('bf16', 'eager', 'cpu:amx')
    assert 'x0.45' in choice.reason and 'open loop' in choice.reason
    assert choice.log_line().startswith("precision auto: chose bf16/eager because CPU Xeon of class 'amx'")
    free = choose_precision('cpu', XEON_AMX, backend=None)   # backend 'auto' too
    assert (free.precision, free.backend) == ('bf16', 'compile')
    no_compiler = choose_precision('cpu', XEON_AMX, backend=None, unavailable_backends=('compile',))
    assert (no_compiler.precision, no_compiler.backend) == ('bf16', 'eager')


def test_open_loop_figures_decide_the_bound():
    """A closed-loop change alone (a few dozen sequences: +-5 points of luck) neither proves nor refutes
    the bound; with open-loop figures the per-frame effect must be above -1 point with 95 % confidence and
    the closed-loop change must not be significantly below -1 point."""
    def row(closed, closed_ci, opened, opened_ci):
        return MeasuredOption('cpu', 'avx2', 'fp32', 'int8', 0.5, 's', closed, 'a', closed_ci, opened, opened_ci)
    assert row(-2.1, 6.5, -0.01, 0.06).accuracy_within_bound            # luck either way, tiny per-frame effect
    assert not row(-2.1, 6.5, -0.5, 0.6).accuracy_within_bound          # per-frame effect may reach -1.1
    assert not row(-4.0, 2.5, -0.1, 0.1).accuracy_within_bound          # closed loop surely below -1
    assert row(-0.5, None, None, None).accuracy_within_bound            # closed-loop figure alone: > -1
    assert not row(-2.3, None, None, None).accuracy_within_bound
    summary = row(-2.1, 6.5, -0.01, 0.06).accuracy_summary()
    assert summary == '-2.1 +- 6.5 SR points closed loop, -0.01 +- 0.06 open loop'


def test_avx2_epyc_eager_stays_fp32_and_backend_auto_picks_onnxruntime():
    choice = choose_precision('cpu', EPYC_ZEN3)
    assert (choice.precision, choice.backend) == ('fp32', 'eager')
    assert 'bf16/eager x7.70, not faster' in choice.reason
    free = choose_precision('cpu', EPYC_ZEN3, backend=None)
    assert (free.precision, free.backend) == ('fp32', 'onnxruntime')   # exact and x0.66
    assert 'x0.66 of fp32 eager' in free.reason and '+0.0 SR points' in free.reason
    assert 'onnxruntime-int8 -2.3 SR points' in free.reason and 'fp32/compile x1.00, not faster' in free.reason
    without_ort = choose_precision('cpu', EPYC_ZEN3, backend=None,
                                   unavailable_backends=('onnxruntime', 'onnxruntime-int8'))
    assert (without_ort.precision, without_ort.backend) == ('fp32', 'eager')
    assert 'fp32/onnxruntime unavailable here' in without_ort.reason


def test_zen4_takes_onnxruntime_int8_with_backend_auto():
    """Zen 4 (AVX-512 BF16 + VNNI): ONNX Runtime int8 x0.52 of fp32 eager, per-frame effect -0.02 SR point;
    bf16 autocast is within bound too but x0.96 is no speed-up, so backend eager keeps fp32."""
    free = choose_precision('cpu', EPYC_ZEN4, backend=None)
    assert (free.precision, free.backend, free.hardware) == ('fp32', 'onnxruntime-int8', 'cpu:avx512_bf16')
    assert 'x0.52' in free.reason and 'fp32/onnxruntime slower' in free.reason
    without_ort = choose_precision('cpu', EPYC_ZEN4, backend=None,
                                   unavailable_backends=('onnxruntime', 'onnxruntime-int8'))
    assert (without_ort.precision, without_ort.backend) == ('fp32', 'int8')
    eager = choose_precision('cpu', EPYC_ZEN4)           # backend fixed to eager
    assert (eager.precision, eager.backend) == ('fp32', 'eager')
    assert 'bf16/eager x0.96, not faster' in eager.reason


@pytest.mark.parametrize('flags', [ARM_NO_FLAGS, GRAVITON3])
def test_arm_without_measurements_runs_fp32(flags):
    choice = choose_precision('cpu', flags, backend=None)
    assert (choice.precision, choice.backend) == ('fp32', 'eager')
    assert 'no measured option for this hardware' in choice.reason


@pytest.mark.parametrize('capability', [(9, 0), (8, 0), (7, 5), (6, 1), None])
def test_cuda_takes_bf16_on_ampere_and_keeps_fp32_elsewhere(capability):
    """bf16 (Ampere+): its accuracy effect measured on the CPU (same number format as tensor cores) is
    within bound; fp16 (Volta/Turing) has only an earlier closed-loop figure of -2.8: fp32 there."""
    choice = choose_precision('cuda', cuda_capability=capability, device_name='GPU')
    if capability in ((9, 0), (8, 0)):
        assert (choice.precision, choice.backend) == ('bf16', 'eager')
        assert choice.hardware == 'cuda:sm80+' and 'not measured (no GPU was available)' in choice.reason
        assert 'fp16/eager -2.8 SR points' in choice.reason
    else:
        assert (choice.precision, choice.backend) == ('fp32', 'eager')
    if capability == (7, 5):
        assert 'fp16/eager -2.8 SR points' in choice.reason and 'bf16' not in choice.reason
    if capability in ((6, 1), None):
        assert 'no measured option for this hardware' in choice.reason


def test_cuda_rule_with_an_autocast_within_bound():
    """The rule the table feeds: bf16 on Ampere+ and fp16 on Volta/Turing once they are measured within
    bound; the speed of an unmeasured GPU row is said to be unmeasured."""
    table = [MeasuredOption('cuda', 'sm80+', 'bf16', 'eager', None, 'bf16 tensor cores; not measured', -0.5, 't'),
             MeasuredOption('cuda', 'sm80+', 'fp16', 'eager', None, 'fp16 tensor cores; not measured', -0.2, 't'),
             MeasuredOption('cuda', 'sm70+', 'fp16', 'eager', None, 'fp16 tensor cores; not measured', -0.2, 't')]
    ampere = choose_precision('cuda', cuda_capability=(9, 0), table=table)
    assert (ampere.precision, ampere.backend) == ('bf16', 'eager')    # table order among unmeasured speeds
    assert 'bf16 tensor cores; not measured' in ampere.reason
    turing = choose_precision('cuda', cuda_capability=(7, 5), table=table)
    assert (turing.precision, turing.backend) == ('fp16', 'eager')
    assert choose_precision('cuda', cuda_capability=(6, 1), table=table).precision == 'fp32'


def test_other_device_types_run_fp32():
    choice = choose_precision('mps')
    assert (choice.precision, choice.backend) == ('fp32', 'eager')


def _row(precision, backend, speed, sr, hardware='avx2'):
    return MeasuredOption('cpu', hardware, precision, backend, speed, 'test speed', sr, 'test accuracy')


def test_rule_takes_the_fastest_row_within_bound():
    table = [_row('bf16', 'eager', 0.5, -0.5), _row('bf16', 'compile', 0.4, -0.9), _row('fp32', 'int8', 0.3, -1.0),
             _row('fp32', 'onnxruntime', 0.2, None), _row('fp32', 'compile', 0.96, 0.0)]
    choice = choose_precision('cpu', EPYC_ZEN3, backend=None, table=table)
    assert (choice.precision, choice.backend) == ('bf16', 'compile')   # int8 at exactly -1.0 is outside (< 1 point)
    assert 'x0.40' in choice.reason and '-0.9 SR points' in choice.reason
    assert 'fp32/onnxruntime accuracy effect not measured' in choice.reason
    assert 'fp32/compile x0.96, not faster' in choice.reason and 'bf16/eager slower' in choice.reason
    eager = choose_precision('cpu', EPYC_ZEN3, table=table)          # backend fixed to eager
    assert (eager.precision, eager.backend) == ('bf16', 'eager')
    fixed = choose_precision('cpu', EPYC_ZEN3, precision='fp32', backend=None, table=table)
    assert (fixed.precision, fixed.backend) == ('fp32', 'eager')      # int8 out of bound, ORT unmeasured
    other_class = choose_precision('cpu', EPYC_ZEN4, backend=None, table=table)
    assert (other_class.precision, other_class.backend) == ('fp32', 'eager')
    assert SR_BOUND_POINTS == 1.0


def test_precision_choice_dataclass():
    choice = PrecisionChoice('bf16', 'eager', 'because', 'cpu:amx')
    assert choice.acceleration == Acceleration('bf16', 'eager')
    assert choice.log_line() == 'precision auto: chose bf16/eager because because'
    assert PrecisionChoice('fp32', 'int8', 'as requested', automatic=False).log_line() == \
        'precision fp32, backend int8 (as requested)'


# ------------------------------------------------------------------------------------------ api
def test_select_acceleration_on_this_machine():
    info = read_cpu_info()
    expected = choose_precision('cpu', info.flags)
    choice = select_acceleration('auto', 'eager', 'cpu')
    assert choice.automatic and (choice.precision, choice.backend) == (expected.precision, expected.backend)
    assert auto_precision('cpu').hardware == f'cpu:{cpu_class(info.flags)}'
    fixed = select_acceleration('fp32', 'onnxruntime', 'cpu')
    assert not fixed.automatic and (fixed.precision, fixed.backend) == ('fp32', 'onnxruntime')
    assert select_acceleration('fp32', 'auto', 'cpu').precision == 'fp32'


@pytest.mark.parametrize('precision, backend, message', [
    ('fast', 'eager', "or 'auto'"), ('auto', 'bogus', "or 'auto'"), ('bf16', 'int8', 'own number format'),
    ('fp16', 'auto', 'needs a CUDA device'),
])
def test_select_acceleration_refuses_bad_requests(precision, backend, message):
    with pytest.raises(ValueError, match=message):
        select_acceleration(precision, backend, 'cpu')


def test_init_tracker_auto_records_its_choice(caplog):
    with caplog.at_level('INFO', logger='ckd_ros.core.api'):
        tracker = init_tracker('ckd_tiny', checkpoint='recipe', device='cpu', precision='auto')
    choice = tracker.precision_choice
    assert choice.automatic and tracker.acceleration == choice.acceleration
    assert choice.log_line() in caplog.text
    assert init_tracker('ckd_tiny', checkpoint='recipe', device='cpu').precision_choice.automatic is False
    with pytest.raises(ValueError, match="or 'auto'"):
        init_tracker('nope', precision='fastest')   # names before the config


def test_names_are_those_of_acceleration():
    assert 'auto' not in PRECISIONS and 'auto' not in BACKENDS


# ------------------------------------------------------------------------------------------ cores and threads
def test_physical_cores_and_quota():
    smt = {0: (0, 0), 1: (0, 1), 2: (0, 0), 3: (0, 1)}            # 2 cores, 2 threads each
    assert count_physical_cores([0, 1, 2, 3], smt) == 2
    assert count_physical_cores([0, 2], smt) == 1                  # affinity on one core's two siblings
    assert count_physical_cores([0, 5], smt) is None
    assert parse_cgroup_cpu_max('max 100000\n') is None
    assert parse_cgroup_cpu_max('150000 100000') == 1.5
    assert parse_cgroup_cpu_max('garbage') is None
    assert Cores(8, 4).usable == 4 and Cores(8, None).usable == 8 and Cores(8, 4, 1.5).usable == 1
    assert Cores(2, None, 0.5).usable == 1


@pytest.mark.parametrize('cores, threads, policy', [
    (Cores(2, 2), 1, 'PASSIVE'),             # this project's 2-vCPU machine
    (Cores(1, 1), 1, 'PASSIVE'),
    (Cores(4, 2), 1, 'PASSIVE'),             # 2 cores with SMT
    (Cores(16, 8, 2.0), 1, 'PASSIVE'),       # docker --cpus 2
    (Cores(4, 4), 3, 'PASSIVE'),
    (Cores(16, 8), 7, 'PASSIVE'),
    (Cores(128, 64), 8, 'PASSIVE'),          # capped
])
def test_decide_threads_auto(cores, threads, policy):
    choice = decide_threads(0, cores)
    assert (choice.threads, choice.wait_policy) == (threads, policy)
    assert choice.reason.startswith('auto: ')
    if cores.usable <= 2:
        assert '1 thread was fastest' in choice.reason


def test_decide_threads_requested():
    choice = decide_threads(4, Cores(2, 2))
    assert (choice.threads, choice.wait_policy) == (4, None) and 'oversubscribe' in choice.reason
    assert 'oversubscribe' not in decide_threads(2, Cores(2, 2)).reason
    with pytest.raises(ValueError, match='>= 0'):
        decide_threads(-1, Cores(2, 2))
    threads, reason = decide_threads(0, Cores(2, 2))                 # unpacks as (threads, reason)
    assert threads == 1 and reason.startswith('auto')


def test_wait_policy_note():
    assert wait_policy_note(ThreadChoice(1, 'PASSIVE', 'x'), {}) is None        # no team, nothing waits
    assert wait_policy_note(ThreadChoice(4, None, 'x'), {}) is None
    assert wait_policy_note(ThreadChoice(4, 'PASSIVE', 'x'), {'OMP_WAIT_POLICY': 'passive'}) is None
    note = wait_policy_note(ThreadChoice(4, 'PASSIVE', 'x'), {})
    assert 'OMP_WAIT_POLICY=PASSIVE' in note and 'launch environment' in note


def test_choose_threads_on_this_machine():
    choice = cpu_info.choose_threads(0)
    assert 1 <= choice.threads <= cpu_info.MAX_AUTO_THREADS
    assert cpu_info.choose_threads(3).threads == 3
    previous = torch.get_num_threads()
    try:
        cpu_info.apply_threads(ThreadChoice(1, 'PASSIVE', 'test'))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)
