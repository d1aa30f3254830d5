#!/usr/bin/env bash
# `make demo-fleet`: VictoriaMetrics + egs-collector (remote-write store) + the demo agent on
# the simulated `two-nvidia-one-amd` scenario, all on 127.0.0.1, all under build/demo-fleet/:
#
#   VictoriaMetrics  127.0.0.1:8428   data build/demo-fleet/vm, log build/demo-fleet/vm.log
#   egs-collector    127.0.0.1:7443 (agents, plaintext), 127.0.0.1:7444 (consumers)
#                    config build/demo-fleet/collector.toml (written here), log collector.log
#   egs-agent        dev/demo-fleet.toml, socket build/demo-fleet/agent.sock, log agent.log
#   the web UI       http://127.0.0.1:7480/ (the collector's [web], docs/web.md), behind a consumer
#                    token made at the first start (build/demo-fleet/token); the URL printed carries it
#
# DEMO_FLEET_HOSTS=N (1 to 4, default 1) adds agents demo-gpu-host-02.. on other simulated
# scenarios (eight NVIDIA GPUs, XID errors, a lost GPU), so the fleet page shows a fleet.
# `make demo-web` is this with the embedded store and four hosts.
#
# Ctrl-C (or any of the three exiting) stops all three, in order: the agent, then the collector
# (so it can hand what it holds to VictoriaMetrics), then VictoriaMetrics. Each runs in a session
# of its own (setsid), so the terminal's Ctrl-C reaches this script only. Memory is bounded: VictoriaMetrics'
# caches by -memory.allowedBytes and its Go heap by GOMEMLIMIT (a soft limit: `ulimit -v` does not
# suit a Go program that maps its data files); the collector and the agent by `ulimit -v`.
#
# DEMO_FLEET_BACKEND=sqlite runs the same fleet with the collector's embedded store instead
# (VictoriaMetrics then stays empty): a check of this script where the remote-write store is
# not available.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

OUT=build/demo-fleet
VENV=${VENV:-.venv}
SIM_OUT=${SIM_OUT:-$REPO/build/sim}
BACKEND=${DEMO_FLEET_BACKEND:-remote_write}
HOSTS=${DEMO_FLEET_HOSTS:-1}
VM_ADDR=127.0.0.1:8428
INGEST=127.0.0.1:7443
CONSUMERS=127.0.0.1:7444
WEB=127.0.0.1:7480
VM_GO_MEMORY=${VM_GO_MEMORY:-512MiB}          # GOMEMLIMIT of VictoriaMetrics
VM_CACHE=${VM_CACHE:-256MiB}                  # -memory.allowedBytes of VictoriaMetrics
PY_VMEM_KB=${PY_VMEM_KB:-4194304}             # ulimit -v of the collector and the agent (4 GiB)

die() { echo "demo-fleet: $*" >&2; exit 1; }

find_bin() { command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; } || true; }
case "$BACKEND" in remote_write|sqlite) ;; *) die "DEMO_FLEET_BACKEND must be remote_write or sqlite, not '$BACKEND'";; esac
case "$HOSTS" in [1-4]) ;; *) die "DEMO_FLEET_HOSTS must be 1 to 4, not '$HOSTS'";; esac
VM_BIN=$(find_bin victoria-metrics)
[ -n "$VM_BIN" ] || [ "$BACKEND" = sqlite ] || die "victoria-metrics is not installed: run 'make system-deps' as root (Debian's victoria-metrics package)"
[ -x "$VENV/bin/egs-collector" ] && [ -x "$VENV/bin/egs-agent" ] || die "no $VENV: run 'make venv native sim' first (make demo-fleet does)"

port_free() {  # host:port -> 0 when nothing listens there
  "$VENV/bin/python" - "$1" <<'EOF'
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
with socket.socket() as s:
    s.settimeout(0.5)
    sys.exit(1 if s.connect_ex((host, int(port))) == 0 else 0)
EOF
}
for addr in $([ "$BACKEND" = remote_write ] && echo "$VM_ADDR") "$INGEST" "$CONSUMERS" "$WEB"; do
  port_free "$addr" || die "$addr is in use (another demo-fleet, or a packaged service?); stop it first"
