"""The fleet view in a real browser (headless Chromium) against a real collector fed by real
agents (`egs-agent run`) on simulated GPUs: what each page shows, and that it follows the fleet
live without a reload. Screenshots of the three pages go to build/web-screenshots/ (docs/web.md
shows them)."""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import sim_paths
from collector_procs import TOKEN, wait_for
from daemon_helpers import PYTHON, ROOT, DaemonProcess, agent_env

pytestmark = pytest.mark.timeout(120)

WARMING = Path(__file__).with_name("warming.toml")
GPUS = {"web-a": 2, "web-b": 3, "web-c": 3}  # warming.toml: two; constant.toml: two NVIDIA, one AMD
HOSTS = {  # host -> (scenario, labels)
    "web-a": (WARMING, 'cluster = "c1", region = "eu", instance_type = "p3.8xlarge"'),
    "web-b": (sim_paths.scenario("constant"), 'cluster = "c2", region = "us", instance_type = "p3.2xlarge"'),
    "web-c": (sim_paths.scenario("constant"), 'cluster = "c2", region = "us", instance_type = "p3.2xlarge"'),
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, sim_out, web_collector_factory):
    root = tmp_path_factory.mktemp("web-fleet")
    col = web_collector_factory(root / "collector", None).start()
    short = Path(tempfile.mkdtemp(prefix="egsw-", dir="/tmp"))  # unix socket paths must be short
    agents = {}
    try:
        for host, (scenario, labels) in HOSTS.items():
            d = short / host
            d.mkdir()
            config = d / "agent.toml"
            config.write_text(
                f'[agent]\nhost_id = "{host}"\nstate_dir = "{d / "state"}"\nlabels = {{ {labels} }}\n'
                f'[api]\nsocket = "{d / "a.sock"}"\n[gpu]\nhz = 10\n'
                f'[stream]\nendpoints = ["127.0.0.1:{col.ingest_port}"]\nplaintext = true\n'
                'interval = "1s"\n'  # the pages update each second, and stale_after is 5 s here
                '[[alarm]]\nname = "gpu-hot"\nmetric = "gpu_temperature_celsius"\nwindow = "2s"\nstat = "avg"\n'
                'operator = ">="\nthreshold = 70\ninterval = "1s"\nconsecutive = 2\n')
            env = agent_env(EGS_SIM_SCENARIO=scenario, EGS_NVML_LIBRARY=sim_paths.NVML_LIB,
                            EGS_AMDSMI_LIBRARY=sim_paths.AMDSMI_LIB, EGS_SIMULATED=1)
            agents[host] = DaemonProcess(config, d / "a.sock", env=env).wait_ready()
        yield col, agents
    finally:
        for a in agents.values():
            a.stop()
        col.stop()
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture(scope="module")
def page(browser, fleet, screenshots):
    """The browser on the fleet page, signed in with the consumer token (a cookie from then on)."""
    col, _ = fleet
    base = f"http://127.0.0.1:{col.web_port}"
    browser.get(f"{base}/?token={TOKEN}")
    assert "token=" not in browser.current_url, "the token must leave the address bar"
    browser.execute_script("window.egsNotReloaded = true")
    return browser, base, screenshots


def rows(browser) -> dict[str, dict]:
    return browser.execute_script("""
        const out = {};
        for (const tr of document.querySelectorAll('#hosts tbody tr')) {
          out[tr.dataset.host] = {state: tr.querySelector('.state').textContent, hidden: tr.hidden,
            alarms: tr.querySelector('.alarms').textContent,
            gpus: [...tr.querySelectorAll('.gpu')].map(s => [s.dataset.gpu, s.className])};
        }
        return out;""")


def not_reloaded(browser) -> bool:
    return browser.execute_script("return window.egsNotReloaded === true")


def test_the_fleet_page_lists_every_host_and_filters_by_label(page):
    browser, _, shots = page
    got = wait_for(lambda: (r := rows(browser)) and set(r) == set(HOSTS) and all(len(v["gpus"]) == GPUS[h] for h, v in r.items()) and r,
                   timeout=30, what="every host with all its GPUs on the fleet page")
    assert all(v["state"] == "connected" for v in got.values()), got
    headers = browser.execute_script("return [...document.querySelectorAll('#head th')].map(th => th.textContent)")
    assert {"cluster", "region", "instance_type"} <= set(headers)
    browser.execute_script("""const s = document.querySelector('select[data-label=region]');
                              s.value = 'us'; s.dispatchEvent(new Event('change'));""")
    shown = {h for h, v in rows(browser).items() if not v["hidden"]}
    assert shown == {"web-b", "web-c"}
    browser.execute_script("""const s = document.querySelector('select[data-label=region]');
                              s.value = ''; s.dispatchEvent(new Event('change'));""")
    assert not any(v["hidden"] for v in rows(browser).values())


