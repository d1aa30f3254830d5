"""The DRM fdinfo source on fixture trees: engine time -> utilisation over the interval, memory
keys and units, client dedupe, drm-pdev -> GPU."""
from __future__ import annotations

from agent.workload import fdinfo
from agent.workload.records import GpuRef, normalise_bus_id

AMD = GpuRef(0, "GPU-amd-0", "0000:03:00.0", "amd", "Radeon")
INTEL = GpuRef(1, "pci:0000:00:02.0", "0000:00:02.0", "intel", "card1")


def amdgpu(client, gfx_ns, vram_kib=5120, pdev="0000:03:00.0", compute_ns=None, enc_ns=None):
    text = (f"pos:\t0\nflags:\t02100002\nmnt_id:\t24\nino:\t1000\ndrm-driver:\tamdgpu\n"
            f"drm-client-id:\t{client}\ndrm-pdev:\t{pdev}\npasid:\t32771\n"
            f"drm-memory-vram:\t{vram_kib} KiB\ndrm-memory-gtt:\t2048 KiB\ndrm-memory-cpu:\t0 KiB\n"
            f"drm-engine-gfx:\t{gfx_ns} ns\n")
    if compute_ns is not None:
        text += f"drm-engine-compute:\t{compute_ns} ns\n"
    if enc_ns is not None:
        text += f"drm-engine-enc:\t{enc_ns} ns\ndrm-engine-dec:\t0 ns\n"
    return text


def i915(client, render_ns, video_ns=0):
    return (f"drm-driver:\ti915\ndrm-pdev:\t0000:00:02.0\ndrm-client-id:\t{client}\n"
            f"drm-engine-render:\t{render_ns} ns\ndrm-engine-capacity-render:\t2\n"
            f"drm-engine-video:\t{video_ns} ns\ndrm-total-system0:\t8 MiB\ndrm-resident-system0:\t6 MiB\n")


class Clock:
    def __init__(self):
        self.ns = 10**12

    def __call__(self):
        return self.ns


def test_parse_reads_identity_engines_capacity_and_every_memory_unit():
    c = fdinfo.parse("drm-driver: xe\ndrm-pdev: 0000:AB:00.0\ndrm-client-id: 7\ndrm-engine-rcs: 100 ns\n"
                     "drm-engine-capacity-ccs: 4\ndrm-total-vram0: 3 GiB\ndrm-resident-vram0: 2 MiB\n"
                     "drm-shared-vram0: 5\ndrm-cycles-rcs: 99\ndrm-total-cycles-rcs: 1000\nsomething: else\n")
    assert (c.driver, c.pdev, c.client_id) == ("xe", "0000:ab:00.0", "7")
    assert c.engines_ns == {"rcs": 100} and c.capacity == {"ccs": 4}
    assert c.memory == {("total", "vram0"): 3 << 30, ("resident", "vram0"): 2 << 20, ("shared", "vram0"): 5}
    assert fdinfo.used_memory(c) == 2 << 20   # resident wins over total


def test_values_that_are_not_unsigned_decimals_are_left_out():
    # fdinfo's counters and sizes are unsigned: a sign, a fraction, NaN, an exponent or 5000
    # digits is not a figure (a negative capacity would have turned a share negative).
    c = fdinfo.parse("drm-driver: xe\ndrm-pdev: 0000:ab:00.0\ndrm-client-id: 7\n"
                     "drm-engine-rcs: -100 ns\ndrm-engine-bcs: nan ns\ndrm-engine-vcs: 1e300 ns\n"
                     "drm-engine-ccs: 12 ns\ndrm-engine-capacity-ccs: -4\ndrm-engine-capacity-rcs: 2.5\n"
                     "drm-total-vram0: -3 GiB\ndrm-resident-vram0: " + "9" * 5000 + " KiB\n"
                     "drm-shared-vram0: +5 KiB\n")
    assert c.engines_ns == {"ccs": 12} and c.capacity == {} and c.memory == {}
    assert fdinfo.used_memory(c) is None


def test_a_file_that_is_not_a_drm_client_is_none():
    assert fdinfo.parse("pos: 0\nflags: 02\n") is None
    assert fdinfo.parse("drm-driver: amdgpu\n") is None   # no client id


def test_memory_falls_back_to_all_regions_on_an_integrated_gpu():
    c = fdinfo.parse(i915(1, 0))
    assert fdinfo.used_memory(c) == 6 << 20
    c = fdinfo.parse(amdgpu(1, 0, vram_kib=100))
    assert fdinfo.used_memory(c) == 100 << 10   # vram only; gtt and cpu are host memory


