# The two commands: `make demo` (main job end to end) and `make test`. Both set up the environment first.
# STACK picks the pinned stack (README "Prerequisites"):
#   spark35 (default)  .venv          Spark 3.5, pyarrow 14, numpy 1, Horovod and petastorm
#   spark4             .venv-spark4   Spark 4.1, pyarrow 18, numpy 2; DDP and the arrow reader only
# GPU=1 picks the GPU flavour of either stack, in its own venv (.venv-gpu, .venv-spark4-gpu): torch's CUDA
# build (requirements-gpu.lock) and, on spark35, Horovod built with NCCL (README "GPU stack").
STACK ?= spark35
GPU ?= 0
ifeq ($(GPU),1)
GPU_SUFFIX := -gpu
else ifeq ($(GPU),0)
GPU_SUFFIX :=
else
$(error GPU=$(GPU): use GPU=0 (CPU torch) or GPU=1 (CUDA torch))
endif
ifeq ($(STACK),spark4)
VENV ?= .venv-spark4$(GPU_SUFFIX)
# The engine-independent suite: tests that need Horovod or petastorm are deselected (not skipped),
# so pytest's counts say exactly what ran.
TEST_SELECT := -m "not horovod and not petastorm"
BENCH_SUFFIX := -spark4
else ifeq ($(STACK),spark35)
VENV ?= .venv$(GPU_SUFFIX)
TEST_SELECT :=
BENCH_SUFFIX :=
else
$(error STACK=$(STACK): use spark35 or spark4)
endif
PY := $(VENV)/bin/python
# make test runs the test files on this many processes (pytest-xdist, one file per process at a time, so a
# file's module fixtures are built once). On the 2-core CI machine, with both stacks side by side, it took the
# suites from 45.7 and 47.3 to 42.0 and 40.7 min (README "What was and was not tested"); 1 runs the files one
# after the other in this process.
TEST_WORKERS ?= 2
ifeq ($(TEST_WORKERS),1)
TEST_PARALLEL :=
else
TEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile
endif

.PHONY: setup demo test test-fast clean bench bench-smoke bench-stacks gpu-data test-gpu bench-gpu

setup:
	@STACK=$(STACK) GPU=$(GPU) RINGTRAIN_VENV=$(abspath $(VENV)) bash scripts/bootstrap.sh

demo: setup
	$(VENV)/bin/ringtrain demo --config conf/demo.yaml

test: setup
	$(PY) -m pytest tests -v --durations=15 $(TEST_PARALLEL) $(TEST_SELECT)

test-fast: setup
	$(PY) -m pytest tests -m "not slow$(if $(TEST_SELECT), and not horovod and not petastorm)"

# Benchmarks (BENCHMARKS.md). Each script prints its JSON result and a markdown table, and writes
# bench/results/<name><BENCH_SUFFIX>.json; bench/render.py prints the tables of all results. Run on an idle machine.
# On the Spark 4 stack the Horovod-vs-DDP all-reduce benchmark has nothing to compare, and the pipeline
# benchmark measures torch alone (the same torch on both stacks): both run on the default stack only.
bench: setup
ifeq ($(STACK),spark35)
	$(PY) bench/allreduce_bench.py
	$(PY) bench/step_bench.py
endif
	$(PY) bench/feed_bench.py --out feed$(BENCH_SUFFIX)
	$(PY) bench/scaling_bench.py --pin-cores both --out scaling$(BENCH_SUFFIX)
ifeq ($(STACK),spark35)
	$(PY) bench/pipeline_bench.py
endif
	$(PY) bench/etl_bench.py --out etl$(BENCH_SUFFIX)
	$(PY) bench/etl_stages_bench.py --out etl-stages$(BENCH_SUFFIX)
	$(PY) bench/arrow_runner_bench.py --out arrow-runner$(BENCH_SUFFIX)
	$(PY) bench/store_bench.py --out store$(BENCH_SUFFIX)
	$(PY) bench/retrain_bench.py --out retrain$(BENCH_SUFFIX)
	$(PY) bench/predict_bench.py --out predict$(BENCH_SUFFIX)
	$(PY) bench/rows_bench.py --out rows$(BENCH_SUFFIX)
	$(PY) bench/warmup_bench.py --out warmup$(BENCH_SUFFIX)
	$(PY) bench/render.py --suffix="$(BENCH_SUFFIX)"

