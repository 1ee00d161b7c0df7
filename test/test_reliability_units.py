"""The pieces behind the node's fault handling on their own: why a time jump must restart pairing, the
freshness watch (stalls, frozen pixels, zero and backward stamps), lasting conditions on the issue board
and one summary for several simultaneous problems."""
import pytest

from ckd_ros.core.pairing import ApproximateTimePairer

MS = 1_000_000


def test_a_backward_time_jump_starves_message_filters_pairing_until_the_queues_are_cleared():
    """message_filters' policy (which the core pairer reproduces) evicts the *oldest stamp* from a full
    queue: after a bag loops, every new frame is older than the queued ones and is evicted at once."""
    pairer = ApproximateTimePairer(queue_size=4, slop_s=0.02)

    def feed(start_ns, count):
        made = 0
        for k in range(count):        # RGB at 30 Hz, thermal at 15 Hz: unpaired RGB frames fill the queue
            stamp = start_ns + k * 33 * MS
            made += pairer.add(0, stamp, ('rgb', stamp)) is not None
            if k % 2 == 0:
                made += pairer.add(1, stamp + MS, ('thermal', stamp)) is not None
        return made

    assert feed(100_000 * MS, 20) == 10
    assert pairer.queued()[0] == 4
    assert feed(90_000 * MS, 40) == 0, 'no pair at all after the jump'
    pairer.clear()                      # what the node does when it sees time go backwards
    assert feed(80_000 * MS, 20) == 10


def test_stream_watch_stall_frozen_pixels_and_stamps():
    from ckd_ros.core.health import FRESH, JUMPED_BACK, STALE_STAMP, ZERO_STAMP, StreamWatch

    now = [0.0]
    watch = StreamWatch(timeout_s=0.5, jump_back_s=1.0, clock=lambda: now[0])
    assert watch.silent_for() == 0.0 and not watch.stalled()
    now[0] = 0.6
    assert watch.stalled(), 'nothing since the (re)start counts as a stall too'
    assert watch.observe(1000 * MS, data_crc=1) == FRESH and not watch.stalled()
    now[0] = 0.7
    assert watch.observe(1000 * MS, data_crc=1) == STALE_STAMP      # a frozen driver repeats its frame
    assert watch.observe(999 * MS, data_crc=2) == STALE_STAMP       # a late frame
    assert watch.observe(0, data_crc=9) == ZERO_STAMP
    now[0] = 1.15
    assert watch.stalled() and watch.silent_for() == pytest.approx(0.55)
    assert watch.observe(1033 * MS, data_crc=3) == FRESH and not watch.stalled()
    # New stamps, same pixels: identical for as long as the same content keeps arriving.
    for k in range(1, 8):
        now[0] = 1.15 + 0.1 * k
        watch.observe((1033 + 33 * k) * MS, data_crc=3)
    assert watch.identical_run == 7 and watch.identical_for() == pytest.approx(0.7)
    watch.observe(1300 * MS, data_crc=4)
    assert watch.identical_for() == 0.0
    # A bag loop: more than jump_back_s back; the watch starts over from the new stamp.
    assert watch.observe(200 * MS, data_crc=5) == JUMPED_BACK       # 1.1 s before the newest
    assert watch.observe(1400 * MS, data_crc=6) == FRESH and watch.jumps_back == 1
    assert (watch.frames, watch.fresh_frames, watch.stale_frames, watch.zero_stamps) == (15, 12, 2, 1)


def test_conditions_last_until_cleared_and_several_problems_share_one_summary():
    from ckd_ros.core.health import ERROR, WARN, IssueBoard, summarize_issues

    now = [0.0]
    board = IssueBoard(hold_s=5.0, clock=lambda: now[0])
    board.set_condition('thermal stalled', WARN, 'thermal stalled', since=0.0)
    now[0] = 1.0
    board.report('thermal nonfinite', WARN, '3 NaN pixels')
    assert board.current() == [(WARN, '3 NaN pixels'), (WARN, 'thermal stalled')]
    assert board.last_error == '3 NaN pixels', 'a condition never becomes last_error'
    now[0] = 2.0
    board.report('rgb input', ERROR, 'bad step')
    assert summarize_issues(board.current()) == (ERROR, 'bad step; 3 NaN pixels; thermal stalled')
    now[0] = 60.0
    assert board.current() == [(WARN, 'thermal stalled')], 'events expire, conditions stay'
    board.clear_condition('thermal stalled')
    assert board.current() == [] and board.worst() is None
    many = [(WARN, f'problem {k}') for k in range(5)] + [(WARN, 'problem 0')]
    assert summarize_issues(many) == (WARN, 'problem 0; problem 1; problem 2 (+2 more)')
    assert summarize_issues([]) is None
