# k2fs — one Makefile for the whole tree.
#
#   make            build every program into bin/ (CUDA backend only where nvcc exists)
#   make test       build and run every Check suite and integration test
#   make asan       the same tests under AddressSanitizer + UBSan (build in build-asan/)
#   make fuzz       build the libFuzzer targets (clang) and run each for FUZZ_SECONDS
#   make fuzz-long  a fuzzing campaign (FUZZ_SECONDS or FUZZ_RUNS each) -> build/fuzz/campaign.json
#   make cuemu-asan the CUDA backend on the CPU emulator (tests/cuemu) under ASan + UBSan
#   make cuemu-tsan the same under ThreadSanitizer (builds in build-asanemu/, build-tsanemu/)
#   make demo       generate, pack, mount and run a small model end to end
#
# Sources are found by folder, so adding a file needs no edit here:
#   layout/*.c  kernels/*.c  infer/*.c (less main.c)  k2fs/*.c (less main.c)  cli/*.c
#   tools/<name>.c -> bin/<name>  (tools/lib/*.c: code shared by the tools)
#   tests/test_<x>.c -> build/tests/test_<x> (Check)
#   tests/prog_<x>.c -> build/tests/prog/prog_<x> (helpers the it_*.sh scripts run)
#   tests/fuzz_<x>.c -> build/fuzz/fuzz_<x> (libFuzzer)

CC      ?= cc
BUILD   ?= build
BIN     ?= bin
PKGS    := fuse3 liburing libzstd liblz4 libxxhash libpcre2-8 jansson libmicrohttpd
OPT     ?= -O2 -g
WARN    := -Wall -Wextra -Wshadow -Wmissing-prototypes -Wstrict-prototypes
CFLAGS  += -std=gnu11 $(OPT) $(WARN) -pthread -fno-strict-aliasing -D_FILE_OFFSET_BITS=64 \
           -Ilayout -Ikernels -Iinfer -Ik2fs -Icli -Iserve $(shell pkg-config --cflags $(PKGS))
# Every package, for the tests and fuzzers; each program links its own list
# (<name>_LDLIBS below).
LDLIBS  += $(shell pkg-config --libs $(PKGS)) -lm -pthread
CHECK_LIBS := $(shell pkg-config --libs check)
SAN     ?=

NVCC    ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
NVFLAGS ?= -O3 -std=c++17 -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
           -Xcompiler -fPIC,-Wall -Ilayout -Ikernels

