# pdserve -- one Makefile for everything. See README.md.
#
#   make            build every binary and library into build/
#   make run        deps + build + default model + start a local cluster
#   make stop       stop what `make run` started
#   make test       deps + build + models + referee + every test
#                   (TESTS=REGEX: only those; skips fail it, see tests/run.sh)
#   make asan       the same tests on an ASan+UBSan build (build-asan/)
#   make asan-ci    unit + fault-path cluster tests on the ASan build (CI)
#   make unit       the unit tests alone (cmocka, no models or cluster needed)
#   make fuzz       libFuzzer targets (clang, into build-fuzz/), a short run of each
#   make bench-engine  engine speed vs the machine's limits and llama.cpp
#   make deps       install missing Debian packages (needs root)
#   make image      the container image pdserve:latest (deploy/Dockerfile)
#   make lint       cppcheck + clang-tidy
#   make archcheck  no #include or linked symbol crosses a forbidden arrow
#   make soak       long soak with a nemesis (SOAK_SECONDS per seed, SOAK_SEEDS)

CC       ?= gcc
BUILD    ?= build
SAN      ?=
PKGS     := libzmq libprotobuf-c yaml-0.1 libmicrohttpd jansson libpcre2-8 libxxhash openblas libsodium
OPT      ?= -O2
CFLAGS_BASE := -std=c11 -D_GNU_SOURCE $(OPT) -g -Wall -Wextra -Werror -Wno-unused-parameter \
               -fno-strict-aliasing -pthread -march=x86-64 -mtune=native -I . -I common -I $(BUILD)/gen -I client
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
ifeq ($(SAN),)
MALLOC_LIB := $(shell pkg-config --libs jemalloc 2>/dev/null)
else
# ASan brings its own allocator; jemalloc would hide what it checks.
MALLOC_LIB :=
endif
CFLAGS   := $(CFLAGS_BASE) $(PKG_CFLAGS) $(SAN) $(EXTRA_CFLAGS)
LDFLAGS  := -pthread $(SAN)
LIBS     := $(PKG_LIBS) $(MALLOC_LIB) -lm

