"""Issue 10, items 8-12 (configuration): what `check-config` accepts, `run` can do; every bound
is refused with file:line:key; reload works under the shipped unit; a failed start says what
failed. Each case here failed on the code before the fix."""
from __future__ import annotations

import subprocess
import time

import pytest

from agent import config, netaddr
from agent.alarms.hooks import HookRunner
from agent.alarms.rules import Hook
from agent.collector import settings as collector_settings
from agent.daemon import Daemon
from agent.events import Event
from daemon_helpers import PYTHON, ROOT, agent_env, cli, write_config

RULE = '[[alarm]]\nname = "hot"\nmetric = "gpu_temperature_celsius"\nthreshold = 80\n'


def error_of(text: str, file: str = "agent.toml") -> config.ConfigError:
    with pytest.raises(config.ConfigError) as info:
        config.parse(text, file)
    return info.value


def located(e: config.ConfigError, line: int, key: str, file: str = "agent.toml") -> bool:
    return (e.file, e.line, e.key) == (file, line, key) and str(e).startswith(f"{file}:{line}: {key}: ")


# --- item 8: reload under the shipped unit (no --config) -------------------------------------

def test_reload_without_config_re_reads_the_default_file(short_dir, monkeypatch):
    path = write_config(short_dir, "[gpu]\nenabled = false\n[windows]\nsizes = ['10s', '1m']\n")
    monkeypatch.setattr(config, "DEFAULT_PATH", str(path))
    d = Daemon(config.load(None, env={}), config_path=None, env={}, components=())
    try:
        d.start()
        assert d.windows.sizes == (10, 60)
        path.write_text(path.read_text().replace("'1m'", "'5m'"))
        assert d.reload() is True
        assert d.windows.sizes == (10, 300)
        path.write_text(path.read_text() + "bogus = 1\n")
        assert d.reload() is False  # a bad default file on reload keeps the running config
        assert d.windows.sizes == (10, 300)
    finally:
        d.stop()


# --- item 9: sizes that kill the daemon are refused; a failed start says what failed ---------

@pytest.mark.parametrize("sizes, words", [
    ('["10s", "100000h"]', "at most 1h"),
    ('["10s", "999999999999999999999999h"]', "at most 1h"),
    ('["0.2s"]', "at least 1s"),
    ('[' + ", ".join(['"10s"'] * 17) + ']', "at most 16"),
])
def test_window_sizes_are_bounded(sizes, words):
    e = error_of(f"[windows]\n\nsizes = {sizes}\n")
    assert located(e, 3, "windows.sizes") and words in e.message, str(e)


def test_check_config_refuses_a_window_run_cannot_hold(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('[windows]\nsizes = ["10s", "100000h"]\n')
    result = cli("check-config", str(path))
    assert result.returncode == 2, result.stdout
    assert f"{path}:2: windows.sizes: " in result.stderr


def test_a_failed_start_logs_the_exception_type_and_text(short_dir):
    path = write_config(short_dir, "[gpu]\nenabled = false\n")
    code = ("import sys\nfrom agent import daemon\n"
            "def boom(self):\n    raise MemoryError()\n"
            "daemon.Daemon.start = boom\n"
            f"sys.exit(daemon.run({str(path)!r}))\n")
    result = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=agent_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    line = next(l for l in result.stderr.splitlines() if "cannot start" in l)
    assert "cannot start: MemoryError" in line, line


# --- item 10: NaN, huge durations, plaintext to a remote collector ---------------------------

FLOAT_KEYS = [(s.name, k) for s in config.sections().values() for k, spec in s.keys.items()
              if spec.type == (int, float) or spec.type == float]


@pytest.mark.parametrize("section, key", FLOAT_KEYS, ids=[f"{s}.{k}" for s, k in FLOAT_KEYS])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308"])
def test_every_number_key_refuses_nan_inf_and_huge(section, key, value):
    e = error_of(f"[{section}]\n{key} = {value}\n")
    assert located(e, 2, f"{section}.{key}"), str(e)


@pytest.mark.parametrize("key, value, words", [
    ("hook_timeout", "1e308", "at most"),
    ("hook_timeout", '"999999h"', "at most"),
    ("window", '"999999h"', "at most"),
    ("window", "1e308", "at most"),
    ("interval", '"999999h"', "at most"),
    ("silence", '"99999999h"', "at most"),
])
def test_rule_durations_are_bounded(key, value, words):
    command = 'command = ["/bin/true"]\n' if key == "hook_timeout" else ""
    e = error_of(RULE + command + f"{key} = {value}\n")
    assert located(e, RULE.count("\n") + 1 + bool(command), f"alarm[0].{key}"), str(e)
    assert words in e.message


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "0.5", "1e300", '"0s"', '"999999h"', '"61s"', '""',
                                   '"soon"', '"' + "9" * 100_000 + 's"', "[]"])
