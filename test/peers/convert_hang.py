"""A bag conversion to SIGKILL mid-write: runs ``ckd-bag convert`` with
:meth:`ckd_ros.core.bagio.BagWriter.write_pair` hanging at its N-th call (N - 1 pairs of the current
bag written, the bag still open). Prints ``{"event": "hang", "bag": ..., "pairs": ...}`` (the bag
being written and its pairs so far) and sleeps until killed.

    convert_hang.py N CONVERT_ARGS...
"""
import json
import sys
import time


def main():
    from ckd_ros.cli import bag as bag_cli
    from ckd_ros.core import bagio
    hang_at = int(sys.argv[1])
    calls = 0
    real_write_pair = bagio.BagWriter.write_pair

    def write_pair(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == hang_at:
            print(json.dumps({'event': 'hang', 'bag': str(self.path), 'pairs': self.counts.get('/rgb/image', 0)}),
                  flush=True)
            time.sleep(600)
        return real_write_pair(self, *args, **kwargs)

    bagio.BagWriter.write_pair = write_pair
    return bag_cli.main(['convert', *sys.argv[2:]])


if __name__ == '__main__':
    sys.exit(main())