# The two stacks side by side (BENCHMARKS.md "Spark 3.5 stack vs Spark 4 stack"): the like-for-like benchmarks
# (DDP and the arrow reader, which both stacks have), each on Spark 3.5 then on Spark 4, BENCH_ROUNDS times,
# writing bench/results/stacks-<bench>-<stack>-r<round>.json; then the table with Spark 4 / Spark 3.5 per round.
BENCH_ROUNDS ?= 2
bench-stacks:
	@STACK=spark35 GPU=0 RINGTRAIN_VENV=$(abspath .venv) bash scripts/bootstrap.sh
	@STACK=spark4 GPU=0 RINGTRAIN_VENV=$(abspath .venv-spark4) bash scripts/bootstrap.sh
	set -e; for r in $$(seq 1 $(BENCH_ROUNDS)); do \
	  for s in spark35 spark4; do \
	    py=.venv/bin/python; [ $$s = spark4 ] && py=.venv-spark4/bin/python; \
	    $$py bench/feed_bench.py --readers arrow --out stacks-feed-$$s-r$$r; \
	    $$py bench/scaling_bench.py --engines ddp --reader arrow --out stacks-scaling-$$s-r$$r; \
	    $$py bench/etl_bench.py --out stacks-etl-$$s-r$$r; \
	    $$py bench/store_bench.py --out stacks-store-$$s-r$$r; \
	  done; \
	done
	.venv/bin/python bench/render.py --stacks

# The training scaling, feed and all-reduce scripts at small sizes (about 2-3 minutes): they work end to end;
# the numbers mean nothing.
bench-smoke: setup
ifeq ($(STACK),spark35)
	$(PY) bench/allreduce_bench.py --max-bytes 262144 --repeats 1 --max-iters 50 --out smoke-allreduce
	$(PY) bench/step_bench.py --configs hvd1,hvd2,ddp1,ddp2 --steps 50 --warmup 10 --repeats 1 --out smoke-step
	$(PY) bench/pipeline_bench.py --steps 3 --width 64 --out smoke-pipeline
endif
	$(PY) bench/feed_bench.py --rows 20000 --repeats 2 --loader-epochs 2 --out smoke-feed$(BENCH_SUFFIX)
	$(PY) bench/scaling_bench.py --rows 20000 --epochs 1 --repeats 1 --out smoke-scaling$(BENCH_SUFFIX)
	$(PY) bench/etl_bench.py --rows 50000 --repeats 1 --out smoke-etl$(BENCH_SUFFIX)
	$(PY) bench/etl_stages_bench.py --rows 50000 --repeats 1 --out smoke-etl-stages$(BENCH_SUFFIX)
	$(PY) bench/arrow_runner_bench.py --rows 100000 --repeats 1 --out smoke-arrow-runner$(BENCH_SUFFIX)
	$(PY) bench/store_bench.py --rows 20000 --repeats 1 --out smoke-store$(BENCH_SUFFIX)
	$(PY) bench/retrain_bench.py --rows 5000 --repeats 1 --out smoke-retrain$(BENCH_SUFFIX)
	$(PY) bench/predict_bench.py --rows 20000 --train-rows 5000 --repeats 1 --out smoke-predict$(BENCH_SUFFIX)

# The datasets the GPU tests (tests/test_gpu.py) and bench/gpu_bench.py read, published here by the real ETL
# (Spark), so that they run where there is no Spark or Java (README "GPU tests and benchmarks without Spark").
gpu-data: setup
	$(PY) scripts/gpu_data.py

# On a machine with a GPU and the GPU stack: the gpu tests, then the GPU benchmark (bench/results/gpu.json).
test-gpu: gpu-data
	$(PY) -m pytest tests/test_gpu.py -v -rs
bench-gpu: gpu-data
	$(PY) bench/gpu_bench.py

clean:
	rm -rf runs .pytest_cache spark-warehouse metastore_db derby.log bench/.data
