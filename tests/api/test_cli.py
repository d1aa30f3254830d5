"""The daemon's verbs refuse a bad duration option before they try the socket."""
from __future__ import annotations

import pytest

from agent.cli import main


@pytest.mark.parametrize("argv, option", [
    (["query", "gpu_power_watts", "--window", "5x"], "--window"),
    (["watch", "--interval", "0s"], "--interval"),
])
def test_a_bad_duration_option_exits_2_naming_it(capsys, tmp_path, argv, option):
    assert main(["--socket", str(tmp_path / "none.sock"), *argv]) == 2
    assert capsys.readouterr().err.startswith(f"egs-agent: {option}: not a duration: ")