LAYOUT_SRC  := $(wildcard layout/*.c)
KERNELS_SRC := $(wildcard kernels/*.c)
INFER_SRC   := $(filter-out infer/main.c,$(wildcard infer/*.c))
K2FS_SRC    := $(filter-out k2fs/main.c,$(wildcard k2fs/*.c))
TOOLLIB_SRC := $(wildcard tools/lib/*.c)
CLI_SRC     := $(wildcard cli/*.c)
SERVE_SRC   := $(filter-out serve/main.c,$(wildcard serve/*.c))
CUDA_SRC    := $(wildcard kernels/*.cu)
TOOLS       := $(patsubst tools/%.c,$(BIN)/%,$(wildcard tools/*.c))
TESTS       := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_*.c))
FUZZERS     := $(patsubst tests/%.c,$(BUILD)/fuzz/%,$(wildcard tests/fuzz_*.c))
TESTPROGS   := $(patsubst tests/%.c,$(BUILD)/tests/prog/%,$(wildcard tests/prog_*.c))

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
LIB_LAYOUT  := $(BUILD)/liblayout.a
LIB_KERNELS := $(BUILD)/libkernels.a
LIB_INFER   := $(BUILD)/libinfer.a
LIB_K2FS    := $(BUILD)/libk2fs.a
LIB_TOOLS   := $(BUILD)/libtools.a
# The command-line helpers (k2cli_*: option parsing, progress line, cancel by
# signal) that infer and the tools share: their own folder and library below
# both, since infer must not reach up into tools/, and above layout/ (they use
# k2_err, k2_parse_size and the format names), which has no business with
# command lines.
LIB_CLI     := $(BUILD)/libcli.a
# serve/: k2serve's HTTP API (request parsing, responses, the scheduler).
LIB_SERVE   := $(BUILD)/libserve.a
ALL_LIBS    := $(LIB_SERVE) $(LIB_TOOLS) $(LIB_INFER) $(LIB_K2FS) $(LIB_KERNELS) $(LIB_CLI) $(LIB_LAYOUT)

# The CUDA backend: compiled where nvcc exists (K2_HAVE_CUDA=1); elsewhere
# kernels/backend_cuda.h stubs its entry points to return -ENOTSUP.
ifneq ($(NVCC),)
CUDA_OBJ    := $(patsubst %.cu,$(BUILD)/obj/%.cu.o,$(CUDA_SRC))
CUDA_LIBS   := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++
CFLAGS      += -DK2_HAVE_CUDA=1
else
CUDA_OBJ    :=
CUDA_LIBS   :=
endif

PROGRAMS := $(BIN)/k2fs $(BIN)/infer $(BIN)/k2serve $(TOOLS)

# What each program links, read off its objects (nm -u) and kept exact, so that
# `readelf -d bin/<name>` names no library it does not call: <name>_LIBS, its
# static libraries (users before what they use), and <name>_LDLIBS, the
# packages those call (layout/: zstd and lz4 in the codecs, xxhash in checksums,
# jansson in config.json; k2fs/: fuse3, liburing; infer/'s tokenizer: pcre2),
# libm where used, and CUDA_LIBS for the programs that run the CUDA backend.
# A tools/<name>.c not listed here links everything.
pkg_libs = $(shell pkg-config --libs $(1))
k2fs_LIBS        := $(LIB_K2FS) $(LIB_LAYOUT)
k2fs_LDLIBS       = $(call pkg_libs,fuse3 liburing libzstd liblz4 libxxhash)
infer_LIBS       := $(LIB_INFER) $(LIB_KERNELS) $(LIB_CLI) $(LIB_LAYOUT)
infer_LDLIBS      = $(call pkg_libs,libpcre2-8 jansson libzstd liblz4 libxxhash) -lm $(CUDA_LIBS)
k2serve_LIBS     := $(LIB_SERVE) $(LIB_INFER) $(LIB_KERNELS) $(LIB_CLI) $(LIB_LAYOUT)
k2serve_LDLIBS    = $(call pkg_libs,libmicrohttpd libpcre2-8 jansson libzstd liblz4 libxxhash) -lm \
                    $(CUDA_LIBS)
k2pack_LIBS      := $(LIB_TOOLS) $(LIB_CLI) $(LIB_LAYOUT)
k2pack_LDLIBS     = $(call pkg_libs,jansson libzstd liblz4 libxxhash) -lm
k2gen_LIBS       := $(LIB_TOOLS) $(LIB_CLI) $(LIB_LAYOUT)
k2gen_LDLIBS      = $(call pkg_libs,jansson libxxhash) -lm
k2trace_LIBS     := $(LIB_TOOLS) $(LIB_INFER) $(LIB_CLI) $(LIB_LAYOUT)
k2trace_LDLIBS    = $(call pkg_libs,jansson) -lm
k2inspect_LIBS   := $(LIB_LAYOUT)
k2inspect_LDLIBS  = $(call pkg_libs,libzstd liblz4 libxxhash)
k2bench_LIBS     := $(LIB_TOOLS) $(LIB_SERVE) $(LIB_INFER) $(LIB_KERNELS) $(LIB_CLI) $(LIB_LAYOUT)
k2bench_LDLIBS    = $(call pkg_libs,libpcre2-8 jansson libzstd liblz4 libxxhash) -lm $(CUDA_LIBS)
# Links a program from its objects and libraries ($^) with its own packages.
link_program = $(CC) $(CFLAGS) $(SAN) $^ -o $@ $(or $($(@F)_LDLIBS),$(LDLIBS) $(CUDA_LIBS)) -pthread

.PHONY: all test asan fuzz demo clean cuemu-asan cuemu-tsan
# Keep objects of tools and tests between runs (they are intermediate files of
# pattern rules otherwise, deleted after each link).
.SECONDARY:
all: $(PROGRAMS)

# tools/lib's headers are for the tools and their tests only.
$(BUILD)/obj/tools/%.o $(BUILD)/obj/tests/%.o: CFLAGS += -Itools/lib
$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(SAN) -MMD -MP -c $< -o $@

# nvcc writes no dependency files here: every .cu object depends on the headers
# a .cu may include.
CUDA_HDRS := $(wildcard kernels/*.cuh) kernels/backend_cuda.h kernels/kernels.h layout/layout.h
$(BUILD)/obj/%.cu.o: %.cu $(CUDA_HDRS)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(LIB_LAYOUT):  $(call obj,$(LAYOUT_SRC));  @rm -f $@; ar rcs $@ $^
$(LIB_KERNELS): $(call obj,$(KERNELS_SRC)) $(CUDA_OBJ); @rm -f $@; ar rcs $@ $^
$(LIB_INFER):   $(call obj,$(INFER_SRC));   @rm -f $@; ar rcs $@ $^
$(LIB_K2FS):    $(call obj,$(K2FS_SRC));    @rm -f $@; ar rcs $@ $^
$(LIB_TOOLS):   $(call obj,$(TOOLLIB_SRC)); @rm -f $@; ar rcs $@ $^
$(LIB_CLI):     $(call obj,$(CLI_SRC));     @rm -f $@; ar rcs $@ $^
$(LIB_SERVE):   $(call obj,$(SERVE_SRC)) $(BUILD)/obj/gen/page.o; @rm -f $@; ar rcs $@ $^

# The page k2serve serves at GET /, embedded byte for byte as srv_page_html.
$(BUILD)/gen/page.c: serve/page/index.html
	@mkdir -p $(dir $@)
	{ echo '/* generated from $< by the Makefile */'; echo '#include <stddef.h>'; \
	  echo 'const unsigned char srv_page_html[] = {'; \
	  od -An -v -tx1 $< | sed 's/ *\([0-9a-f][0-9a-f]\)/0x\1,/g'; echo '0};'; \
	  echo "const size_t srv_page_html_len = $$(wc -c < $<);"; } > $@.tmp && mv $@.tmp $@
