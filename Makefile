# fedloom: `make run` trains, `make test` tests; both set everything up first.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedloom-installed
CONFIG ?= configs/default.yaml
ARGS ?=

.PHONY: run test test-slow test-one-thread check bench accuracy clean proto check-proto demo-deploy

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/pip install --quiet -e ".[dev,privacy,hf,tensorboard]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fedloom run $(CONFIG) $(ARGS)

test: $(STAMP)
	$(BIN)/pytest -q

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

# the numerics again on one torch thread: rounding can change with the thread count, so every
# bitwise comparison must pin both of its sides and hold at any count
NUMERICS ?= tests/core tests/algorithms tests/aggregators tests/privacy tests/secagg tests/training \
            tests/fleets tests/runtime
test-one-thread: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/pytest -q $(NUMERICS)

check: $(STAMP) check-proto
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/lint-imports

# gRPC code in src/fedloom/transport/generated: regenerate after editing the .proto; `check`
# fails when the committed code is stale
proto: $(STAMP)
	$(BIN)/python -m fedloom.transport.codegen

check-proto: $(STAMP)
	$(BIN)/python -m fedloom.transport.codegen --check

# a server and 3 client processes on 127.0.0.1, FedAvg on MNIST (ARGS: e.g. --tls rounds=10)
demo-deploy: $(STAMP)
	$(BIN)/fedloom demo deploy $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/bench_vectorized.py --workloads W1 --reps 5 --parallel 1 2
	$(BIN)/python benchmarks/bench_eval_overlap.py --rounds 10
	$(BIN)/python benchmarks/bench_process.py --workloads W2 W1 --reps 5
	$(BIN)/python benchmarks/bench_startup.py --reps 3
	$(BIN)/python benchmarks/bench_scaling.py --reps 3
	$(BIN)/python benchmarks/bench_distributed.py --reps 5
	$(BIN)/python benchmarks/bench_deploy.py
	$(BIN)/python benchmarks/bench_population.py
	$(BIN)/python benchmarks/codec_throughput.py --reps 7

accuracy: $(STAMP)
	$(BIN)/python benchmarks/accuracy.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
