"""Both simulated libraries under ThreadSanitizer and AddressSanitizer+UBSan.

The agent calls the libraries from a sampler thread while another thread waits for events,
so stress_sim.c does the same, with extra init references coming and going, while a GPU of
each vendor is lost and events fall due. The sanitizers must stay silent and every call must
return a code the scenario allows.
"""
import shutil
import subprocess
import textwrap

import pytest

import sim_paths

STRESS_SCENARIO = textwrap.dedent("""
    [[gpu]]
    vendor = "nvidia"
    [[gpu.faults]]
    at = 0.3
    kind = "xid"
    code = 79
    [[gpu.faults]]
    at = 0.9
    kind = "xid"
    code = 13

    [[gpu]]
    vendor = "nvidia"
    [[gpu.faults]]
    at = 0.8
    kind = "lost"

    [[gpu]]
    vendor = "amd"
    [[gpu.faults]]
    at = 0.4
    kind = "xid"
    code = 3
    [[gpu.faults]]
    at = 0.7
    kind = "xid"
    code = 4

    [[gpu]]
    vendor = "amd"
    [[gpu.faults]]
    at = 1.0
    kind = "lost"
""")


@pytest.mark.parametrize("sanitizer", ["thread", "address,undefined"])
def test_concurrent_use_is_clean_under_sanitizer(tmp_path, sanitizer):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a sanitizer variant")
    src = sim_paths.SIM_SRC
    exe = tmp_path / "stress"
    build = subprocess.run(
        [cc, "-O1", "-g", f"-fsanitize={sanitizer}", "-fno-sanitize-recover=all",
         "-Wall", "-Wextra", "-Werror", "-pthread", f"-I{src}", "-o", str(exe),
         str(sim_paths.ROOT / "tests" / "sim" / "stress_sim.c"), str(src / "sim_nvml.c"),
         str(src / "sim_amdsmi.c"), str(src / "sim_lib.c"), str(src / "scenario.c"), "-lm"],
        capture_output=True, text=True)
    if build.returncode != 0 and "cannot find" in build.stderr:
        pytest.skip(f"the {sanitizer} sanitizer runtime is not installed: {build.stderr.strip()}")
    assert build.returncode == 0, build.stderr
    scenario = tmp_path / "stress.toml"
    scenario.write_text(STRESS_SCENARIO)
    run = subprocess.run([str(exe)], env={"EGS_SIM_SCENARIO": str(scenario), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=60)
    if "unexpected memory mapping" in run.stderr:
        pytest.skip("ThreadSanitizer cannot run with this kernel's address-space layout")
    assert "Sanitizer" not in run.stderr and "runtime error" not in run.stderr, run.stderr
    assert run.returncode == 0, run.stdout + run.stderr
    # Two XIDs on the NVIDIA GPU and two notifications on the AMD one, each exactly once.
    assert run.stdout.strip() == "events nvml=2 amd=2 errors=0"