$(BUILD)/obj/gen/page.o: $(BUILD)/gen/page.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(SAN) -Wno-missing-prototypes -c $< -o $@

$(BIN)/k2fs: $(call obj,k2fs/main.c) $(k2fs_LIBS)
	@mkdir -p $(BIN)
	$(link_program)
$(BIN)/infer: $(call obj,infer/main.c) $(infer_LIBS)
	@mkdir -p $(BIN)
	$(link_program)
$(BIN)/k2serve: $(call obj,serve/main.c) $(k2serve_LIBS)
	@mkdir -p $(BIN)
	$(link_program)
# (second expansion: the stem $* picks the tool's own list of libraries)
.SECONDEXPANSION:
$(BIN)/%: $(BUILD)/obj/tools/%.o $$(or $$($$*_LIBS),$$(ALL_LIBS))
	@mkdir -p $(BIN)
	$(link_program)
$(BUILD)/tests/prog/%: $(BUILD)/obj/tests/%.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(SAN) $^ -o $@ $(LDLIBS) $(CUDA_LIBS)
$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(SAN) $^ -o $@ $(CHECK_LIBS) $(LDLIBS) $(CUDA_LIBS)

# Check suites run with CK_FORK so one crashing test reports instead of killing
# the suite; tests/run.sh runs each suite and then the mount-level scripts.
test: all $(TESTS) $(TESTPROGS)
	@K2_BIN=$(abspath $(BIN)) K2_TESTS=$(abspath $(BUILD)/tests) \
	  K2_TESTPROGS=$(abspath $(BUILD)/tests/prog) sh tests/run.sh

asan:
	$(MAKE) BUILD=build-asan BIN=build-asan/bin OPT="-O1 -g -fno-omit-frame-pointer" \
	  SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" NVCC= test

# make fuzz: each target for FUZZ_SECONDS, one after another (what CI runs);
# its corpus grows in $(BUILD)/corpus/<target>, a crashing input is saved as
# $(BUILD)/fuzz/<target>-crash-* and fails the make.
# make fuzz-long: a campaign, each target for FUZZ_SECONDS (or FUZZ_RUNS
# inputs), FUZZ_JOBS at a time; writes $(BUILD)/fuzz/campaign.json with each
# target's runs, seconds, coverage (libFuzzer's cov/ft), corpus size and
# crashes (tests/fuzz_long.sh).
FUZZ_SECONDS ?= 60
FUZZ_RUNS ?=
FUZZ_JOBS ?= 2
FUZZ_CFLAGS := -std=gnu11 -O1 -g -Ilayout -Iinfer -Iserve -Ik2fs $(shell pkg-config --cflags $(PKGS)) \
               -fsanitize=fuzzer,address,undefined -D_FILE_OFFSET_BITS=64