def test_stream_interval_is_a_duration_of_1s_to_1m(value):
    e = error_of(f"[stream]\ninterval = {value}\n")
    assert located(e, 2, "stream.interval"), str(e)


@pytest.mark.parametrize("value, seconds", [('"1s"', 1.0), ('"5s"', 5.0), ('"1m"', 60.0), ("2.5", 2.5)])
def test_stream_interval_takes_durations_and_seconds(value, seconds):
    cfg = config.parse(f"[stream]\ninterval = {value}\n", "a.toml")
    assert config.parse_duration(cfg.stream.interval) == seconds


def test_a_hook_with_a_huge_timeout_still_runs():
    runner = HookRunner(workers=1, queue=1)
    try:
        runner.submit(Hook(("/bin/true",), 1e308), Event("alarm", 1.0, {}, {}), "hot")
        deadline = time.monotonic() + 20
        while runner.status()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        runner.stop()
    assert runner.status()["ok"] == 1, runner.status()


def test_plaintext_to_a_remote_endpoint_is_refused_by_check_config(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('[stream]\nendpoints = ["collector.example:7443"]\nplaintext = true\n')
    e = error_of(path.read_text())
    assert located(e, 3, "stream.plaintext") and "collector.example:7443" in e.message
    result = cli("check-config", str(path))
    assert result.returncode == 2 and f"{path}:3: stream.plaintext: " in result.stderr


def test_stream_spool_segment_must_fit_twice_in_the_spool():
    e = error_of("[stream]\nspool_max_bytes = 1048576\n")  # the default 8 MiB segment does not fit twice
    assert located(e, 1, "stream.spool_segment_bytes") and "half" in e.message, str(e)


def test_stream_backoff_base_is_at_most_its_max():
    e = error_of("[stream]\nbackoff_base = 600\nbackoff_max = 10\n")
    assert e.key in ("stream.backoff_base", "stream.backoff_max") and e.line in (2, 3), str(e)


# --- item 11: loopback is decided by address, once, for agent and collector -----------------

@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("[::1]", True), ("::1", True), ("localhost", True),
    ("::ffff:127.0.0.1", True), ("[::ffff:127.0.0.1]", True),
    ("127.evil.example", False), ("127.0.0.1.nip.io", False), ("localhost.evil.example", False),
    ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("", False), ("[]", False),
    ("collector.example", False),
])
def test_loopback_is_an_address_decision(host, loopback):
    assert netaddr.is_loopback_host(host) is loopback


def test_plaintext_to_a_name_starting_with_127_is_refused_in_agent_and_collector():
    e = error_of('[stream]\nendpoints = ["127.evil.example:7443"]\nplaintext = true\n')
    assert located(e, 3, "stream.plaintext")
    with pytest.raises(config.ConfigError) as info:
        collector_settings.parse_text('[tls]\nplaintext = true\n[ingest]\nlisten = "127.evil.example:7443"\n', "c.toml")
    assert located(info.value, 4, "ingest.listen", "c.toml")


# --- item 12: size rules: the file, labels --------------------------------------------------

