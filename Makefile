# quorum.rollout — developer entry points. Everything runs from a local virtualenv (.venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help venv collection contract test unit playbooks integration chaos-short test-chaos e2e lint sanity demo demo-stop bench clean

help:
	@echo "make demo   - build a local demo fleet, install agents, release 2.4, print per-group result"
	@echo "make test   - every test: lint, unit, playbooks, integration (real agents), chaos-short, e2e (real ansible-playbook)"
	@echo "make test-chaos - the whole fault-injection suite (tests/chaos, ~30 min; docs/reliability.md)"
	@echo "make bench  - the headline benchmark (bench/headline.py; the others and their results: docs/benchmarks.md)"

$(VENV)/.stamp: agent/pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ./agent -r requirements-dev.txt
	touch $@

venv: $(VENV)/.stamp

# FQCNs (quorum.rollout.*) resolve from a checkout through ansible.cfg's collections path.
collection:
	@mkdir -p collections/ansible_collections/quorum
	@ln -sfn ../../.. collections/ansible_collections/quorum/rollout

# The collection's copy of the agent's state-machine contract (plugins cannot import the agent
# package). Written only on request: a test run that rewrote it would let a stale committed copy
# pass; tests/unit/plugins/module_utils/test_module_utils_contract.py fails while it differs.
contract:
	$(PYTHON) scripts/generate_contract.py

# ruff over every Python file of the checkout (ruff.toml); ansible-lint over the whole tree with the
# production profile, as Galaxy's importer runs it (.ansible-lint leaves out only generated or
# installed trees: .venv, collections, tests/output, demo).
lint: venv collection
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ansible-lint --offline -q --profile production

unit: venv collection
	$(PYTEST) -q tests/unit

# The plugins through whole ansible-playbook runs on localhost (a stand-in agent, no fleet).
playbooks: venv collection
	$(PYTEST) -q tests/playbooks

# Two files at a time (pytest-xdist, one worker per core); the Raft port attacks measure a group's
# behaviour under load and run alone afterwards.
integration: venv
	$(PYTEST) -q -n 2 --dist loadfile tests/integration --ignore tests/integration/test_raft_port.py
	$(PYTEST) -q tests/integration/test_raft_port.py

# Fault injection on real agents (tests/chaos, docs/reliability.md): `chaos-short` is the subset
# `make test` runs (under 90 s here), `test-chaos` every trial, the soak included
# (QR_SOAK_RELEASES=100 consecutive releases unless set).
chaos-short: venv
	$(PYTEST) -q tests/chaos -m "not long"

test-chaos: venv
	QR_SOAK_RELEASES=$${QR_SOAK_RELEASES:-100} $(PYTEST) -q tests/chaos

e2e: venv collection
	@if [ -d tests/e2e ] && ls tests/e2e/test_*.py >/dev/null 2>&1; then $(PYTEST) -q tests/e2e; fi

# ansible-test sanity and units over the built collection tarball (what Galaxy and certification check).
sanity: venv
	scripts/ansible-test.sh

test: lint unit playbooks integration chaos-short e2e sanity

demo: venv collection
	$(PY) scripts/demo.py up

demo-stop: venv
	$(PY) scripts/demo.py down

bench: venv
	$(PY) bench/headline.py --rounds 2

clean:
	rm -rf $(VENV) collections tests/output .pytest_cache
