#!/usr/bin/env bash
# The whole agent against this host's real NVIDIA driver, side by side with nvidia-smi: the
# probe, the daemon idle and under a GPU load (torch, when installed), an alarm rule on the
# load, and the real-GPU test. For GPU hosts; the build and CI machines have none.
#
# usage: bench/gpu_check.sh [SECONDS_OF_LOAD]     (PYTHON=... to choose the interpreter)
# The agent's native module must be built for that interpreter (setup.py build_ext --inplace).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOAD_S=${1:-25}
work=$(mktemp -d)
agent() { "$PY" -m agent.cli --socket "$work/agent.sock" "$@"; }
smi() {
  nvidia-smi --query-gpu=index,name,uuid,pci.bus_id,temperature.gpu,power.draw,utilization.gpu,utilization.memory,memory.used,memory.total,clocks.sm,clocks.mem,fan.speed,driver_version \
    --format=csv,noheader,nounits
}

echo "== machine: $(lscpu | sed -n 's/^Model name: *//p') x $(nproc); $("$PY" --version)"
echo "== nvidia-smi"; smi
echo "== egs-agent probe --seconds 3"; "$PY" -m agent.cli probe --seconds 3

cat > "$work/agent.toml" <<TOML
[agent]
state_dir = "$work/state"
[api]
socket = "$work/agent.sock"
[nic]
mode = "verify"

[[alarm]]
name = "gpu-busy"
description = "GPU utilization, 10-second average >= 50, 3 consecutive"
metric = "gpu_utilization_percent"
window = "10s"
stat = "avg"
operator = ">="
threshold = 50
consecutive = 3
interval = "1s"
TOML

"$PY" -m agent.cli run --config "$work/agent.toml" 2> "$work/daemon.log" &
daemon=$!
sleep 12
echo "== idle: egs-agent status"; agent status
agent status --json > "$work/idle.json"; smi > "$work/idle.csv"

if "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  "$PY" - "$LOAD_S" <<'PYLOAD' &
import sys, time, torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
PYLOAD
  load=$!
  sleep $(( LOAD_S * 2 / 3 ))
  echo "== under load: egs-agent status"; agent status
  agent status --json > "$work/load.json"; smi > "$work/load.csv"
  wait $load
else
  echo "== no torch with CUDA here: no load phase"
fi
sleep 2
echo "== egs-agent alarms"; agent alarms
echo "== egs-agent query gpu_utilization_percent --window 1m --stat max"; agent query gpu_utilization_percent --window 1m --stat max
echo "== egs-agent recordings"; agent recordings
kill -TERM $daemon; wait $daemon; echo "daemon exit code after SIGTERM: $?"
echo "== daemon log (first 40 lines)"; head -40 "$work/daemon.log"

"$PY" - "$work" <<'PYCMP'
import csv, json, sys, pathlib
work = pathlib.Path(sys.argv[1])
cols = ["index", "name", "uuid", "pci", "temp", "power", "util", "membusy", "memused_mib", "memtotal_mib",
        "sm", "mem", "fan", "driver"]
pairs = [("temp", "gpu_temperature_celsius", 1), ("power", "gpu_power_watts", 1), ("util", "gpu_utilization_percent", 1),
         ("membusy", "gpu_memory_busy_percent", 1), ("memused_mib", "gpu_memory_used_bytes", 1 << 20),
         ("memtotal_mib", "gpu_memory_total_bytes", 1 << 20), ("sm", "gpu_sm_clock_mhz", 1),
         ("mem", "gpu_memory_clock_mhz", 1), ("fan", "gpu_fan_speed_percent", 1)]
for phase in ("idle", "load"):
    if not (work / f"{phase}.json").exists():
        continue
    status = json.loads((work / f"{phase}.json").read_text())
    rows = [dict(zip(cols, (c.strip() for c in r))) for r in csv.reader(open(work / f"{phase}.csv"))]
    for g, s in zip(status["gpus"], rows):
        print(f"== {phase}: GPU {g['index']} {g['name']} {g['uuid']} (nvidia-smi: {s['name']} {s['uuid']})")
        for smi_key, metric, scale in pairs:
            v = g["metrics"].get(metric)
            ours = "null" if v is None else f"{v / scale:.1f}"
            print(f"   {metric:28s} agent {ours:>10s}   nvidia-smi {s[smi_key]:>10s}")
PYCMP
rm -rf "$work"
