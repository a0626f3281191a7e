/* cuemu.cc — the SIMT half of the CPU emulator (cuemu.h): the coroutine
 * scheduler that runs one block at a time, in block order (CUEMU_BLOCKS=reverse:
 * the last first), with one coroutine (own stack) per CUDA thread, block and
 * warp barriers (a barrier some live lanes never reach is reported
 * and aborts) and warp shuffles through a per-warp slot array. The CUDA
 * runtime and cuBLAS calls, streams and events are in runtime.cc. */
#include "cuemu.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <mutex>
#include <vector>

/* Under ThreadSanitizer every coroutine is a TSan fiber, and each switch
 * orders the two sides, so lanes of a block are not reported as racing while
 * the host threads around the launches (the expert cache's) are still checked. */
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define CUEMU_TSAN 1
#else
#define CUEMU_TSAN 0
#endif

namespace cuemu {

thread_pos *cur;
dim3 block_dim, grid_dim;

enum { RUN, WAIT_BLOCK, WAIT_WARP, DONE };

/* A minimal x86-64 context switch: saves the callee-saved registers on the
 * current stack, stores its pointer in *save, and resumes the stack `to`
 * (glibc's swapcontext makes a system call per switch: far too slow here). */
extern "C" void cuemu_switch(void **save, void *to);
asm(".text\n"
    ".globl cuemu_switch\n"
    ".type cuemu_switch,@function\n"
    "cuemu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size cuemu_switch, .-cuemu_switch\n");

struct co {
	void *sp;
	thread_pos pos;
	int state;
	char *stack;              /* made once; the coroutine then runs block after block */
	void *fiber;              /* its TSan fiber (CUEMU_TSAN) */
};

static const size_t STACK = 64 << 10;
static const size_t SMEM = 256 << 10;
static std::vector<co> cos;
static void *sched_sp;
static co *running;
static const std::function<void()> *body;
alignas(16) static unsigned char smem[SMEM];
static float slot_f[32][32];
static int slot_i[32][32];
static std::mutex launch_mu;

static void fatal(const char *what)
{
	fprintf(stderr, "cuemu: %s (block %u,%u,%u)\n", what, cur ? cur->bid.x : 0,
		cur ? cur->bid.y : 0, cur ? cur->bid.z : 0);
	abort();
}

#if CUEMU_TSAN
static void *sched_fiber;
#endif

/* From the running coroutine back to the scheduler. */
static void yield()
{
#if CUEMU_TSAN
	__tsan_switch_to_fiber(sched_fiber, 0);
#endif
	cuemu_switch(&running->sp, sched_sp);
}

/* From the scheduler (on whichever host thread runs the launch) into c. */
static void resume(co &c)
{
#if CUEMU_TSAN
	sched_fiber = __tsan_get_current_fiber();
	__tsan_switch_to_fiber(c.fiber, 0);
#endif
	cuemu_switch(&sched_sp, c.sp);
}

/* A coroutine's whole life: the kernel body once per block it is given. */
static void co_entry()
{
	for (;;) {
		(*body)();
		running->state = DONE;
		yield();
	}
}

void syncthreads()
{
	running->state = WAIT_BLOCK;
	yield();
}

void syncwarp()
{
	running->state = WAIT_WARP;
	yield();
}

void *dyn_smem()
{
	return smem;
}

static unsigned linear_tid()
{
	return cur->tid.x + block_dim.x * (cur->tid.y + block_dim.y * cur->tid.z);
}

float shfl_xor_f(float v, int m)
{
	const unsigned t = linear_tid(), w = t >> 5, l = t & 31;
	slot_f[w][l] = v;
	syncwarp();
	const float r = slot_f[w][(l ^ (unsigned)m) & 31];
	syncwarp();
	return r;
}

int shfl_xor_i(int v, int m)
{
	const unsigned t = linear_tid(), w = t >> 5, l = t & 31;
	slot_i[w][l] = v;
	syncwarp();
	const int r = slot_i[w][(l ^ (unsigned)m) & 31];
	syncwarp();
	return r;
}

static void run_block(unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		co &c = cos[i];
		if (!c.stack) {
			if (!(c.stack = (char *)aligned_alloc(64, STACK)))
				fatal("out of memory for stacks");
			/* a fresh stack that cuemu_switch "returns" into co_entry from:
			 * six saved registers, then the return address; at entry
			 * rsp ≡ 8 (mod 16) as after a call */
			uintptr_t top = ((uintptr_t)c.stack + STACK) & ~(uintptr_t)15;
			void **sp = (void **)(top - 16);
			sp[1] = NULL;
			sp[0] = (void *)co_entry;
			for (int r = 0; r < 6; r++)
				*--sp = NULL;
			c.sp = sp;
#if CUEMU_TSAN
			c.fiber = __tsan_create_fiber(0);
#endif
		}
		c.state = RUN;
	}
	for (;;) {
		for (unsigned i = 0; i < n; i++) {
			if (cos[i].state != RUN)
				continue;
			running = &cos[i];
			cur = &cos[i].pos;
			resume(cos[i]);
		}
		unsigned live = 0, at_block = 0;
		for (unsigned i = 0; i < n; i++) {
			live += cos[i].state != DONE;
			at_block += cos[i].state == WAIT_BLOCK;
		}
		if (live == 0)
			return;
		int released = 0;
		for (unsigned w = 0; w * 32 < n; w++) {
			unsigned wait = 0, done = 0, lanes = 0;
			for (unsigned i = w * 32; i < n && i < w * 32 + 32; i++) {
				lanes++;
				wait += cos[i].state == WAIT_WARP;
				done += cos[i].state == DONE;
			}
			if (wait == 0)
				continue;
			if (done)
				fatal("warp barrier or shuffle with lanes that have exited");
			if (wait == lanes) {
				for (unsigned i = w * 32; i < n && i < w * 32 + 32; i++)
					cos[i].state = RUN;
				released = 1;
			}
		}
		if (!released && at_block == live) {
			for (unsigned i = 0; i < n; i++)
				if (cos[i].state == WAIT_BLOCK)
					cos[i].state = RUN;
			released = 1;
		}
		if (!released)
			fatal("deadlock: threads wait at different barriers");
	}
}