def test_a_50_mb_config_with_a_million_labels_is_refused(tmp_path):
    path = tmp_path / "agent.toml"
    with open(path, "w") as f:
        f.write("[agent]\n[agent.labels]\n")
        pad = "x" * 38
        for i in range(1_000_000):
            f.write(f'l{i} = "{pad}"\n')
    assert path.stat().st_size > 50_000_000
    with pytest.raises(config.ConfigError) as info:
        config.load(path, env={})
    e = info.value
    assert e.file == str(path) and "at most" in e.message and "bytes" in e.message, str(e)


def test_label_count_name_and_value_are_bounded():
    many = "\n".join(f'l{i} = "v"' for i in range(config.MAX_LABELS + 1))
    e = error_of(f"[agent]\n[agent.labels]\n{many}\n")
    assert e.key == "agent.labels" and e.line == 2 and f"at most {config.MAX_LABELS}" in e.message, str(e)
    e = error_of(f'[agent]\nlabels = {{ rack = "{"v" * 10_000}" }}\n')
    assert located(e, 2, "agent.labels") and "rack" in e.message, str(e)
    e = error_of('[agent]\nlabels = { "not a name" = "v" }\n')
    assert located(e, 2, "agent.labels"), str(e)
    e = error_of('[agent]\nlabels = { rack = 5 }\n')
    assert located(e, 2, "agent.labels") and "string" in e.message, str(e)


@pytest.mark.parametrize("key", [k for k, spec in config.sections()["gpu"].keys.items() if spec.type is str])
def test_string_keys_are_bounded_in_length(key):
    e = error_of(f'[gpu]\n{key} = "{"a" * 100_000}"\n')
    assert located(e, 2, f"gpu.{key}") and "at most" in e.message, str(e)


# --- bad input of any shape: a located ConfigError, never a crash or a stall -----------------

def test_invalid_utf8_names_the_line_and_key(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_bytes(b'[agent]\nlog_level = "info"\nhost_id = "a\xffb"\n')
    with pytest.raises(config.ConfigError) as info:
        config.load(path, env={})
    assert located(info.value, 3, "agent.host_id", str(path)) and "UTF-8" in info.value.message, str(info.value)


@pytest.mark.parametrize("text", [
    "[gpu]\nhz = " + "9" * 5000 + "\n",
    "[host]\nnics = " + "[" * 100_000 + "]" * 100_000 + "\n",
])
def test_tomllib_surprises_are_config_errors(text):
    e = error_of(text)
    assert e.file == "agent.toml" and e.line == 2, str(e)


@pytest.mark.timeout(60, method="thread")
def test_long_lines_do_not_stall_the_locator_or_duration_parser():
    text = '[agent]\nhost_id = """\n[' + " " * 200_000 + '\n"""\n'
    e = error_of(text)  # refused for its length or its characters, quickly
    assert located(e, 2, "agent.host_id"), str(e)
    e = error_of('[windows]\nsizes = ["1' + " " * 200_000 + 'x"]\n')
    assert located(e, 2, "windows.sizes"), str(e)
    assert config.parse_duration("1" + " " * 200_000 + "x", strict=False) is None


def test_line_numbers_count_newlines_only_not_unicode_line_separators():
    # Found by the fuzz layer: str.splitlines() also splits at U+2028/U+0085, shifting lines.
    e = error_of('[agent]\nhost_id = "a\u2028b\u0085c"\n[gpu]\nhz = 0\n')
    assert located(e, 4, "gpu.hz"), str(e)


@pytest.mark.timeout(30, method="thread")
def test_a_fifo_or_a_directory_as_config_is_refused_not_waited_on(tmp_path):
    import os

    fifo = tmp_path / "agent.toml"
    os.mkfifo(fifo)
    with pytest.raises(config.ConfigError) as info:
        config.load(fifo, env={})  # opened for reading, a FIFO with no writer blocked forever
    assert info.value.file == str(fifo) and "regular file" in info.value.message
    with pytest.raises(config.ConfigError, match="regular file|directory"):
        config.load(tmp_path, env={})
    assert config.load("/dev/null", env={}).gpu.hz == 10.0  # an empty file: the defaults