def test_bus_ids_compare_across_nvml_and_kernel_spelling():
    assert normalise_bus_id("00000000:3B:00.0") == normalise_bus_id("0000:3b:00.0") == "0000:3b:00.0"


def test_utilisation_is_engine_time_over_the_interval(proc_tree):
    clock = Clock()
    proc_tree.add(100, fds={5: ("/dev/dri/renderD128", amdgpu(11, 0, compute_ns=0, enc_ns=0))})
    src = fdinfo.DrmFdinfoSource(str(proc_tree.root), clock=clock)
    first = src.processes([AMD])
    assert len(first) == 1 and first[0].sm_percent is None and first[0].used_memory_bytes == 5120 << 10
    # one second later: gfx busy 250 ms, compute 100 ms, encoder 500 ms
    clock.ns += 10**9
    proc_tree.add(100, fds={})
    (proc_tree.root / "100" / "fdinfo" / "5").write_text(amdgpu(11, 250_000_000, compute_ns=100_000_000,
                                                              enc_ns=500_000_000))
    p, = src.processes([AMD])
    assert (p.pid, p.gpu_index, p.gpu_uuid, p.source) == (100, 0, "GPU-amd-0", "drm-fdinfo")
    assert abs(p.sm_percent - 35.0) < 1e-9 and abs(p.enc_percent - 50.0) < 1e-9 and p.dec_percent == 0.0
    assert p.mem_percent is None


def test_capacity_divides_and_video_counts_as_decode(proc_tree):
    clock = Clock()
    proc_tree.add(200, fds={3: ("/dev/dri/card1", i915(4, 0, 0))})
    src = fdinfo.DrmFdinfoSource(str(proc_tree.root), clock=clock)
    src.processes([INTEL])
    clock.ns += 2 * 10**9
    (proc_tree.root / "200" / "fdinfo" / "3").write_text(i915(4, 2 * 10**9, 10**9))
    p, = src.processes([INTEL])
    assert p.sm_percent == 50.0 and p.dec_percent == 50.0   # 2 s of 2 engines x 2 s; 1 s of 2 s


def test_a_client_counts_once_across_dup_fds_and_a_child(proc_tree):
    shared = amdgpu(11, 0, vram_kib=1024)
    proc_tree.add(300, fds={4: ("/dev/dri/renderD128", shared), 5: ("/dev/dri/renderD128", shared),
                            6: ("/dev/dri/renderD128", amdgpu(12, 0, vram_kib=2048))})
    proc_tree.add(301, fds={4: ("/dev/dri/renderD128", shared)})   # forked child, same client
    proc_tree.add(302, fds={7: ("/dev/dri/renderD128", amdgpu(13, 0, vram_kib=4096))})
    found = {p.pid: p.used_memory_bytes for p in fdinfo.DrmFdinfoSource(str(proc_tree.root)).processes([AMD])}
    assert found == {300: (1024 + 2048) << 10, 302: 4096 << 10}


def test_other_files_and_unknown_devices_are_skipped(proc_tree):
    proc_tree.add(400, fds={1: ("/dev/null", "pos: 0\n"), 2: ("socket:[1234]", "pos: 0\n"),
                            3: ("/dev/dri/renderD129", amdgpu(1, 0, pdev="0000:99:00.0"))})
    src = fdinfo.DrmFdinfoSource(str(proc_tree.root))
    assert src.processes([AMD]) == []
    assert src.files_read == 1   # only the DRM fd's fdinfo was opened


def test_a_counter_going_back_gives_no_figure_and_state_follows_the_clients(proc_tree):
    clock = Clock()
    proc_tree.add(500, fds={3: ("/dev/dri/renderD128", amdgpu(1, 900))})
    src = fdinfo.DrmFdinfoSource(str(proc_tree.root), clock=clock)
    src.processes([AMD])
    clock.ns += 10**9
    (proc_tree.root / "500" / "fdinfo" / "3").write_text(amdgpu(1, 100))
    p, = src.processes([AMD])
    assert p.sm_percent is None
    (proc_tree.root / "500" / "fd" / "3").unlink()
    assert src.processes([AMD]) == [] and src._previous == {}


def test_gpus_left_to_their_library_are_not_walked_for(proc_tree):
    proc_tree.add(600, fds={3: ("/dev/dri/renderD128", amdgpu(1, 0))})
    src = fdinfo.DrmFdinfoSource(str(proc_tree.root), skip_vendors=("amd",))
    assert src.processes([AMD]) == [] and src.files_read == 0
    assert fdinfo.DrmFdinfoSource(str(proc_tree.root), skip_vendors=("nvidia",)).processes([AMD])
