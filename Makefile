# aiobpf: `make help` lists the targets.  Run as root (provisioning installs packages).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SID_ROOT ?= /var/cache/aiobpf/sid-root

.PHONY: help provision image demo test lint layouts bench clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

provision:  ## install bcc, kernel headers, the venv and the test interpreters (idempotent)
	bash scripts/provision.sh

image:  ## build the container image (podman or docker; base made locally, cached in /var/cache/aiobpf/images)
	bash scripts/image.sh build

demo: provision  ## run the gh-135371 example under Python 3.14 in the sid root and print its aiobpf pstree
	bash scripts/demo.sh

test: provision  ## provision, then run the whole test suite (what CI runs)
	$(PY) -m pytest -v tests

lint:  ## ruff, mypy, and the deployment files (hadolint, kubernetes-validate)
	$(VENV)/bin/ruff check aiobpf tests tools bench
	$(VENV)/bin/mypy aiobpf
	bash scripts/lint-deploy.sh

layouts:  ## regenerate aiobpf/collector/layouts/tables.py from the reference builds' DWARF
	$(PY) tools/gen_layouts.py $$(bash scripts/layout-builds.sh)

bench: provision  ## dump time, tracing overhead, the daemon's overhead, RSS and scrape time, trace loss, dumps through the daemon, windowed counts, the daemon's CPU with a big process
	$(PY) bench/dump_time.py --million
	$(PY) bench/trace_loss.py
	$(PY) bench/daemon_dump.py
	$(PY) bench/bursty.py
	$(PY) bench/daemon_reads.py
	$(PY) bench/overhead.py --breakdown
	$(PY) bench/daemon.py --tracers full --phase 10 --rounds 6 --processes 0
	$(PY) bench/daemon.py --workloads pingpong --tracers budget --phase 200 --rounds 3 --processes 0
	$(PY) bench/daemon.py --workloads http --tracers memory,budget --phase 60 --rounds 6

clean:  ## remove the venv and caches (not the interpreter roots in /var/cache/aiobpf)
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
