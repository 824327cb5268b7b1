# Two commands a person needs: `make demo` (the CPU rehearsal of the whole pipeline) and `make test`.
# Both set up everything they need on a fresh machine first (scripts/bootstrap.sh).

VENV ?= .venv
STAMP := $(VENV)/.bootstrapped
DYNAMO_VENV ?= .venv-dynamo
DYNAMO_STAMP := $(DYNAMO_VENV)/.dynamo-1.6.1
AIPERF_VENV ?= .venv-aiperf
AIPERF_STAMP := $(AIPERF_VENV)/.aiperf-0.13.0

.PHONY: demo container-rehearsal test test-unit test-conformance lint bootstrap clean

$(STAMP): pyproject.toml scripts/bootstrap.sh scripts/system-packages.txt
	scripts/bootstrap.sh $(VENV)
	touch $@

# Dynamo (frontend + mocker) for the rehearsal and the integration tests, in its own venv.
$(DYNAMO_STAMP): scripts/install-dynamo.sh
	scripts/install-dynamo.sh $(DYNAMO_VENV)

# aiperf (benchmark.client: aiperf) for tests/integration/test_aiperf_client.py, in its own venv.
$(AIPERF_STAMP): scripts/install-aiperf.sh
	scripts/install-aiperf.sh $(AIPERF_VENV)

bootstrap: $(STAMP) $(DYNAMO_STAMP)

REHEARSAL_MODEL := /tmp/autodeploy-rehearsal/models/tiny-qwen3

$(REHEARSAL_MODEL)/config.json: scripts/make-tiny-model.py
	$(VENV)/bin/python scripts/make-tiny-model.py $(REHEARSAL_MODEL)

demo: $(STAMP) $(DYNAMO_STAMP) $(REHEARSAL_MODEL)/config.json
	$(VENV)/bin/autodeploy run examples/rehearsal.yaml
	@echo "The rehearsal still serves at http://127.0.0.1:8000 (report: autodeploy-runs/rehearsal/report/)."
	@echo "Stop it with: $(VENV)/bin/autodeploy down examples/rehearsal.yaml"

# The rehearsal with its image path (root): two namespace nodes with their own Docker engines; the image
# is built on node 0 from a Dynamo-shaped source tree, shipped to node 1 over SSH, and runs every worker.
REHEARSAL_DOCKER := unix:///tmp/autodeploy-rehearsal/docker/adr-n0/docker.sock
container-rehearsal: $(STAMP) $(DYNAMO_STAMP) $(REHEARSAL_MODEL)/config.json
	scripts/rehearsal-nodes.sh up --docker
	DOCKER_HOST=$(REHEARSAL_DOCKER) $(VENV)/bin/python scripts/rehearsal-image.py --tag autodeploy-rehearsal/dynamo-base:local
	chmod -R a+rX $(REHEARSAL_MODEL)
	ip netns exec adr-ctl $(VENV)/bin/autodeploy run examples/container-rehearsal.yaml
	@echo "Stop it with: ip netns exec adr-ctl $(VENV)/bin/autodeploy down examples/container-rehearsal.yaml && scripts/rehearsal-nodes.sh down"

test: $(STAMP) $(DYNAMO_STAMP) $(AIPERF_STAMP)
	$(VENV)/bin/ruff check automation tests
	$(VENV)/bin/ruff format --check automation tests
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest

# The unit tier alone (no services, no root): under a minute.
test-unit: $(STAMP)
	$(VENV)/bin/pytest -m unit

# Generated files against every supported release's own parsers and schemas (wheels from PyPI, cached
# under ~/.cache/autodeploy/wheels).
test-conformance: $(STAMP)
	$(VENV)/bin/pytest -m conformance

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix automation tests
	$(VENV)/bin/ruff format automation tests

clean:
	rm -rf $(VENV) $(DYNAMO_VENV) autodeploy-runs .pytest_cache .ruff_cache