PROTOS      := $(wildcard proto/*.proto)
PROTO_C     := $(patsubst proto/%.proto,$(BUILD)/gen/proto/%.pb-c.c,$(PROTOS))
PROTO_H     := $(PROTO_C:.c=.h)
PROTO_OBJ   := $(patsubst $(BUILD)/gen/%.c,$(BUILD)/obj/gen/%.o,$(PROTO_C))
obj_of       = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
# common/ in layers (docs/architecture.md "Where the code is"):
#   base/     what every layer uses (errors, logs, growth, flags, fault injection)
#   engine/   pure compute: no sockets, no protobuf, no config
#   runtime/  sockets and framing, the config, processes
BASE_OBJ    := $(call obj_of,$(wildcard common/base/*.c))
ENGINE_OBJ  := $(call obj_of,$(wildcard common/engine/*.c))
RUNTIME_OBJ := $(call obj_of,$(wildcard common/runtime/*.c))
# proto/: the wire codec (pd.pb-c <-> C structs), runtime side only.
CODEC_OBJ   := $(call obj_of,$(wildcard proto/*.c))
# The worker roles (their folders but main.c) and the process that runs them
# (worker/): both pd-prefill and pd-decode are this with another default role.
WORKER_SRC  := $(filter-out %/main.c,$(wildcard prefill_worker/*.c decode_worker/*.c)) \
               $(wildcard worker/*.c)
WORKER_OBJ  := $(call obj_of,$(WORKER_SRC))
CLIENT_SRC  := $(filter-out client/pd-cli.c client/pd-plan.c,$(wildcard client/*.c))
CLIENT_OBJ  := $(call obj_of,$(CLIENT_SRC))
# libpdengine: the engine and base (pd-run and the tools need nothing else).
# libpdruntime: the runtime, base, the generated protobuf code and its codec.
# libpdclient: the client library with what it needs of the runtime (sockets,
# the config's defaults) and base, standalone: no engine, no process code.
ENGINE_LIB  := $(BUILD)/lib/libpdengine.a
RUNTIME_LIB := $(BUILD)/lib/libpdruntime.a
WORKER_LIB  := $(BUILD)/lib/libpdworker.a
CLIENT_LIB  := $(BUILD)/lib/libpdclient.a
# The router's modules without its main, for the unit tests that drive them.
ROUTER_OBJ  := $(call obj_of,$(filter-out router/main.c,$(wildcard router/*.c)))
ROUTER_LIB  := $(BUILD)/lib/libpdrouter.a

# Binaries: one per tool, one per process folder (all of its .c files).
TOOLS       := $(patsubst tools/%.c,$(BUILD)/bin/%,$(wildcard tools/pd-*.c))
CLIENT_BINS := $(patsubst client/%.c,$(BUILD)/bin/%,$(wildcard client/pd-*.c)) $(BUILD)/bin/pd-bench
PROC_BINS   := $(if $(wildcard router/*.c),$(BUILD)/bin/pd-router) \
               $(if $(wildcard prefill_worker/*.c),$(BUILD)/bin/pd-prefill) \
               $(if $(wildcard decode_worker/*.c),$(BUILD)/bin/pd-decode)
UNIT_TESTS  := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(wildcard tests/unit/test_*.c))
HELPERS     := $(patsubst tests/helpers/%.c,$(BUILD)/tests/%,$(wildcard tests/helpers/*.c))

# Keep objects: they are intermediates of pattern rules, and make would delete them.
.SECONDARY:

.PHONY: all bins image deps test unit archcheck asan asan-ci tsan fuzz fuzz-build lint run stop bench bench-engine models referee clean check-tests soak
all: $(ENGINE_LIB) $(RUNTIME_LIB) $(WORKER_LIB) $(CLIENT_LIB) $(TOOLS) $(CLIENT_BINS) $(PROC_BINS) $(UNIT_TESTS) $(HELPERS)

# Every process and tool without the tests (what the image build needs).
bins: $(TOOLS) $(CLIENT_BINS) $(PROC_BINS)

deps:
	@scripts/deps.sh

# Generated code is included as "proto/pd.pb-c.h" (-I $(BUILD)/gen), as the
# hand-written "proto/codec.h" is (-I .).
$(BUILD)/gen/proto/%.pb-c.c $(BUILD)/gen/proto/%.pb-c.h: proto/%.proto
	@mkdir -p $(BUILD)/gen/proto
	protoc-c --proto_path=proto --c_out=$(BUILD)/gen/proto $<

$(BUILD)/obj/gen/%.o: $(BUILD)/gen/%.c $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Wno-error -c $< -o $@

# AVX-512 code lives in *_avx512.c files only; dispatch is at run time.
$(BUILD)/obj/%_avx512.o: %_avx512.c $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -mavx2 -mfma -mf16c -mavx512f -mavx512dq -mavx512bw -mavx512vl -mavx512vnni -MMD -MP -c $< -o $@

# AVX2/FMA/F16C code lives in *_avx2.c files only; dispatch is at run time.
$(BUILD)/obj/%_avx2.o: %_avx2.c $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -mavx2 -mfma -mf16c -MMD -MP -c $< -o $@

$(BUILD)/obj/%.o: %.c $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(ENGINE_LIB): $(BASE_OBJ) $(ENGINE_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(RUNTIME_LIB): $(BASE_OBJ) $(RUNTIME_OBJ) $(PROTO_OBJ) $(CODEC_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(WORKER_LIB): $(WORKER_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

CLIENT_NEEDS := $(call obj_of,common/runtime/net.c common/runtime/config.c common/runtime/addr.c)
$(CLIENT_LIB): $(CLIENT_OBJ) $(BASE_OBJ) $(CLIENT_NEEDS) $(PROTO_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(ROUTER_LIB): $(ROUTER_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/bin/pd-%: $(BUILD)/obj/tools/pd-%.o $(ENGINE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LIBS)

$(BUILD)/bin/pd-cli $(BUILD)/bin/pd-plan: $(BUILD)/bin/%: $(BUILD)/obj/client/%.o $(CLIENT_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LIBS)

# pd-bench is a folder of its own (client/bench/bench.h says which file does
# what); it tokenizes its prompts with the engine's tokenizer.
$(BUILD)/bin/pd-bench: $(call obj_of,$(wildcard client/bench/*.c)) $(CLIENT_LIB) $(ENGINE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LIBS)

$(BUILD)/bin/pd-router: $(call obj_of,$(wildcard router/*.c)) $(RUNTIME_LIB) $(ENGINE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LIBS)

$(BUILD)/bin/pd-prefill: $(BUILD)/obj/prefill_worker/main.o $(WORKER_LIB) $(RUNTIME_LIB) $(ENGINE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LIBS)

$(BUILD)/bin/pd-decode: $(BUILD)/obj/decode_worker/main.o $(WORKER_LIB) $(RUNTIME_LIB) $(ENGINE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LIBS)

# Unit tests see router/ too (they drive its modules through libpdrouter).
$(BUILD)/obj/tests/unit/%.o: CFLAGS += -I router

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(ROUTER_LIB) $(WORKER_LIB) $(CLIENT_LIB) $(RUNTIME_LIB) $(ENGINE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LIBS) -lcmocka

$(BUILD)/tests/%: $(BUILD)/obj/tests/helpers/%.o $(CLIENT_LIB) $(ENGINE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LIBS)

# The referee's kernel check calls the engine's kernels beside llama.cpp's
# (which it dlopens): tests/oracle/t_ggml_kernels.sh.
$(BUILD)/tests/ggml_kcheck: $(BUILD)/obj/tests/helpers/ggml_kcheck.o $(ENGINE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LIBS)

# Test models (pd-mkmodel) and the llama.cpp referee (npm).
referee:
	@scripts/referee.sh
	@scripts/http-deps.sh
	@scripts/k8s-deps.sh

models: all referee
	@BUILD=$(BUILD) scripts/models.sh

# Targets that install packages first (deps) build through a second make:
# PKG_CFLAGS / PKG_LIBS above are read from pkg-config when make parses this
# file, before deps could install the -dev packages they name, so on a fresh
# machine a build in this same make would link without them (undefined
# reference to cblas_sgemm...). The second make parses after the install.
# The container and multi-host tests (tests/deploy) need docker and network
# namespaces: scripts/docker-deps.sh installs and starts them (as root); where
# it cannot, those tests print a skip line saying why (and a skip fails the
# run: tests/run.sh).
TESTS ?=
test: deps
	@$(MAKE) --no-print-directory BUILD=$(BUILD) all models archcheck
	-@scripts/docker-deps.sh
	@BUILD=$(BUILD) tests/run.sh $(TESTS)

unit: $(UNIT_TESTS)
	@BUILD=$(BUILD) tests/run.sh --unit-only

# The architecture's arrows, on the sources and on the built objects
# (docs/architecture.md "Where the code is"; scripts/archcheck.sh).
archcheck: all
	@scripts/archcheck.sh --build $(BUILD)

# The whole suite under ASan accepts skips (PD_ALLOW_SKIP=1): a check that
# means nothing under ASan (an RSS bound: its quarantine keeps freed memory
# resident) is a declared skip there, counted and listed.
asan: deps
	$(MAKE) BUILD=build-asan SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" OPT=-O1 all
	@$(MAKE) --no-print-directory models
	@BUILD=build-asan MODELS=build/models ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 PD_ALLOW_SKIP=1 tests/run.sh

# The sanitizer part of CI (.ci/run, after `make test`): the ASan+UBSan
# build with every unit test and the cluster tests that drive the error and
# fault paths (hostile bytes, allocation failures, kills, restarts, cancels).
# The whole suite under ASan is `make asan` (about 15 min here, by hand).
ASAN_CI_TESTS := tests/test_|t_pd_run|t_bad_input|t_alloc_sweep|t_hostile_peer|t_worker_death|t_prefill_death|t_cancel|t_curve\.|t_first_token_lost|t_kv_stream
asan-ci: deps
	$(MAKE) BUILD=build-asan SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" OPT=-O1 all
	@BUILD=build-asan MODELS=build/models ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 tests/run.sh '$(ASAN_CI_TESTS)'

# ThreadSanitizer over the whole suite (about 25 min here): the unit tests
# and every cluster process (the router's HTTP threads, the compute pool).
# tests/tsan.supp names the uninstrumented libraries whose own thread
# hand-offs TSan cannot see; tests fail on any report in a process's stderr.
tsan: deps
	$(MAKE) BUILD=build-tsan SAN="-fsanitize=thread" OPT=-O1 all
	@$(MAKE) --no-print-directory models
	@TSAN_OPTIONS="suppressions=$(CURDIR)/tests/tsan.supp $${TSAN_OPTIONS:-}" \
	    BUILD=build-tsan MODELS=build/models tests/run.sh

# ====== Fuzz targets ======
# Every tests/fuzz/fuzz_<name>.c is a libFuzzer target: built with clang,
# ASan and UBSan against common/, proto/ and the generated protobuf code
# (compiled again that way into $(FUZZ_BUILD)/), plus the sources its own
# "fuzz-sources:" line names (router/...). `make fuzz` builds them all and
# runs each for FUZZ_RUNS inputs (scripts/fuzz.sh: seeds, dictionaries,
# one TAP line per target).
FUZZ_BUILD  ?= build-fuzz
FUZZ_CC     ?= clang
FUZZ_SAN    := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -O1 -g -pthread -w -I . -I common -I $(BUILD)/gen -I client \
               $(PKG_CFLAGS) $(FUZZ_SAN)
FUZZ_NAMES  := $(patsubst tests/fuzz/%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BINS   := $(addprefix $(FUZZ_BUILD)/,$(FUZZ_NAMES))
FUZZ_COMMON := $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(wildcard common/*.c common/*/*.c proto/*.c)) \
               $(patsubst $(BUILD)/gen/%.c,$(FUZZ_BUILD)/obj/gen/%.o,$(PROTO_C))
fuzz_sources = $(shell sed -n 's/^[[:space:]/*]*fuzz-sources:[[:space:]]*//p' tests/fuzz/$(1).c | head -1)

$(FUZZ_BUILD)/obj/gen/%.o: $(BUILD)/gen/%.c $(PROTO_H)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_BUILD)/obj/%_avx512.o: %_avx512.c $(PROTO_H)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -mavx2 -mfma -mf16c -mavx512f -mavx512dq \
	    -mavx512bw -mavx512vl -mavx512vnni -MMD -MP -c $< -o $@