# A target that needs more than layout/ names its sources here.
$(BUILD)/fuzz/fuzz_tok_json: $(wildcard infer/tok_*.c)
$(BUILD)/fuzz/fuzz_tiktoken: $(wildcard infer/tok_*.c)
$(BUILD)/fuzz/fuzz_serve_request: $(wildcard serve/api_*.c)
$(BUILD)/fuzz/fuzz_xattr_value: k2fs/value.c
$(BUILD)/fuzz/fuzz_tok_config: $(wildcard infer/tok_*.c) \
  $(filter-out infer/chat_repl.c infer/chat_session.c,$(wildcard infer/chat_*.c))
$(BUILD)/fuzz/%: tests/%.c $(LAYOUT_SRC)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) $^ -o $@ $(LDLIBS)
fuzz: $(FUZZERS)
	@for f in $(FUZZERS); do \
	  n=$$(basename $$f); echo "fuzz: $$f for $(FUZZ_SECONDS) s"; mkdir -p $(BUILD)/corpus/$$n; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -timeout=25 -print_final_stats=0 \
	      -artifact_prefix=$(BUILD)/fuzz/$$n- $(BUILD)/corpus/$$n tests/corpus/$$n \
	      >$(BUILD)/fuzz/$$n.log 2>&1; rc=$$?; grep -a -E '^#[0-9]+.DONE|^Done ' $(BUILD)/fuzz/$$n.log; \
	  [ $$rc -eq 0 ] || { tail -40 $(BUILD)/fuzz/$$n.log; \
	                     echo "fuzz: $$n failed (exit $$rc), log $(BUILD)/fuzz/$$n.log"; exit 1; }; \
	done
.PHONY: fuzz-long
fuzz-long: $(FUZZERS)
	bash tests/fuzz_long.sh --seconds $(FUZZ_SECONDS) --runs "$(FUZZ_RUNS)" --jobs $(FUZZ_JOBS) \
	  --corpus $(BUILD)/corpus --out $(BUILD)/fuzz/campaign.json $(FUZZERS)

# The CUDA backend on the CPU emulator of tests/cuemu under a sanitizer: the
# libraries built with NVCC= and -DK2_HAVE_CUDA=1 (the backend's C side calls
# the emulated .cu objects), the emulator programs linked by tests/cuemu/build.sh
# with the same sanitizer, then tests/cuemu/sanitize.sh runs the kernel checks
# and infer --backend cuda through a plain model directory. ThreadSanitizer
# sees the emulator's coroutines as fibers; its one lock orders the host
# threads at every CUDA call, so only races between calls can show.
CUEMU_SAN_asan := -fsanitize=address,undefined -fno-sanitize-recover=undefined
CUEMU_SAN_tsan := -fsanitize=thread
cuemu-asan cuemu-tsan: cuemu-%:
	$(MAKE) BUILD=build-$*emu BIN=build-$*emu/bin NVCC= OPT="-O1 -g -fno-omit-frame-pointer" \
	  SAN="$(CUEMU_SAN_$*) -DK2_HAVE_CUDA=1" build-$*emu/libkernels.a build-$*emu/liblayout.a \
	  build-$*emu/libinfer.a build-$*emu/libcli.a build-$*emu/obj/infer/main.o \
	  build-$*emu/bin/k2pack build-$*emu/bin/k2inspect
	CUEMU_BUILD=build-$*emu CUEMU_CFLAGS="$(CUEMU_SAN_$*)" CUEMU_LDFLAGS="$(CUEMU_SAN_$*)" \
	  sh tests/cuemu/build.sh
	sh tests/cuemu/sanitize.sh build-$*emu $*

demo:
	sh tools/install-deps.sh
	$(MAKE) all
	sh tools/demo.sh

clean:
	rm -rf $(BUILD) build-asan build-asanemu build-tsanemu $(BIN)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
