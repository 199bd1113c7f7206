"""common/checkpoints.py: which flag an error about ``auto`` names."""

import pytest
from conftest import assert_one_line_error, load_script

from common.checkpoints import find_checkpoint
from common.run import UserError


def test_sample_with_checkpoint_auto_and_no_run_names_checkpoint(in_tmp, capsys):
    line = assert_one_line_error(
        load_script("dcgan"), ["--sample", "4", "--checkpoint", "auto"], "--checkpoint auto", capsys
    )
    assert "--resume" not in line


def test_resume_auto_with_no_run_names_resume(in_tmp):
    with pytest.raises(UserError, match="--resume auto found no checkpoint"):
        find_checkpoint("dcgan", "auto", None)
    with pytest.raises(UserError, match="--checkpoint auto found no checkpoint"):
        find_checkpoint("dcgan", "auto")
