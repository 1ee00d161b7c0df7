"""The ckd-train command line: help, argument errors and actionable configuration errors."""
import pytest

from ckd_train.cli import build_parser, main


def test_help_lists_the_documented_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--output", "--resume", "--epochs", "--device", "--data-root", "--batchnorm"):
        assert option in text


def test_data_root_must_be_name_equals_path(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ckd_tiny", "--data-root", "/data/lasher"])
    assert "NAME=PATH" in capsys.readouterr().err


def test_missing_dataset_root_is_reported(capsys, tmp_path):
    # ckd_tiny trains on LasHeR_trainingSet by default: without its folder the run stops before any work
    assert main(["ckd_tiny", "--output", str(tmp_path), "--device", "cpu", "--no-progress"]) == 2
    assert "--data-root LasHeR_trainingSet=PATH" in capsys.readouterr().err


def test_unknown_config_is_reported(capsys, tmp_path):
    assert main(["no_such_config", "--output", str(tmp_path)]) == 2
    assert "unknown configuration name" in capsys.readouterr().err


def test_an_earlier_run_is_not_overwritten_without_being_asked(capsys, tmp_path):
    earlier = tmp_path / "checkpoints" / "train" / "ckd" / "ckd_tiny_smoke" / "OSTrack_CKD_ep0001.pth.tar"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier run's checkpoint")
    assert main(["ckd_tiny_smoke", "--output", str(tmp_path), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "already holds 1 checkpoint" in err and "--resume" in err and "--overwrite" in err
    assert earlier.read_bytes() == b"an earlier run's checkpoint"
