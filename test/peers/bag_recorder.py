"""A recorder to kill mid-recording: writes RGB + thermal pairs and ground truth into a new bag with
:class:`ckd_ros.core.bagio.BagWriter` until killed, printing ``{"event": "wrote", "pairs": k}`` after every
pair. Frame ``k`` is :func:`frame_pair` ``(k)``, so a test can check what it reads back.

    bag_recorder.py BAG STORAGE [WIDTH HEIGHT]
"""
import json
import sys

import numpy as np

START_NS = 1_000_000_000
PERIOD_NS = 33_000_000


def frame_pair(k: int, width: int = 160, height: int = 120):
    rng = np.random.default_rng(k)
    return (rng.integers(0, 255, (height, width, 3), dtype=np.uint8),
            rng.integers(0, 60000, (height, width), dtype=np.uint16))


def main():
    from ckd_ros.core import bagio
    path, storage = sys.argv[1], sys.argv[2]
    width, height = (int(v) for v in sys.argv[3:5]) if len(sys.argv) > 4 else (160, 120)
    with bagio.BagWriter(path, storage) as writer:
        k = 0
        while True:
            stamp = START_NS + k * PERIOD_NS
            writer.write_target('/ground_truth', stamp, [1.0 + k, 2.0, 30.0, 20.0])
            writer.write_pair(stamp, *frame_pair(k, width, height))
            k += 1
            print(json.dumps({'event': 'wrote', 'pairs': k}), flush=True)


if __name__ == '__main__':
    main()
