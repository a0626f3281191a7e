/* cuemu.cc — the runtime of the CPU SIMT emulator (cuemu.h): the coroutine
 * scheduler that runs one block at a time with one coroutine (own stack) per CUDA thread,
 * block and warp barriers (a barrier some live lanes never reach is reported
 * and aborts), warp shuffles through a per-warp slot array, and synchronous
 * host versions of the CUDA runtime and cuBLAS calls the backend makes
 * (device memory is host memory; streams, events and copies complete at once). */
#include "cuemu.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <mutex>
#include <vector>

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
	char *stack;
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

static void co_entry()
{
	(*body)();
	running->state = DONE;
	cuemu_switch(&running->sp, sched_sp); /* never resumed */
	abort();
}

static void yield()
{
	cuemu_switch(&running->sp, sched_sp);
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
		if (!c.stack && !(c.stack = (char *)aligned_alloc(64, STACK)))
			fatal("out of memory for stacks");
		/* a fresh stack that cuemu_switch "returns" into co_entry from: six
		 * saved registers, then the return address; at entry rsp ≡ 8 (mod 16)
		 * as after a call */
		uintptr_t top = ((uintptr_t)c.stack + STACK) & ~(uintptr_t)15;
		void **sp = (void **)(top - 16);
		sp[1] = NULL;
		sp[0] = (void *)co_entry;
		for (int r = 0; r < 6; r++)
			*--sp = NULL;
		c.sp = sp;
		c.state = RUN;
	}
	for (;;) {
		for (unsigned i = 0; i < n; i++) {
			if (cos[i].state != RUN)
				continue;
			running = &cos[i];
			cur = &cos[i].pos;
			cuemu_switch(&sched_sp, cos[i].sp);
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

void launch_fn(const std::function<void()> &fn, dim3 grid, dim3 block, size_t smem_bytes)
{
	std::lock_guard<std::mutex> lock(launch_mu);
	const unsigned n = block.x * block.y * block.z;
	if (n == 0 || n > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
	    grid.z > 65535)
		fatal("bad launch configuration");
	if (smem_bytes > SMEM)
		fatal("dynamic shared memory beyond 256 KiB");
	/* poison shared memory: a kernel must not read what it did not write */
	memset(smem, 0xff, smem_bytes);
	if (cos.size() < n)
		cos.resize(n);
	block_dim = block;
	grid_dim = grid;
	body = &fn;
	for (unsigned bz = 0; bz < grid.z; bz++)
		for (unsigned by = 0; by < grid.y; by++)
			for (unsigned bx = 0; bx < grid.x; bx++) {
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

/* ------------------------------------------------------------ CUDA runtime */

struct CUstream_st {
	int dummy;
};
struct CUevent_st {
	double t;
};
struct cublasContext {
	int dummy;
};

static double host_now()
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static cudaError_t last_error = cudaSuccess;

cudaError_t cudaGetDeviceCount(int *n)
{
	*n = 1;
	return cudaSuccess;
}
cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int)
{
	memset(p, 0, sizeof(*p));
	snprintf(p->name, sizeof(p->name), "cuemu (CPU SIMT emulator)");
	p->major = 9;
	p->minor = 0;
	p->multiProcessorCount = 4;
	p->l2CacheSize = 1 << 20;
	p->sharedMemPerBlockOptin = 227 << 10;
	p->totalGlobalMem = 8ull << 30;
	return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int)
{
	*s = new CUstream_st();
	return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamDestroy(cudaStream_t s)
{
	delete s;
	return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned int) { return cudaSuccess; }
cudaError_t cudaEventCreate(cudaEvent_t *e)
{
	*e = new CUevent_st();
	return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int)
{
	*e = new CUevent_st();
	return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t)
{
	e->t = host_now();
	return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
/* CUEMU_NOTREADY=1: every event stays "not ready" to a query (as a copy still
 * in flight on a GPU), so callers must wait, never rely on polling. */
cudaError_t cudaEventQuery(cudaEvent_t)
{
	static int notready = -1;
	if (notready < 0)
		notready = getenv("CUEMU_NOTREADY") != NULL;
	return notready ? cudaErrorNotReady : cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b)
{
	*ms = (float)((b->t - a->t) * 1e3);
	return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e)
{
	delete e;
	return cudaSuccess;
}
cudaError_t cudaMalloc(void **p, size_t n)
{
	*p = aligned_alloc(256, (n + 255) & ~(size_t)255);
	if (!*p)
		return last_error = cudaErrorMemoryAllocation;
	memset(*p, 0xa5, n); /* device memory starts with garbage */
	return cudaSuccess;
}
cudaError_t cudaFree(void *p)
{
	free(p);
	return cudaSuccess;
}
cudaError_t cudaHostAlloc(void **p, size_t n, unsigned int)
{
	*p = aligned_alloc(4096, (n + 4095) & ~(size_t)4095);
	return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFreeHost(void *p)
{
	free(p);
	return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, enum cudaMemcpyKind, cudaStream_t)
{
	memmove(d, s, n);
	return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t)
{
	memset(d, v, n);
	return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *fr, size_t *tot)
{
	*fr = 4ull << 30;
	*tot = 8ull << 30;
	return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int *v)
{
	*v = 13000;
	return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int *v)
{
	*v = 13000;
	return cudaSuccess;
}
cudaError_t cudaGetLastError(void)
{
	cudaError_t e = last_error;
	last_error = cudaSuccess;
	return e;
}
const char *cudaGetErrorString(cudaError_t e)
{
	return e == cudaSuccess ? "no error" : e == cudaErrorMemoryAllocation ? "out of memory" : "error";
}
const char *cudaGetErrorName(cudaError_t e)
{
	return e == cudaSuccess ? "cudaSuccess" : "cudaError";
}
cudaError_t cudaFuncSetAttribute(const void *, enum cudaFuncAttribute, int v)
{
	return v > (227 << 10) ? cudaErrorInvalidValue : cudaSuccess;
}

/* ------------------------------------------------------------ cuBLAS */

cublasStatus_t cublasCreate_v2(cublasHandle_t *h)
{
	*h = new cublasContext();
	return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t h)
{
	delete h;
	return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }
const char *cublasGetStatusString(cublasStatus_t) { return "cuemu cuBLAS status"; }
const char *cublasGetStatusName(cublasStatus_t) { return "CUBLAS_STATUS"; }

static float load_elem(const void *p, cudaDataType t, size_t i)
{
	if (t == CUDA_R_16BF) {
		uint16_t h;
		memcpy(&h, (const uint8_t *)p + 2 * i, 2);
		return __uint_as_float((uint32_t)h << 16);
	}
	return ((const float *)p)[i];
}

/* Column-major C = α op(A) op(B) + β C, float accumulation. */
cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
			    int n, int k, const void *alpha, const void *A, cudaDataType at, int lda,
			    const void *B, cudaDataType bt, int ldb, const void *beta, void *C,
			    cudaDataType ct, int ldc, cublasComputeType_t, cublasGemmAlgo_t)
{
	if (ct != CUDA_R_32F || (at != CUDA_R_16BF && at != CUDA_R_32F) ||
	    (bt != CUDA_R_16BF && bt != CUDA_R_32F))
		return CUBLAS_STATUS_NOT_SUPPORTED;
	const float al = *(const float *)alpha, be = *(const float *)beta;
	float *c = (float *)C;
	for (int j = 0; j < n; j++)
		for (int i = 0; i < m; i++) {
			float acc = 0;
			for (int p = 0; p < k; p++) {
				/* op(A)[i][p], op(B)[p][j] */
				size_t ai = ta == CUBLAS_OP_N ? (size_t)i + (size_t)p * lda : (size_t)p + (size_t)i * lda;
				size_t bi = tb == CUBLAS_OP_N ? (size_t)p + (size_t)j * ldb : (size_t)j + (size_t)p * ldb;
				acc += load_elem(A, at, ai) * load_elem(B, bt, bi);
			}
			float *dst = c + (size_t)i + (size_t)j * ldc;
			*dst = al * acc + (be != 0 ? be * *dst : 0.0f);
		}
	return CUBLAS_STATUS_SUCCESS;
}
