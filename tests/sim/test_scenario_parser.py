"""The scenario parser, through egs-sim-scenario (the libraries' own parser as a command).

The parser promises to accept a subset of TOML and to mean by it what TOML means. These tests
hold it to that against Python's tomllib: on the shipped scenarios, and on a few hundred
random mutations of them, every file the simulator accepts must be valid TOML and parse to
the same scenario; every file it rejects must get one "file:line: what" message; nothing
crashes, including under AddressSanitizer and UBSan.
"""
import json
import random
import shutil
import subprocess
import tomllib

import pytest

import sim_paths

FIELD_DEFAULTS = {"temperature": 45, "power": 60, "utilization": 0, "memory_busy": 0,
                  "memory_used_mib": 0, "sm_clock": 1000, "memory_clock": 800, "fan": 30}
# Health signal fields: unsupported unless given.
HEALTH_FIELDS = ("clock_reasons", "ecc_corrected", "ecc_uncorrected", "retired_sbe", "retired_dbe",
                 "retired_pending", "remapped_correctable", "remapped_uncorrectable", "remap_pending",
                 "remap_failure", "power_limit", "pcie_tx_kbps", "pcie_rx_kbps", "pcie_replays",
                 "nvlink_tx_kibps", "nvlink_rx_kibps", "bad_pages", "indep_throttle_status",
                 "bad_page_threshold")
GPM = ("graphics_util", "sm_util", "sm_occupancy", "dram_bw_util")   # [[gpu.mig]]: unsupported unless given


@pytest.fixture(scope="module")
def checker(sim_out):
    return str(sim_out / "bin" / "egs-sim-scenario")


def wave(v) -> dict:
    if v == "unsupported":
        return {"wave": "unsupported"}
    return dict(v) if isinstance(v, dict) else {"wave": "constant", "value": v}


def reference(doc: dict) -> dict:
    """What a scenario means, computed from tomllib's reading and README.md's defaults."""
    sim = doc.get("sim", {})
    gpus = []
    for i, g in enumerate(doc.get("gpu", [])):
        vendor = g.get("vendor", "nvidia")
        if "pci_bus_id" in g:
            dom, bus, rest = g["pci_bus_id"].split(":")
            dev, fn = rest.split(".")
            bus_id = f"{int(dom, 16):08X}:{int(bus, 16):02X}:{int(dev, 16):02X}.{int(fn, 16):X}"
        else:
            bus_id = f"00000000:{0x10 + i:02X}:00.0"
        fields = {}
        for name in list(FIELD_DEFAULTS) + ["energy"] + list(HEALTH_FIELDS):
            v = g.get("fields", {}).get(name, "unsupported" if name in HEALTH_FIELDS else FIELD_DEFAULTS.get(name))
            if v is None:
                fields[name] = {"wave": "integral"}
            else:
                fields[name] = wave(v)
        uuid = g.get("uuid", f"GPU-5e0c0000-0000-4000-8000-{i:012x}" if vendor == "nvidia"
                     else f"a1000000-0000-4000-8000-{i:012x}")
        gpus.append({
            "vendor": vendor,
            "name": g.get("name", "Tesla P100-PCIE-16GB" if vendor == "nvidia" else "AMD FirePro S7150"),
            "uuid": uuid,
            "pci_bus_id": bus_id,
            "memory_total_mib": g.get("memory_total_mib", 16384),
            "fields": fields,
            "faults": [dict(f) for f in g.get("faults", [])],
            "process_list": g.get("process_list", "supported"),
            "process_utilization": g.get("process_utilization", "supported"),
            "compute_partition": g.get("compute_partition", ""),
            "memory_partition": g.get("memory_partition", ""),
            "gpm": g.get("gpm", "supported"),
            "processes": [{"pid": p["pid"], "kind": p.get("kind", "compute"),
                           "memory_mib": None if p.get("memory_mib") == "unknown" else p.get("memory_mib", 0),
                           **{k: p.get(k) for k in ("sm", "mem", "enc", "dec")}, "name": p.get("name", "")}
                          for p in g.get("processes", [])],
            "mig": [{"instance": m["instance"], "compute_instance": m.get("compute_instance", 0),
                     "memory_total_mib": m["memory_total_mib"],
                     "memory_used_mib": m.get("memory_used_mib", 0),
                     "uuid": m.get("uuid", f"MIG-{uuid[:60]}-{m['instance']}"),
                     **{k: wave(m.get(k, "unsupported")) for k in GPM}} for m in g.get("mig", [])],
        })
    return {"init_error": sim.get("init_error", 0), "amd_init_error": sim.get("amd_init_error"),
            "call_latency_us": sim.get("call_latency_us", 0),
            "driver_version": sim.get("driver_version", "535.154.05"),
            "amd_driver_version": sim.get("amd_driver_version", "6.10.5"), "gpus": gpus}


