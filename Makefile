# Two commands a person needs: `make demo` (the CPU rehearsal of the whole pipeline) and `make test`.
# Both set up everything they need on a fresh machine first (scripts/bootstrap.sh).

VENV ?= .venv
STAMP := $(VENV)/.bootstrapped
# The rehearsal runs every stage that has landed; this moves to `summarize` as the stages land.
DEMO_LAST_STAGE ?= configure

.PHONY: demo test lint bootstrap clean

$(STAMP): pyproject.toml scripts/bootstrap.sh scripts/system-packages.txt
	scripts/bootstrap.sh $(VENV)
	touch $@

bootstrap: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/autodeploy run examples/rehearsal.yaml --to $(DEMO_LAST_STAGE)

test: $(STAMP)
	$(VENV)/bin/ruff check automation tests
	$(VENV)/bin/ruff format --check automation tests
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix automation tests
	$(VENV)/bin/ruff format automation tests

clean:
	rm -rf $(VENV) autodeploy-runs .pytest_cache .ruff_cache
