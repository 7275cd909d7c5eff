# pktpath: `make demo` and `make test` install what is missing first (as root).
PY := /usr/bin/python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps demo test unit bench lab-up lab-down clean

deps:
	@$(SUDO) sh scripts/install-deps.sh

demo: deps
	$(SUDO) $(PY) run.py demo

test: deps
	$(SUDO) $(PY) -m pytest -q tests

unit:
	$(PY) -m pytest -q -m "not root" tests

bench: deps
	$(SUDO) $(PY) bench/bench.py

lab-up: deps
	$(SUDO) $(PY) run.py lab up

lab-down:
	$(SUDO) $(PY) run.py lab down

clean:
	rm -rf build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