def parsed(checker, path) -> dict:
    result = subprocess.run([checker, "--json", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("name", sorted(p.stem for p in sim_paths.SCENARIOS.glob("*.toml")))
def test_shipped_scenario_means_what_tomllib_reads(checker, name):
    path = sim_paths.scenario(name)
    with open(path, "rb") as f:
        assert parsed(checker, path) == reference(tomllib.load(f))


@pytest.mark.parametrize("text,fragment", [
    ("[sim]\ninit_error = 01\n", ":2: malformed number '01'"),
    ("[sim]\ninit_error = .5\n", ":2: malformed number '.5'"),
    ("[sim]\ninit_error = 1.\n", ":2: malformed number '1.'"),
    ("[sim]\ninit_error = 1_000\n", ":2: malformed number"),
    ("[sim]\ninit_error = true\n", ":2: booleans are not used"),
    ("[sim]\ndriver_version = 'x'\n", ":2: literal 'strings' are not supported"),
    ("[[gpu]]\nname = \"a\x01b\"\n", ":2: control character"),
    ("[[gpu]]\nname = \"caf\xc3\"\n", ":2: invalid UTF-8"),      # a lead byte, no continuation
    ("[[gpu]]\n[gpu.fields]\npower = { wave = \"sine\", mean = 1, amplitude = 1, period = 0 }\n",
     ":3: field 'power': period must be > 0"),
    ("[[gpu]]\n[gpu.fields]\npower = { wave = \"sine\", mean = 1, amplitude = 1, period = 2, }\n",
     ":3: expected a key"),
    ("[[gpu]]\n[gpu.fields]\nfan = { wave = \"sequence\", values = [], interval = 1 }\n",
     ":3: field 'fan': a sequence needs values"),
    ("[[gpu]]\n[gpu.fields]\nfan = { wave = \"saw\" }\n", ":3: field 'fan': unknown wave \"saw\""),
    ("[[gpu]]\na.b = 1\n", ":2: dotted keys are not supported"),
    ("[[gpu]]\n[[gpu.faults]]\nkind = \"lost\"\n", ":3: the [[gpu.faults]] table above has no 'at'"),
    ("[[gpu]]\n[[gpu.faults]]\nat = 1\nkind = \"slow\"\n", ":4: the \"slow\" fault above needs latency_us"),
    ("[[gpu]]\n[[gpu.faults]]\nat = -1\n", ":3: 'at' must be >= 0"),
    ("[[gpu]]\ncompute_partition = \"SPX2\"\n", ":2: compute_partition must be SPX, DPX"),
    ("[[gpu]]\nmemory_partition = \"NPS3\"\n", ":2: memory_partition must be NPS1"),
    ("[sim]\n[sim]\n", ":2: [sim] appears twice"),
    ("[[gpu]]\n[gpu.fields]\n[gpu.fields]\n", ":3: [gpu.fields] appears twice"),
])
def test_rejections_name_the_line_and_the_problem(checker, tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_bytes(text.encode("latin-1"))
    result = subprocess.run([checker, str(path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith(str(path) + ":"), result.stderr
    assert fragment in result.stderr, result.stderr


PALETTE = [b"=", b"[", b"]", b"{", b"}", b",", b".", b"#", b"\n", b"\"", b"\\", b" ", b"0",
           b"7", b"e", b"-", b"+", b"_", b"x", b"\t", b"'", b"\x00", b"\xff", b"\xc3\xa9"]


def mutate(rng: random.Random, data: bytes) -> bytes:
    for _ in range(rng.randint(1, 3)):
        lines = data.split(b"\n")
        op = rng.randrange(6)
        if op == 0 and data:
            i = rng.randrange(len(data))
            data = data[:i] + data[i + 1:]
        elif op == 1:
            i = rng.randrange(len(data) + 1)
            data = data[:i] + rng.choice(PALETTE) + data[i:]
        elif op == 2 and lines:
            i = rng.randrange(len(lines))
            lines.insert(i, lines[i])
            data = b"\n".join(lines)
        elif op == 3 and lines:
            del lines[rng.randrange(len(lines))]
            data = b"\n".join(lines)
        elif op == 4 and len(lines) > 1:
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            data = b"\n".join(lines)
        else:
            data = data[:rng.randrange(len(data) + 1)]
    return data


def run_mutants(checker, tmp_path, count, seed):
    rng = random.Random(seed)
    sources = [p.read_bytes() for p in sorted(sim_paths.SCENARIOS.glob("*.toml"))]
    paths = []
    for i in range(count):
        path = tmp_path / f"m{i:04d}.toml"
        path.write_bytes(mutate(rng, rng.choice(sources)))
        paths.append(path)
    result = subprocess.run([checker, *map(str, paths)], capture_output=True, text=True,
                            errors="replace")
    assert result.returncode in (0, 1), f"checker died: rc={result.returncode}\n{result.stderr[-2000:]}"
    assert "runtime error" not in result.stderr and "AddressSanitizer" not in result.stderr, result.stderr
    accepted = {line.split(": ok")[0] for line in result.stdout.splitlines()}
    rejected = [line for line in result.stderr.splitlines()]
    assert len(accepted) + len(rejected) == count
    for line in rejected:
        path, lineno, _ = line.split(":", 2)
        assert lineno.isdigit(), line
    return [p for p in paths if str(p) in accepted]


def test_mutated_scenarios_are_rejected_cleanly_or_mean_what_tomllib_reads(checker, tmp_path):
    accepted = run_mutants(checker, tmp_path, count=300, seed=20261125)
    assert accepted, "no mutant was accepted: the test would prove nothing"
    for path in accepted:
        data = path.read_bytes()
        try:
            doc = tomllib.loads(data.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            pytest.fail(f"the simulator accepted a file that is not TOML ({e}):\n{data!r}")
        assert parsed(checker, path) == reference(doc), data


def test_parser_survives_mutants_under_address_and_ub_sanitizers(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a sanitizer variant")
    exe = tmp_path / "egs-sim-scenario-asan"
    build = subprocess.run(
        [cc, "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
         "-Wall", "-Wextra", "-Werror", "-pthread", "-o", str(exe),
         str(sim_paths.SIM_SRC / "scenario_check.c"), str(sim_paths.SIM_SRC / "scenario.c"), "-lm"],
        capture_output=True, text=True)
    if build.returncode != 0 and "sanitize" in build.stderr and "cannot find" in build.stderr:
        pytest.skip(f"the sanitizer runtime is not installed: {build.stderr.strip()}")
    assert build.returncode == 0, build.stderr
    run_mutants(str(exe), tmp_path, count=300, seed=7)