void check_launch(dim3 grid, dim3 block, size_t smem_bytes)
{
	const unsigned n = block.x * block.y * block.z;
	if (n == 0 || n > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
	    grid.z > 65535)
		fatal("bad launch configuration");
	if (smem_bytes > SMEM)
		fatal("dynamic shared memory beyond 256 KiB");
}

void launch_fn(const std::function<void()> &fn, dim3 grid, dim3 block, size_t smem_bytes)
{
	std::lock_guard<std::mutex> lock(launch_mu);
	check_launch(grid, block, smem_bytes);
	const unsigned n = block.x * block.y * block.z;
	/* poison shared memory: a kernel must not read what it did not write */
	memset(smem, 0xff, smem_bytes);
	if (cos.size() < n)
		cos.resize(n);
	block_dim = block;
	grid_dim = grid;
	body = &fn;
	/* CUEMU_BLOCKS=reverse: the last block first, so that a block reading what
	 * another block of the same launch writes (a race on a GPU) shows whichever
	 * way round it depends */
	static const bool reverse = [] {
		const char *v = getenv("CUEMU_BLOCKS");
		return v && strcmp(v, "reverse") == 0;
	}();
	const uint64_t n_blocks = (uint64_t)grid.x * grid.y * grid.z;
	for (uint64_t k = 0; k < n_blocks; k++) {
		const uint64_t b = reverse ? n_blocks - 1 - k : k;
		const unsigned bx = (unsigned)(b % grid.x), by = (unsigned)(b / grid.x % grid.y),
			       bz = (unsigned)(b / ((uint64_t)grid.x * grid.y));
		for (unsigned i = 0; i < n; i++) {
			cos[i].pos.bid = make_uint3(bx, by, bz);
			cos[i].pos.tid = make_uint3(i % block.x, (i / block.x) % block.y,
						    i / (block.x * block.y));
		}
		run_block(n);
	}
	cur = NULL;
	running = NULL;
}

} // namespace cuemu
