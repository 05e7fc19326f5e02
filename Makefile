# The two commands: `make demo` (main job end to end) and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast clean bench bench-smoke

setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(VENV)/bin/ringtrain demo --config conf/demo.yaml

test: setup
	$(PY) -m pytest tests -v --durations=15

test-fast: setup
	$(PY) -m pytest tests -m "not slow"

# Benchmarks (BENCHMARKS.md). Each script prints its JSON result and a markdown table, and writes
# bench/results/<name>.json; bench/render.py prints the tables of all results. Run on an idle machine.
bench: setup
	$(PY) bench/allreduce_bench.py
	$(PY) bench/feed_bench.py
	$(PY) bench/step_bench.py
	$(PY) bench/scaling_bench.py --pin-cores both
	$(PY) bench/pipeline_bench.py
	$(PY) bench/etl_bench.py
	$(PY) bench/store_bench.py
	$(PY) bench/retrain_bench.py
	$(PY) bench/render.py

# The training scaling, feed and all-reduce scripts at small sizes (about 2-3 minutes): they work end to end;
# the numbers mean nothing.
bench-smoke: setup
	$(PY) bench/allreduce_bench.py --max-bytes 262144 --repeats 1 --max-iters 50 --out smoke-allreduce
	$(PY) bench/feed_bench.py --rows 20000 --repeats 2 --loader-epochs 2 --out smoke-feed
	$(PY) bench/scaling_bench.py --rows 20000 --epochs 1 --repeats 1 --out smoke-scaling
	$(PY) bench/step_bench.py --configs hvd1,hvd2,ddp1,ddp2 --steps 50 --warmup 10 --repeats 1 --out smoke-step
	$(PY) bench/etl_bench.py --rows 50000 --repeats 1 --out smoke-etl
	$(PY) bench/store_bench.py --rows 20000 --repeats 1 --out smoke-store
	$(PY) bench/retrain_bench.py --rows 5000 --repeats 1 --out smoke-retrain

clean:
	rm -rf runs .pytest_cache spark-warehouse metastore_db derby.log bench/.data
