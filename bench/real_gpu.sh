#!/usr/bin/env bash
# The native core on a host with a real NVIDIA driver, with no virtualenv needed: builds
# bench/native_run.c and bench/bare_loop.c with the system compiler, runs the core at 100 Hz
# and 1 kHz, the bare loop (tight and paced), and prints nvidia-smi's view of the same GPUs
# for comparison. Output: JSON lines prefixed with their name, then nvidia-smi's CSV.
#
# usage: bench/real_gpu.sh [NVML_LIBRARY]   (default libnvidia-ml.so.1 from the loader path)
set -euo pipefail
cd "$(dirname "$0")/.."
lib=${1:-libnvidia-ml.so.1}
out=$(mktemp -d)
cc -O2 -pthread -Inative -o "$out/native_run" bench/native_run.c native/core.c native/nvml.c native/amdsmi.c -ldl -lm
cc -O2 -Inative -o "$out/bare_loop" bench/bare_loop.c -ldl -lm

echo "machine: $(lscpu | sed -n 's/^Model name: *//p') x $(nproc); $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)"
echo "core_100hz: $("$out/native_run" "$lib" /nonexistent/libamd_smi.so 3 100)"
smi_fields=name,uuid,pci.bus_id,temperature.gpu,power.draw,utilization.gpu,utilization.memory,memory.used,memory.total,clocks.sm,clocks.mem,fan.speed,driver_version
echo "nvidia_smi: $(nvidia-smi --query-gpu=$smi_fields --format=csv,noheader,nounits)"
echo "core_1khz: $("$out/native_run" "$lib" /nonexistent/libamd_smi.so 3 1000)"
echo "bare_tight: $("$out/bare_loop" "$lib" 300)"
echo "bare_paced_1khz: $("$out/bare_loop" "$lib" 2000 1000)"
echo "bare_paced_100hz: $("$out/bare_loop" "$lib" 300 100)"
rm -rf "$out"
