# k2fs — one Makefile for the whole tree.
#
#   make            build every program into bin/ (CUDA backend only where nvcc exists)
#   make test       build and run every Check suite and integration test
#   make asan       the same tests under AddressSanitizer + UBSan (build in build-asan/)
#   make fuzz       build the libFuzzer targets (clang) and run each for FUZZ_SECONDS
#   make demo       generate, pack, mount and run a small model end to end
#
# Sources are found by folder, so adding a file needs no edit here:
#   layout/*.c  kernels/*.c  infer/*.c (less main.c)  k2fs/*.c (less main.c)
#   tools/<name>.c -> bin/<name>  (tools/lib/*.c: code shared by the tools)    tests/test_<x>.c -> build/tests/test_<x> (Check)
#   tests/prog_<x>.c -> build/tests/prog/prog_<x> (helpers the it_*.sh scripts run)
#   tests/fuzz_<x>.c -> build/fuzz/fuzz_<x> (libFuzzer)

CC      ?= cc
BUILD   ?= build
BIN     ?= bin
PKGS    := fuse3 liburing libzstd liblz4 libxxhash libpcre2-8 jansson
OPT     ?= -O2 -g
WARN    := -Wall -Wextra -Wshadow -Wmissing-prototypes -Wstrict-prototypes
CFLAGS  += -std=gnu11 $(OPT) $(WARN) -pthread -fno-strict-aliasing -D_FILE_OFFSET_BITS=64 \
           -Ilayout -Ikernels -Iinfer -Ik2fs -Itools/lib $(shell pkg-config --cflags $(PKGS))
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
ALL_LIBS    := $(LIB_TOOLS) $(LIB_INFER) $(LIB_K2FS) $(LIB_KERNELS) $(LIB_LAYOUT)

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

PROGRAMS := $(BIN)/k2fs $(BIN)/infer $(TOOLS)

.PHONY: all test asan fuzz demo clean
# Keep objects of tools and tests between runs (they are intermediate files of
# pattern rules otherwise, deleted after each link).
.SECONDARY:
all: $(PROGRAMS)

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

$(BIN)/k2fs: $(call obj,k2fs/main.c) $(ALL_LIBS)
	@mkdir -p $(BIN)
	$(CC) $(CFLAGS) $(SAN) $^ -o $@ $(LDLIBS) $(CUDA_LIBS)
$(BIN)/infer: $(call obj,infer/main.c) $(ALL_LIBS)
	@mkdir -p $(BIN)
	$(CC) $(CFLAGS) $(SAN) $^ -o $@ $(LDLIBS) $(CUDA_LIBS)
$(BIN)/%: $(BUILD)/obj/tools/%.o $(ALL_LIBS)
	@mkdir -p $(BIN)
	$(CC) $(CFLAGS) $(SAN) $^ -o $@ $(LDLIBS) $(CUDA_LIBS)
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

FUZZ_SECONDS ?= 60
FUZZ_CFLAGS := -std=gnu11 -O1 -g -Ilayout -Iinfer $(shell pkg-config --cflags $(PKGS)) \
               -fsanitize=fuzzer,address,undefined -D_FILE_OFFSET_BITS=64
# A target that needs more than layout/ names its sources here.
$(BUILD)/fuzz/fuzz_tok_json: $(wildcard infer/tok_*.c)
$(BUILD)/fuzz/%: tests/%.c $(LAYOUT_SRC)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) $^ -o $@ $(LDLIBS)
fuzz: $(FUZZERS)
	@for f in $(FUZZERS); do \
	  echo "fuzz: $$f for $(FUZZ_SECONDS) s"; mkdir -p $(BUILD)/corpus/$$(basename $$f); \
	  $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=0 $(BUILD)/corpus/$$(basename $$f) \
	      tests/corpus/$$(basename $$f) 2>&1 | tail -3 || exit 1; done

demo:
	sh tools/install-deps.sh
	$(MAKE) all
	sh tools/demo.sh

clean:
	rm -rf $(BUILD) build-asan $(BIN)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