def test_a_gpu_crossing_70C_turns_hot_and_its_alarm_appears_without_a_reload(page):
    browser, _, shots = page
    hot = wait_for(lambda: (r := rows(browser)["web-a"]) and "gpu-hot" in dict(r["gpus"])["0"] and "gpu-hot" in r["alarms"] and r,
                   timeout=40, what="web-a's GPU 0 hot, with its alarm, on the open fleet page")
    assert "gpu-ok" in dict(hot["gpus"])["1"], "only the GPU past 70 C is hot"
    assert "gpu 0" in hot["alarms"]
    assert not_reloaded(browser)
    browser.save_screenshot(str(shots / "fleet.png"))


def test_a_killed_agent_turns_disconnected_within_its_timeout(page, fleet):
    browser, _, shots = page
    _, agents = fleet
    assert rows(browser)["web-c"]["state"] == "connected"
    agents["web-c"].proc.kill()
    agents["web-c"].proc.wait(10)
    wait_for(lambda: rows(browser)["web-c"]["state"] == "disconnected", timeout=10,  # stale_after is 5 s
             what="the killed agent's row to say disconnected")
    assert rows(browser)["web-b"]["state"] == "connected"
    assert not_reloaded(browser)


def test_the_alarms_page_lists_the_firing_alarm(page):
    browser, base, shots = page
    browser.get(f"{base}/alarms")
    firing = wait_for(lambda: browser.execute_script(
        "return [...document.querySelectorAll('#firing tr[data-host]')].map(tr => [tr.dataset.host, tr.dataset.rule])"),
        timeout=15, what="a firing alarm on the alarms page")
    assert ["web-a", "gpu-hot"] in firing
    browser.save_screenshot(str(shots / "alarms.png"))


def _query(col, metric: str, host: str) -> dict:
    out = subprocess.run([PYTHON, "-m", "agent.collector.cli", "query", metric, "--host", host, "--since", "15m",
                          "--resolution", "10s", "--json", "--target", f"127.0.0.1:{col.consumer_port}", "--plaintext"],
                         cwd=ROOT, env={**agent_env(), "EGS_COLLECTOR_TOKEN": TOKEN}, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_host_page_chart_holds_the_points_egs_collector_query_returns(page, fleet):
    browser, base, shots = page
    col, _ = fleet
    metric = "gpu_temperature_celsius"
    # Two settled 10 s buckets per series at least (ended, and past the 5 s the store may take
    # to flush: the comparison below skips younger ones), so it covers more than one point.
    def settled(series):
        return sum(1 for p in series["points"] if p["ts"] + 10 + 5 + 1 <= time.time() - 1)

    wait_for(lambda: (lambda answer: len(answer["series"]) >= 2 and all(settled(s) >= 2 for s in answer["series"]))(
        _query(col, metric, "web-a")), timeout=60, interval=1.0, what="two settled 10 s rollups per GPU of web-a")
    browser.get(f"{base}/host/web-a")
    chart = wait_for(lambda: browser.execute_script(
        "const c = (window.egsCharts || {})[arguments[0]];"
        "return c && {data: c.data, labels: c.series.map(s => s.label || '')};", metric),
        timeout=20, what="the temperature chart on web-a's page")
    asked = wait_for(lambda: browser.execute_script("return window.egsHistory && window.egsHistory.end"), timeout=5)
    answer = _query(col, metric, "web-a")
    xs = chart["data"][0]
    compared = 0
    for series in answer["series"]:
        name = f"GPU {series['labels']['gpu']}"
        col_max = chart["data"][chart["labels"].index(f"{name} max")]
        col_avg = chart["data"][chart["labels"].index(f"{name} avg")]
        col_min = chart["data"][chart["labels"].index(f"{name} min")]
        for p in series["points"]:
            if p["ts"] + 10 + 5 + 1 > asked:  # a bucket still filling (or unflushed) when the page asked
                continue
            i = xs.index(p["ts"])
            assert (col_min[i], col_max[i]) == (p["min"], p["max"]), (name, p)
            assert col_avg[i] == pytest.approx(p["avg"]), (name, p)
            compared += 1
    assert compared >= 2 * len(answer["series"]) >= 4
    wait_for(lambda: browser.execute_script(
        "return document.querySelector('#gpus td[data-gpu=\"0\"][data-metric=gpu_temperature_celsius]')"),
        timeout=10, what="the live values table")
    browser.save_screenshot(str(shots / "host.png"))


def test_a_host_page_plots_the_flight_recording_of_its_alarm(page):
    browser, base, shots = page
    # The recorder captures 10 s past the alarm (docs/alarms.md); the page lists what has arrived.
    link = wait_for(lambda: (browser.get(f"{base}/host/web-a") or True) and browser.execute_script(
        "return document.querySelector('#recordings a[data-id]')"), timeout=30, interval=2.0,
        what="web-a's flight recording on its page")
    assert "gpu-hot" in link.get_attribute("data-id")
    link.click()
    titles = wait_for(lambda: browser.execute_script(
        "return [...document.querySelectorAll('#recording .u-title')].map(t => t.textContent)"),
        timeout=10, what="the recording's charts")
    assert any(t.startswith("temperature") or "temperature" in t for t in titles), titles
