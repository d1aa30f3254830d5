"""`egs-agent nic` without a namespace: usage, config errors, exit codes, the human report."""
import json

import pytest

from agent import cli


def test_bad_config_exits_2_naming_file_line_and_key(tmp_path, capsys):
    bad = tmp_path / "agent.toml"
    bad.write_text('[nic]\n\nmode = "sometimes"\n')
    assert cli.main(["nic", "verify", "--config", str(bad)]) == 2
    assert f"{bad}:3: nic.mode: must be one of" in capsys.readouterr().err


def test_an_action_is_required(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["nic"])
    assert e.value.code == 2


def test_missing_interface_verify_exits_1_and_says_gone(capsys, tmp_path):
    empty = tmp_path / "agent.toml"
    empty.write_text("")
    rc = cli.main(["nic", "verify", "--interface", "egsnone0", "--instance-type", "gn4.8xlarge",
                   "--config", str(empty)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "instance type: gn4.8xlarge (command line): gn4.8xlarge needs 3 queues (table)" in out
    assert "egsnone0: -> gone: egsnone0: no such interface (ENODEV)" in out


def test_json_report_has_the_requirement_and_one_row_per_interface(capsys, tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[nic]\ninstance_type = "ecs.gn5-c8g1.4xlarge"\ninterfaces = ["egsnone0", "egsnone1"]\n')
    rc = cli.main(["nic", "plan", "--json", "--config", str(cfg)])
    report = json.loads(capsys.readouterr().out)
    assert rc == 1  # plan cannot read either interface
    assert report["requirement"]["state"] == "not-required" and report["requirement"]["source"] == "config"
    assert [r["interface"] for r in report["interfaces"]] == ["egsnone0", "egsnone1"]