done

mkdir -p "$OUT/vm" "$OUT/collector"
# A consumer token for the web UI and `egs-collector agents`, made once and kept.
if [ ! -s "$OUT/token" ]; then
  (umask 077 && "$VENV/bin/python" -c 'import secrets; print("demo-" + secrets.token_urlsafe(24))' >"$OUT/token")
fi
TOKEN=$(cat "$OUT/token")

PIDS=()
NAMES=()
cleanup() {
  trap - EXIT INT TERM HUP
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do      # the agent first, VictoriaMetrics last
    kill -TERM "${PIDS[$i]}" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "${PIDS[$i]}" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "${PIDS[$i]}" 2>/dev/null; then
      echo "demo-fleet: ${NAMES[$i]} did not stop in 10 s; killing it" >&2
      kill -KILL "${PIDS[$i]}" 2>/dev/null || true
    fi
    wait "${PIDS[$i]}" 2>/dev/null || true
  done
  echo "demo-fleet: stopped (logs and data in $OUT/)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

started() { PIDS+=("$1"); NAMES+=("$2"); }

wait_until() {  # what, timeout_s, log, command...: poll the command until it succeeds
  local what=$1 timeout=$2 log=$3 pid=${PIDS[-1]}
  shift 3
  for _ in $(seq 1 $((timeout * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { echo "demo-fleet: $what exited; the end of $log:" >&2; tail -n 30 "$log" >&2; exit 1; }
    sleep 0.1
  done
  echo "demo-fleet: $what not ready after ${timeout} s; the end of $log:" >&2; tail -n 30 "$log" >&2; exit 1
}

http_ok() { "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$1"; }
listening() { ! port_free "$1"; }

# --- VictoriaMetrics ------------------------------------------------------------------------
# The flags and why: tests/engines.py's VictoriaMetrics (the same engine the tests use), with a
# demo's retention. -dedup.minScrapeInterval=1ms: a replayed batch stores no second copy.
if [ "$BACKEND" = remote_write ]; then
GOMEMLIMIT=$VM_GO_MEMORY setsid "$VM_BIN" \
  -storageDataPath="$OUT/vm" \
  -httpListenAddr="$VM_ADDR" \
  -dedup.minScrapeInterval=1ms \
  -retentionPeriod=30d \
  -search.latencyOffset=0s \
  -memory.allowedBytes="$VM_CACHE" \
  -http.shutdownDelay=0s \
  >>"$OUT/vm.log" 2>&1 </dev/null &
started $! VictoriaMetrics
wait_until VictoriaMetrics 30 "$OUT/vm.log" http_ok "http://$VM_ADDR/health"
fi

# --- the collector ----------------------------------------------------------------------------
{
  cat <<EOF
# Written by dev/demo_fleet.sh (make demo-fleet); rewritten at every start.
[collector]
data_dir = "$OUT/collector"
[tls]
plaintext = true
[ingest]
listen = "$INGEST"
[consumers]
listen = "$CONSUMERS"
tokens = ["$TOKEN"]
[web]
enabled = true
listen = "$WEB"
EOF
  if [ "$BACKEND" = remote_write ]; then
    cat <<EOF
[store]
backend = "remote_write"
remote_write_url = "http://$VM_ADDR/api/v1/write"
query_url = "http://$VM_ADDR"
EOF
  fi
} >"$OUT/collector.toml"

(ulimit -v "$PY_VMEM_KB" && exec setsid "$VENV/bin/egs-collector" run --config "$OUT/collector.toml") \
  >>"$OUT/collector.log" 2>&1 </dev/null &
started $! egs-collector
wait_until egs-collector 30 "$OUT/collector.log" listening "$CONSUMERS"

# --- the demo agent ---------------------------------------------------------------------------
(ulimit -v "$PY_VMEM_KB" &&
  EGS_SIM_SCENARIO="$REPO/native/sim/scenarios/two-nvidia-one-amd.toml" \
  EGS_NVML_LIBRARY="$SIM_OUT/nvml/libnvidia-ml.so.1" \
  EGS_AMDSMI_LIBRARY="$SIM_OUT/amdsmi/libamd_smi.so" \
  EGS_SIMULATED=1 \
  exec setsid "$VENV/bin/egs-agent" run --config dev/demo-fleet.toml) \
  >>"$OUT/agent.log" 2>&1 </dev/null &
started $! egs-agent
wait_until egs-agent 30 "$OUT/agent.log" test -S "$OUT/agent.sock"

# --- more hosts (DEMO_FLEET_HOSTS) ------------------------------------------------------------
EXTRA_SCENARIOS=(eight-nvidia nvidia-xid nvidia-lost)
EXTRA_REGIONS=(us-east eu-west us-east)
for ((n = 2; n <= HOSTS; n++)); do
  name=$(printf 'demo-gpu-host-%02d' "$n")
  scenario=${EXTRA_SCENARIOS[$((n - 2))]}
  sed -e "s|demo-gpu-host-01|$name|" -e "s|build/demo-fleet/agent-state|build/demo-fleet/$name-state|" \
      -e "s|build/demo-fleet/agent.sock|build/demo-fleet/$name.sock|" \
      -e "s|demo = \"two-nvidia-one-amd\", fleet = \"demo\"|demo = \"$scenario\", fleet = \"demo\", region = \"${EXTRA_REGIONS[$((n - 2))]}\"|" \
      dev/demo-fleet.toml >"$OUT/$name.toml"
  (ulimit -v "$PY_VMEM_KB" &&
    EGS_SIM_SCENARIO="$REPO/native/sim/scenarios/$scenario.toml" \
    EGS_NVML_LIBRARY="$SIM_OUT/nvml/libnvidia-ml.so.1" \
    EGS_AMDSMI_LIBRARY="$SIM_OUT/amdsmi/libamd_smi.so" \
    EGS_SIMULATED=1 \
    exec setsid "$VENV/bin/egs-agent" run --config "$OUT/$name.toml") \
    >>"$OUT/$name.log" 2>&1 </dev/null &
  started $! "$name"
  wait_until "$name" 30 "$OUT/$name.log" test -S "$OUT/$name.sock"
done

QUERY='max by (gpu) (egs_gpu_temperature_celsius{host="demo-gpu-host-01"})'
QUERY_URLENC=$("$VENV/bin/python" -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$QUERY")
cat <<EOF

demo-fleet is running (store: $BACKEND, $HOSTS host(s)). Ctrl-C stops everything.

  the fleet in a browser:  http://$WEB/?token=$TOKEN
EOF
if [ "$BACKEND" = remote_write ]; then cat <<EOF
  VictoriaMetrics UI:  http://$VM_ADDR/vmui/
  example query:       $QUERY
                       http://$VM_ADDR/vmui/#/?g0.expr=$QUERY_URLENC&g0.range_input=15m
                       curl -s 'http://$VM_ADDR/api/v1/series' --data-urlencode 'match[]={__name__=~"egs_.*"}'
EOF
fi
cat <<EOF
  the collector:       $VENV/bin/egs-collector agents --target $CONSUMERS --plaintext --token-file $OUT/token
  the agent:           $VENV/bin/egs-agent --socket $OUT/agent.sock status
  logs:                $OUT/{vm,collector,agent}.log

EOF

# Until Ctrl-C, or until one of the three exits (then the others are stopped too).
set +e
while :; do
  wait -n "${PIDS[@]}"
  for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      log="$OUT/$(case "${NAMES[$i]}" in VictoriaMetrics) echo vm;; egs-collector) echo collector;; egs-agent) echo agent;; *) echo "${NAMES[$i]}";; esac).log"
      echo "demo-fleet: ${NAMES[$i]} exited; the end of $log:" >&2
      tail -n 30 "$log" >&2
      exit 1
    fi
  done
done
