"""The collector's config file and the agent's [stream] section: errors name file:line:key."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.collector import settings
from agent.config import ConfigError, parse

REPO = Path(__file__).resolve().parents[2]
GOOD = """\
[collector]
data_dir = "/tmp/x"
[consumers]
tokens = ["0123456789abcdef-token"]
"""


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as err:
        settings.parse_text(text, "c.toml")
    return str(err.value)


def test_a_good_file_parses_with_defaults():
    cfg = settings.parse_text(GOOD, "c.toml")
    assert cfg.ingest.listen == "[::]:7443" and cfg.store.synchronous == "normal"
    assert cfg.consumer_tokens == ["0123456789abcdef-token"]


@pytest.mark.parametrize("text, where", [
    (GOOD + "[ingest]\nlisten = \"7443\"\n", "c.toml:6: ingest.listen: must be host:port"),
    (GOOD + "[store]\nraw_retention = \"soon\"\n", "c.toml:6: store.raw_retention: must be a duration"),
    (GOOD + "[store]\nsynchronous = \"off\"\n", "c.toml:6: store.synchronous: must be one of"),
    (GOOD + "[ingest]\nbogus = 1\n", "c.toml:6: ingest.bogus: unknown key"),
    (GOOD + "[nope]\n", "c.toml:5: nope: unknown section"),
    ("[consumers]\ntokens = [\"short\"]\n", "c.toml:2: consumers.tokens: every token must be at least 16"),
    ("[collector]\n", "consumers: tokens or tokens_file must give at least one token"),
    ("[tls]\nplaintext = true\n[ingest]\nlisten = \"0.0.0.0:7443\"\n",
     "c.toml:4: ingest.listen: plaintext is allowed only on loopback"),
])
def test_errors_name_file_line_and_key(text, where):
    assert where in _error(text)


def test_plaintext_on_loopback_needs_no_certificates_or_tokens():
    cfg = settings.parse_text('[tls]\nplaintext = true\n[ingest]\nlisten = "127.0.0.1:1"\n'
                              '[consumers]\nlisten = "[::1]:2"\n', "c.toml")
    assert cfg.consumer_tokens == []


def test_tokens_file_is_read_and_a_missing_one_is_located(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# consumers\nabcdefghijklmnopqrstuvwxyz\n")
    cfg = settings.parse_text(f'[consumers]\ntokens_file = "{tokens}"\n', "c.toml")
    assert cfg.consumer_tokens == ["abcdefghijklmnopqrstuvwxyz"]
    assert "c.toml:2: consumers.tokens_file: cannot read" in _error('[consumers]\ntokens_file = "/nonexistent"\n')


def test_bad_config_exits_2_naming_the_line(tmp_path):
    bad = tmp_path / "collector.toml"
    bad.write_text(GOOD + "[store]\nraw_retention = 5\n")
    for verb in (["run", "--config", str(bad)], ["check-config", str(bad)]):
        out = subprocess.run([sys.executable, "-m", "agent.collector.cli", *verb], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, out.stderr
        assert f"{bad}:6: store.raw_retention: must be a string" in out.stderr


def test_agent_stream_plaintext_is_refused_for_a_remote_endpoint():
    # Refused by the [stream] section itself, so `check-config` refuses it too (issue 10).
    with pytest.raises(ConfigError, match=r"a\.toml:3: stream\.plaintext: .*collector\.example:7443"):
        parse('[stream]\nendpoints = ["127.0.0.1:7443", "collector.example:7443"]\nplaintext = true\n', "a.toml")
    parse('[stream]\nendpoints = ["127.0.0.1:7443", "[::1]:7443"]\nplaintext = true\n', "a.toml")


def test_agent_stream_endpoints_must_be_host_port():
    with pytest.raises(ConfigError, match=r"a\.toml:2: stream\.endpoints: 'collector' is not host:port"):
        parse('[stream]\nendpoints = ["collector"]\n', "a.toml")


def test_docs_collector_md_has_the_current_config_reference():
    text = (REPO / "docs" / "collector.md").read_text()
    assert settings.markdown() in text, "docs/collector.md is stale: paste `python -m agent.collector.settings`"
