"""Config errors name the file, the line and the key; check-config exits 2 on them; the
generated reference docs/config.md matches the declarations."""
import subprocess
import sys

import pytest

from agent import config
from daemon_helpers import ROOT, cli

CASES = [
    # (file text, line, key, words in the message)
    ("[gpu]\nhz = 100\n\n[host]\nenabled = true\ncolour = 'red'\n", 6, "host.colour", "unknown key"),
    ("[agent]\nlog_level = 'info'\n[gpus]\nhz = 1\n", 3, "gpus", "unknown section"),
    ("[gpu]\n\nhz = 'fast'\n", 3, "gpu.hz", "must be an integer or a number"),
    ("[gpu]\nnvidia = true\nhz = 99999\n", 3, "gpu.hz", "must be <= 5000"),
    ("[gpu]\nhz = 0\n", 2, "gpu.hz", "must be >= 1"),
    ("[agent]\n# comment\nlog_level = 'loud'\n", 3, "agent.log_level", "must be one of"),
    ("[windows]\nsizes = ['10s', 'soon']\n", 2, "windows.sizes", "duration"),
    ("[host]\nnics = ['eth0', 3]\n", 2, "host.nics", "item 1"),
    ("[api]\nsocket = ''\n", 2, "api.socket", "must not be empty"),
    ("[gpu]\nenabled = yes\n", 2, "gpu.enabled", "not valid TOML"),
    ("[gpu]\nnvidia = true\n# a comment\n[host\n", 4, None, "not valid TOML"),
    ("[agent]\nstate_dir = 5\n", 2, "agent.state_dir", "must be a string"),
    ("gpu = 3\n", 1, "gpu", "must be a table"),
]


@pytest.mark.parametrize("text,line,key,words", CASES, ids=[c[3] for c in CASES])
def test_each_config_error_names_file_line_and_key(tmp_path, text, line, key, words):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as err:
        config.load(path, env={})
    e = err.value
    assert (e.file, e.line, e.key) == (str(path), line, key)
    assert words in e.message
    prefix = f"{path}:{line}: " + (f"{key}: " if key else "")
    assert str(e).startswith(prefix)


def test_check_config_exits_2_with_file_line_key_and_0_on_a_good_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[gpu]\nhz = 'fast'\n")
    result = cli("check-config", str(bad))
    assert result.returncode == 2
    assert f"{bad}:2: gpu.hz: must be an integer or a number" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    good = tmp_path / "good.toml"
    good.write_text("[gpu]\nhz = 250\n[windows]\nsizes = ['10s', '1m']\n")
    result = cli("check-config", str(good))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_run_with_a_bad_config_exits_2_before_binding_anything(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[api]\nsocket = '{tmp_path}/a.sock'\nsocket_mode = 'rw'\n")
    result = cli("run", "--config", str(bad))
    assert result.returncode == 2
    assert f"{bad}:3: api.socket_mode" in result.stderr
    assert not (tmp_path / "a.sock").exists()


def test_missing_explicit_file_is_an_error_but_no_default_file_means_defaults(tmp_path):
    with pytest.raises(config.ConfigError, match="file not found"):
        config.load(tmp_path / "nope.toml", env={})
    original = config.DEFAULT_PATH
    try:
        config.DEFAULT_PATH = str(tmp_path / "absent.toml")
        cfg = config.load(None, env={})
    finally:
        config.DEFAULT_PATH = original
    assert cfg.gpu.hz == 10.0 and cfg.gpu.slow_hz == 1.0 and cfg.api.socket == "/run/egs-agent/agent.sock"


def test_environment_overrides_the_file_for_libraries_and_socket(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text("[gpu]\nnvml_library = '/a/libnvidia-ml.so.1'\n[api]\nsocket = '/a.sock'\n")
    cfg = config.load(path, env={"EGS_NVML_LIBRARY": "/b/lib.so", "EGS_SOCKET": "/b.sock",
                                 "EGS_AMDSMI_LIBRARY": "/c/libamd_smi.so"})
    assert (cfg.gpu.nvml_library, cfg.gpu.amdsmi_library, cfg.api.socket) == ("/b/lib.so", "/c/libamd_smi.so", "/b.sock")


@pytest.mark.parametrize("value, seconds", [
    ("250ms", 0.25), ("30s", 30.0), (" 5 m ", 300.0), ("1h", 3600.0), ("90", 90.0), ("1.5", 1.5),
    (90, 90.0), (0.25, 0.25),  # keys that also take a number of seconds
])
def test_parse_duration_reads_strings_and_numbers_of_seconds(value, seconds):
    assert config.parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["0", "0s", "-1s", "1x", "", "30d", 0, -5, float("inf"), float("nan"), True])
def test_parse_duration_refuses_what_is_not_a_positive_finite_duration(value):
    assert config.parse_duration(value, strict=False) is None
    with pytest.raises(ValueError, match="not a duration"):
        config.parse_duration(value)


def test_parse_duration_takes_days_only_where_a_key_allows_them():
    assert config.parse_duration("30d", days=True) == 30 * 86400.0


def test_docs_config_md_is_generated_from_the_declarations():
    fresh = subprocess.run([sys.executable, "-m", "agent.config", "--markdown"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    committed = (ROOT / "docs" / "config.md").read_text()
    assert committed == fresh, "docs/config.md is stale: run `python -m agent.config --markdown > docs/config.md`"


def test_the_dev_and_demo_configs_are_valid():
    for name in ("agent.toml", "demo.toml"):
        config.load(ROOT / "dev" / name, env={})


def test_each_section_has_a_settings_type_generated_from_its_keys():
    import dataclasses

    cfg = config.parse("[gpu]\nhz = 20\n", "t.toml")
    assert type(cfg.gpu).__name__ == "GpuSettings" and cfg.gpu.hz == 20.0
    assert [f.name for f in dataclasses.fields(cfg.gpu)] == list(config.sections()["gpu"].keys)
    assert config.sections()["gpu"].defaults().hz == config.sections()["gpu"].keys["hz"].default
    with pytest.raises(AttributeError):
        cfg.gpu.hzz = 1.0  # a misspelt key fails where it is set, not later as a silent default
    a, b = config.parse("", "a.toml"), config.parse("", "b.toml")
    a.agent.labels["x"] = "y"
    assert b.agent.labels == {}  # mutable defaults are not shared between parses