$(FUZZ_BUILD)/obj/%_avx2.o: %_avx2.c $(PROTO_H)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -mavx2 -mfma -mf16c -MMD -MP -c $< -o $@

$(FUZZ_BUILD)/obj/%.o: %.c $(PROTO_H)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@

$(FUZZ_BUILD)/libfuzzcommon.a: $(FUZZ_COMMON)
	rm -f $@ && ar rcs $@ $^

define FUZZ_TARGET
$(FUZZ_BUILD)/$(1): tests/fuzz/$(1).c $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(call fuzz_sources,$(1))) \
                    $(FUZZ_BUILD)/libfuzzcommon.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $(addprefix -I ,$(sort $(dir $(call fuzz_sources,$(1))))) \
	    $$^ -o $$@ $(PKG_LIBS) -lm
endef
$(foreach t,$(FUZZ_NAMES),$(eval $(call FUZZ_TARGET,$(t))))

fuzz-build: $(FUZZ_BINS)

fuzz: fuzz-build
	@FUZZ_BUILD=$(FUZZ_BUILD) scripts/fuzz.sh

# clang-tidy: the checks are chosen in .clang-tidy; the same includes and
# defines as the build (the generated protobuf headers come first), two
# files at a time; any finding fails the target.
LINT_SRC := $(wildcard common/*/*.c proto/*.c router/*.c prefill_worker/*.c decode_worker/*.c worker/*.c client/*.c client/bench/*.c tools/*.c)
lint: $(PROTO_H)
	cppcheck --quiet --error-exitcode=1 --enable=warning,portability --inline-suppr \
	    --suppress=missingIncludeSystem -I . -I common common proto router prefill_worker decode_worker worker client tools
	@echo "clang-tidy: $(words $(LINT_SRC)) files"
	@printf '%s\n' $(LINT_SRC) | xargs -P2 -n1 sh -c 'out=$$(clang-tidy --quiet "$$0" -- \
	    -std=c11 -D_GNU_SOURCE -I . -I common -I $(BUILD)/gen -I client $(PKG_CFLAGS) \
	    -mavx2 -mfma -mf16c -mavx512f -mavx512dq -mavx512bw -mavx512vl -mavx512vnni 2>&1); rc=$$?; \
	    printf "%s\n" "$$out" | grep -v "warnings\? generated\.$$" || true; exit $$rc' \
	    || { echo "clang-tidy: findings above"; exit 1; }

bench: deps
	@$(MAKE) --no-print-directory BUILD=$(BUILD) all models
	@BUILD=$(BUILD) scripts/bench.sh

bench-engine: deps
	@$(MAKE) --no-print-directory BUILD=$(BUILD) all models
	@BUILD=$(BUILD) scripts/bench-engine.sh

# Soak: faults injected under load, P1-P4 checked over every seed's history.
SOAK_SECONDS ?= 300
SOAK_SEEDS   ?= 1 2 3 4 5 6 7 8 9 10
soak: all
	@BUILD=$(BUILD) tests/soak/run_seeds.sh $(SOAK_SECONDS) $(SOAK_SEEDS)

# The container image (deploy/Dockerfile; docs/operations.md). The base,
# debian:bookworm-slim, is built locally when it cannot be pulled.
IMAGE ?= pdserve:latest
image:
	@scripts/docker-deps.sh
	@scripts/docker-base.sh
	docker build -q -f deploy/Dockerfile -t $(IMAGE) .
	@docker image inspect -f '$(IMAGE): {{.Size}} bytes' $(IMAGE)

run: deps
	@scripts/run.sh start

stop:
	@scripts/run.sh stop

clean:
	rm -rf build build-asan build-tsan build-fuzz

-include $(shell find $(BUILD)/obj $(FUZZ_BUILD)/obj -name '*.d' 2>/dev/null)
