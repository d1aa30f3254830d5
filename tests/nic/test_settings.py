"""The [nic] config section: defaults and errors that name the file, line and key."""
import pytest

from agent import config


def test_defaults_verify_mode_and_no_metadata_lookup():
    nic = config.parse("").nic
    assert nic.mode == "verify" and nic.metadata_enabled is False and nic.interfaces == []


def test_instance_type_overrides_as_a_subtable():
    cfg = config.parse('[nic]\nmode = "apply"\n[nic.instance_types]\n"ecs.gn6.x" = 4\n')
    assert cfg.nic.mode == "apply" and cfg.nic.instance_types == {"ecs.gn6.x": 4}


@pytest.mark.parametrize("text, line, key, words", [
    ('[nic]\nmode = "on"\n', 2, "nic.mode", "must be one of"),
    ('[nic]\n\ninterfaces = ["a/b"]\n', 3, "nic.interfaces", "not a valid interface name"),
    ('[nic]\ninterfaces = ["abcdefghijklmnop"]\n', 2, "nic.interfaces", "not a valid interface name"),
    ('[nic]\nmetadata_url = "100.100.100.200/x"\n', 2, "nic.metadata_url", "http://"),
    ('[nic]\ncheck_interval = 0\n', 2, "nic.check_interval", ">= 1"),
    # The table is located at its header; the message names the entry.
    # A table is located at its header; the message names the entry.
    ('[nic.instance_types]\n"gn6" = "four"\n', 1, "nic.instance_types", "must be an integer"),
    ('[nic.instance_types]\n"gn6" = 1000\n', 1, "nic.instance_types", "0..256"),
    ('[nic]\nqueues = 4\n', 2, "nic.queues", "unknown key"),
])
def test_bad_values_name_file_line_and_key(text, line, key, words):
    with pytest.raises(config.ConfigError) as e:
        config.parse(text, "agent.toml")
    assert (e.value.file, e.value.line, e.value.key) == ("agent.toml", line, key)
    assert words in e.value.message
    if "instance_types" in key:
        assert "gn6" in e.value.message
