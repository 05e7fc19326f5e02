# The two commands: `make demo` (main job end to end) and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast clean

setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(VENV)/bin/ringtrain demo --config conf/demo.yaml

test: setup
	$(PY) -m pytest tests -v --durations=15

test-fast: setup
	$(PY) -m pytest tests -m "not slow"

clean:
	rm -rf runs .pytest_cache spark-warehouse metastore_db derby.log
