# egs-agent: `make run` starts the agent on this host, `make test` builds everything and runs the suite.
# Everything here works on a fresh machine with Python 3.11+, gcc and the package registries.

PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
PIP      := $(PY) -m pip
SIM_OUT  := $(abspath build/sim)
NATIVE_SRC := $(wildcard native/*.c native/*.h) native/build_native.py
SIM_SRC  := $(wildcard native/sim/*.c native/sim/*.h native/sim/Makefile)
CONFIG   ?=

.PHONY: all venv native sim system-deps test fuzz run demo demo-fleet demo-web web bench proto clean

all: native sim

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# The cffi extension, built in place so `agent._native` imports from the source tree.
agent/.native-built: $(VENV)/.installed $(NATIVE_SRC)
	$(PY) setup.py -q build_ext --inplace
	touch $@

native: agent/.native-built

# Simulated vendor libraries (libnvidia-ml.so.1, libamd_smi.so) used by tests, the demo and bench/.
sim: $(SIM_SRC)
	$(MAKE) -C native/sim OUT=$(SIM_OUT)

# Tools the NIC tests drive (ip netns, ethtool -L) and systemd-analyze for the unit checks; the
# real time-series engines the collector's remote-write store is tested against (victoria-metrics,
# prometheus, prometheus-node-exporter) and nats-server.
# Installed only when missing and only when we can (root); the tests skip with the reason otherwise.
# The engines' packages ship services (prometheus' postinst starts one on :9090, on every
# address). Tests and demos start their own engines on loopback ports, so packages installed
# here must not leave a service running or enabled: while installing, a policy-rc.d that
# answers 101 ("action forbidden") stops invoke-rc.d and deb-systemd-invoke from starting
# anything, with or without systemd (one already there, as in Docker images, is left alone);
# afterwards the services of the packages just installed -- only those -- are disabled (and
# stopped, where systemd runs), so they do not come up at the next boot either.
ENGINE_SERVICES := victoria-metrics prometheus prometheus-node-exporter nats-server
system-deps:
	@have() { command -v "$$1" >/dev/null || [ -x "/usr/sbin/$$1" ] || [ -x "/usr/bin/$$1" ]; }; \
	missing=""; \
	have ip || missing="$$missing iproute2"; \
	have ethtool || missing="$$missing ethtool"; \
	have systemd-analyze || missing="$$missing systemd"; \
	have victoria-metrics || missing="$$missing victoria-metrics"; \
	have prometheus || missing="$$missing prometheus"; \
	have prometheus-node-exporter || missing="$$missing prometheus-node-exporter"; \
	have nats-server || missing="$$missing nats-server"; \
	have chromium || missing="$$missing chromium"; \
	have chromedriver || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    policy=/usr/sbin/policy-rc.d; ours=""; \
	    if [ ! -e $$policy ]; then \
	      printf '#!/bin/sh\n# make system-deps: no service starts while it installs\nexit 101\n' > $$policy \
	        && chmod 755 $$policy && ours=1; \
	      trap "rm -f $$policy" EXIT; trap "exit 1" INT TERM; \
	    fi; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) >/dev/null \
	      || echo "system-deps: could not install$$missing; tests needing them will skip"; \
	    if [ -n "$$ours" ]; then rm -f $$policy; fi; \
	    for svc in $(ENGINE_SERVICES); do \
	      case " $$missing " in *" $$svc "*) ;; *) continue;; esac; \
	      if command -v systemctl >/dev/null; then \
	        if [ -d /run/systemd/system ]; then systemctl stop "$$svc" >/dev/null 2>&1; fi; \
	        systemctl disable "$$svc" >/dev/null 2>&1 || true; \
	      elif command -v update-rc.d >/dev/null; then update-rc.d "$$svc" disable >/dev/null 2>&1 || true; fi; \
	    done; \
	  else echo "system-deps: missing$$missing (not root, or no apt-get); tests needing them will skip"; fi; \
	fi

# The collector's web UI charts with uPlot (MIT, ~50 KB, no dependencies), vendored into the
# package so the wheel serves it off-line: this fetches the pinned tarball from the npm
# registry, checks its sha256, and copies the minified build, its CSS and its LICENSE into
# agent/collector/web/static/vendor/ (committed; rerun only to move the pin).
UPLOT_VERSION := 1.6.32
UPLOT_SHA256  := 4b8a8191e425658e3ea8c8c1314b0fc679c861ee3a1af2b20c7b16ba50b5133d
WEB_VENDOR    := agent/collector/web/static/vendor
web:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	(cd "$$tmp" && npm pack --silent uplot@$(UPLOT_VERSION) >/dev/null); \
	echo "$(UPLOT_SHA256)  $$tmp/uplot-$(UPLOT_VERSION).tgz" | sha256sum -c --quiet; \
	tar -xzf "$$tmp/uplot-$(UPLOT_VERSION).tgz" -C "$$tmp"; \
	mkdir -p $(WEB_VENDOR); \
	cp "$$tmp/package/dist/uPlot.iife.min.js" $(WEB_VENDOR)/uPlot.iife.min.js; \
	cp "$$tmp/package/dist/uPlot.min.css" $(WEB_VENDOR)/uPlot.min.css; \
	cp "$$tmp/package/LICENSE" $(WEB_VENDOR)/uPlot.LICENSE; \
	printf 'uplot %s (npm tarball sha256 %s)\n' $(UPLOT_VERSION) $(UPLOT_SHA256) > $(WEB_VENDOR)/VERSION; \
	echo "web: uPlot $(UPLOT_VERSION) vendored into $(WEB_VENDOR)"

proto: venv
	$(PY) proto/generate.py

test: venv native sim system-deps
	$(PY) -m pytest -q tests

# The fuzz layer on hypothesis' long profile: tests marked `fuzz` (or `fuzz_long`), then any
# other test with "fuzz" in its name. Under a virtual-memory cap, so unbounded memory is a
# failure rather than a swapping machine, and a wall-clock cap, so a stall is one too.
FUZZ_TIMEOUT ?= 3600
FUZZ_MEMORY_KB ?= 8388608
fuzz: venv native sim
	ulimit -v $(FUZZ_MEMORY_KB) && HYPOTHESIS_PROFILE=long timeout $(FUZZ_TIMEOUT) \
	  $(PY) -m pytest -q -p no:cacheprovider -m "fuzz or fuzz_long" tests
	ulimit -v $(FUZZ_MEMORY_KB) && HYPOTHESIS_PROFILE=long timeout $(FUZZ_TIMEOUT) \
	  $(PY) -m pytest -q -p no:cacheprovider -k fuzz -m "not fuzz and not fuzz_long" tests; \
	  status=$$?; [ $$status = 0 ] || [ $$status = 5 ]  # 5: no such test, nothing to run

run: venv native
	$(VENV)/bin/egs-agent run $(if $(CONFIG),--config $(CONFIG),--config dev/agent.toml)

demo: venv native sim
	EGS_SIM_SCENARIO=$(abspath native/sim/scenarios/two-nvidia-one-amd.toml) \
	EGS_NVML_LIBRARY=$(SIM_OUT)/nvml/libnvidia-ml.so.1 \
	EGS_AMDSMI_LIBRARY=$(SIM_OUT)/amdsmi/libamd_smi.so \
	EGS_SIMULATED=1 \
	$(VENV)/bin/egs-agent run --config dev/demo.toml

# VictoriaMetrics (127.0.0.1:8428, data in build/demo-fleet/vm) + egs-collector writing into it
# + the demo agent; prints the URL to open; Ctrl-C stops all three (dev/demo_fleet.sh).
demo-fleet: venv native sim
	SIM_OUT=$(SIM_OUT) VENV=$(VENV) dev/demo_fleet.sh

# The fleet view in a browser (docs/web.md): demo-fleet on the embedded store (no
# VictoriaMetrics needed) with four simulated hosts; prints the URL to open, token included.
demo-web: venv native sim
	SIM_OUT=$(SIM_OUT) VENV=$(VENV) DEMO_FLEET_BACKEND=sqlite DEMO_FLEET_HOSTS=4 dev/demo_fleet.sh

bench: venv native sim
	$(PY) bench/sampler.py
	$(PY) bench/daemon.py
	$(PY) bench/collector.py
	$(PY) bench/store.py

clean:
	rm -rf build agent/_native*.so agent/_native.c agent/.native-built *.egg-info
