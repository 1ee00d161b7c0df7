"""A process to SIGKILL at a known point of a file write: runs ``ckd-eval`` or a small training with
``os.fsync`` hanging at its N-th call (the moment an atomic writer has written and flushed its temporary
file and not yet moved it into place). Prints ``{"event": "hang", "path": ...}`` (the file being synced)
and sleeps until killed.

    fsync_hang.py N eval EVAL_ARGS...
    fsync_hang.py N train SPEC_JSON OUTPUT EPOCHS [RESUME]

SPEC_JSON holds ``overrides`` (for ``load_config``), ``base`` (config name), ``synthetic`` (keyword
arguments of ``SyntheticSettings``) and ``name``, so that the test decides the training configuration.
"""
import json
import os
import sys
import time

_real_fsync = os.fsync
_hang_at = int(sys.argv[1])
_calls = 0


def _fsync(fd):
    global _calls
    _calls += 1
    if _calls == _hang_at:
        print(json.dumps({'event': 'hang', 'path': os.readlink(f'/proc/self/fd/{fd}'), 'call': _calls}), flush=True)
        time.sleep(600)
    return _real_fsync(fd)


def main():
    os.fsync = _fsync
    mode, args = sys.argv[2], sys.argv[3:]
    if mode == 'eval':
        from ckd_ros.cli import eval as eval_cli
        return eval_cli.main(args)
    import torch
    torch.set_num_threads(1)
    from ckd_ros.core.config import load_config
    from ckd_train.settings import SyntheticSettings, TrainConfig
    from ckd_train.trainer import TrainOptions, train
    with open(args[0]) as handle:
        spec = json.load(handle)
    synthetic = {k: tuple(v) if isinstance(v, list) else v for k, v in spec['synthetic'].items()}
    config = TrainConfig(load_config(spec['base'], spec['overrides']), SyntheticSettings(**synthetic),
                         name=spec['name'])
    train(TrainOptions(config=config, output_dir=args[1], device='cpu', progress=False, epochs=int(args[2]),
                       resume=args[3] if len(args) > 3 else None))
    print(json.dumps({'event': 'done'}), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
