"""Offline CKD training (stage 1: coupled knowledge distillation; stage 2: MCE head fine-tuning).

Imports ``ckd_ros.core``; ``ckd_ros`` never imports this package. Entry point:
``ckd-train CONFIG`` / ``python -m ckd_train CONFIG`` (:func:`ckd_train.cli.main`).
Submodules: ``losses``, ``data``, ``model``, ``optim``, ``trainer``, ``checkpoints``, ``init``,
``settings``, ``evaluate`` (held-out synthetic tracking), ``export`` (strip for shipping).
"""
