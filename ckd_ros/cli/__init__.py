"""The command-line tools of ckd_ros, above both layers: ``ckd-eval`` (:mod:`ckd_ros.cli.eval`) and
``ckd-bag`` (:mod:`ckd_ros.cli.bag`).

They import the ROS-free core (:mod:`ckd_ros.core`), and ``ckd-bag play`` the ROS layer
(:mod:`ckd_ros.ros.bag_play`, when it runs); neither layer imports this package.
"""
from __future__ import annotations

import os
import sys


def run_command(args, prog: str, errors: tuple[type[BaseException], ...]) -> int:
    """``args.func(args)`` of a parsed command line, its exit status as the tools document it: a usage
    error raised as ``SystemExit(message)`` or one of ``errors`` -> ``<prog>: error: ...`` on stderr and 2;
    output piped into a reader that stopped (``| head``) -> 0."""
    try:
        return args.func(args)
    except BrokenPipeError:      # output piped into a reader that stopped (| head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SystemExit as exc:
        if isinstance(exc.code, str):    # a usage error with its message: exit status 2 as documented
            print(exc.code, file=sys.stderr)
            return 2
        raise
    except errors as exc:
        # str() of a KeyError is its repr (quoted); the message is its argument
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f'{prog}: error: {message}', file=sys.stderr)
        return 2
