"""Fixtures for /metrics and OTLP: the agent as a subprocess on a simulated scenario with
[prometheus] on a free loopback port (helpers in scrapes.py)."""
from __future__ import annotations

import pytest

from daemon_helpers import DaemonProcess
from engines import free_port
from prometheus.scrapes import Agent, sim_env


@pytest.fixture
def start_agent(sim_out, short_dir):
    """start_agent(scenario, prometheus="[prometheus] lines", agent="[agent] lines", extra="more sections") -> Agent."""
    started: list[DaemonProcess] = []

    def start(scenario: str, prometheus: str = "", extra: str = "", port: int | None = None,
              agent: str = "") -> Agent:
        port = port or free_port()
        directory = short_dir / f"a{len(started)}"
        directory.mkdir()
        config = directory / "agent.toml"
        config.write_text(f'[agent]\nstate_dir = "{directory / "state"}"\n{agent}\n'
                          f'[api]\nsocket = "{directory / "agent.sock"}"\n'
                          f'[prometheus]\nenabled = true\nlisten = "127.0.0.1:{port}"\n{prometheus}\n{extra}')
        env = sim_env(scenario)
        proc = DaemonProcess(config, directory / "agent.sock", env=env)
        started.append(proc)
        proc.wait_ready()
        agent = Agent(proc, port, directory / "agent.sock", env)
        agent.wait_ticks(2)
        return agent

    yield start
    for proc in started:
        proc.stop()


