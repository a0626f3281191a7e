/* runtime.cc — the CUDA runtime and cuBLAS calls of the CPU SIMT emulator
 * (cuemu.h), with streams that are asynchronous as a GPU's are, in the orders
 * that expose a missing dependency. CUEMU_ORDER picks one:
 *
 *   late (default)  every kernel, copy, memset, GEMM and event record is
 *     queued on its stream and runs only when the host needs it:
 *     cudaStreamSynchronize, cudaEventSynchronize, a copy into pageable host
 *     memory (synchronous in the real runtime too), cudaFree, cudaFreeHost,
 *     cudaStreamDestroy (which synchronize on a GPU as well); or when a stream
 *     that waits on an event of another (cudaStreamWaitEvent) reaches that
 *     wait. A kernel that reads a cache slot without waiting for its copy
 *     sees device garbage; a copy that does not wait for the kernels still
 *     reading its slot runs before them when its event is waited for; a
 *     staging buffer refilled before its copy ran is what the copy reads.
 *   copies-early  the same, but a host-to-device copy runs at its call (after
 *     the work its stream must do first): a slot released before the kernels
 *     that read it were queued is overwritten before they run.
 *   sync  every operation runs at its call (no asynchrony at all).
 *
 * In every order: cudaEventQuery answers "not ready" for an event whose work
 * has not run, and runs one operation of its stream, so polling makes
 * progress as on a GPU (CUEMU_NOTREADY=1: every query answers "not ready");
 * as in the real runtime, that answer is also left as the last error.
 * A copy from pinned memory (cudaHostAlloc) reads its source when it runs, as
 * DMA does; from pageable memory the source is read at the call (the real
 * runtime stages it before returning). A copy whose kind names device memory
 * on a side that is not device memory (from cudaMalloc), a memset or a GEMM
 * of host memory, is refused with an error, as with unified addressing on a GPU.
 *
 * Device memory is host memory, filled with 0xa5 at allocation. One recursive
 * lock (dev_mu) guards the queues and is held while queued work runs, so any
 * host thread (the expert cache's I/O threads) may call in at any time and may
 * end up running another thread's kernels. */
#include "cuemu.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

struct CUstream_st {
	std::deque<std::function<void()>> q;
	uint64_t queued = 0;        /* operations ever queued */
	uint64_t done = 0;          /* operations run: the first `done` of them */
	bool destroyed = false;     /* kept, so that a wait naming it stays valid */
};

struct CUevent_st {
	CUstream_st *s = nullptr;   /* stream of the last record; none: complete */
	uint64_t seq = 0;           /* that record's position in its stream */
	std::shared_ptr<double> t = std::make_shared<double>(0.0); /* when it ran */
};

struct cublasContext {
	cudaStream_t stream = nullptr;
};

namespace {

std::recursive_mutex dev_mu;
CUstream_st null_stream;
std::vector<CUstream_st *> streams = {&null_stream}; /* every stream ever made */
std::map<uintptr_t, size_t> device_mem, pinned_mem; /* start -> bytes */
thread_local cudaError_t last_error = cudaSuccess; /* per host thread, as in CUDA */

bool env_flag(const char *name)
{
	const char *v = getenv(name);
	return v && *v && *v != '0';
}

enum order { ORDER_LATE, ORDER_COPIES_EARLY, ORDER_SYNC };

order run_order()
{
	static const order o = [] {
		const char *v = getenv("CUEMU_ORDER");
		if (!v || !*v || strcmp(v, "late") == 0)
			return ORDER_LATE;
		if (strcmp(v, "copies-early") == 0)
			return ORDER_COPIES_EARLY;
		if (strcmp(v, "sync") == 0)
			return ORDER_SYNC;
		fprintf(stderr, "cuemu: CUEMU_ORDER=%s: expected late, copies-early or sync\n", v);
		abort();
	}();
	return o;
}

double host_now()
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

CUstream_st *stream_of(cudaStream_t s)
{
	return s ? s : &null_stream;
}

bool inside(const std::map<uintptr_t, size_t> &m, const void *p)
{
	const uintptr_t a = (uintptr_t)p;
	auto it = m.upper_bound(a);
	if (it == m.begin())
		return false;
	--it;
	return a < it->first + it->second || (it->second == 0 && a == it->first);
}

/* Runs the stream's operations until the first `upto` have run. */
void drain(CUstream_st *s, uint64_t upto)
{
	while (s->done < upto) {
		std::function<void()> op = std::move(s->q.front());
		s->q.pop_front();
		op();
		s->done++;
	}
}

void drain_all()
{
	for (bool again = true; again;) {
		again = false;
		for (CUstream_st *s : streams)
			if (s->done < s->queued) {
				drain(s, s->queued);
				again = true;
			}
	}
}

void enqueue(CUstream_st *s, std::function<void()> op)
{
	s->q.push_back(std::move(op));
	s->queued++;
	if (run_order() == ORDER_SYNC)
		drain(s, s->queued);
}

bool event_done(const CUevent_st *e)
{
	return !e->s || e->s->done >= e->seq;
}

cudaError_t refuse(cudaError_t e)
{
	return last_error = e;
}

} // namespace

void cuemu::enqueue_launch(std::function<void()> body, dim3 grid, dim3 block, size_t smem,
			   cudaStream_t stream)
{
	check_launch(grid, block, smem);
	std::lock_guard<std::recursive_mutex> lock(dev_mu);
	enqueue(stream_of(stream), [body = std::move(body), grid, block, smem] {
		launch_fn(body, grid, block, smem);
	});
}

/* ------------------------------------------------------------ device */

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
	std::lock_guard<std::recursive_mutex> lock(dev_mu);
	cudaError_t e = last_error;
	last_error = cudaSuccess;
	return e;
}
const char *cudaGetErrorString(cudaError_t e)
{
	switch (e) {
	case cudaSuccess: return "no error";
	case cudaErrorMemoryAllocation: return "out of memory";
	case cudaErrorInvalidValue: return "invalid argument";
	case cudaErrorNotReady: return "device not ready";
	default: return "error";
	}
}
const char *cudaGetErrorName(cudaError_t e)
{
	return e == cudaSuccess ? "cudaSuccess" : "cudaError";
}
cudaError_t cudaFuncSetAttribute(const void *, enum cudaFuncAttribute, int v)
{
	return v > (227 << 10) ? cudaErrorInvalidValue : cudaSuccess;
}

/* ------------------------------------------------------------ memory */

/* cudaMalloc and cudaHostAlloc: ALIGN-aligned memory, recorded in `mem`. */
static cudaError_t track_alloc(std::map<uintptr_t, size_t> &mem, size_t align, void **p, size_t n)
{
	*p = aligned_alloc(align, (n + align - 1) & ~(align - 1));
	if (!*p)
		return refuse(cudaErrorMemoryAllocation);
	std::lock_guard<std::recursive_mutex> lock(dev_mu);
	mem[(uintptr_t)*p] = n;
	return cudaSuccess;
}

/* cudaFree and cudaFreeHost: both let every stream's queued work run first
 * (they synchronize the device on a GPU too). */
static cudaError_t untrack_free(std::map<uintptr_t, size_t> &mem, void *p)
{
	if (!p)
		return cudaSuccess;
	std::lock_guard<std::recursive_mutex> lock(dev_mu);
	if (!mem.erase((uintptr_t)p))
		return refuse(cudaErrorInvalidValue);
	drain_all();
	free(p);
	return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t n)
{
	cudaError_t e = track_alloc(device_mem, 256, p, n);
	if (e == cudaSuccess)
		memset(*p, 0xa5, n); /* device memory starts with garbage */
	return e;
}
cudaError_t cudaFree(void *p) { return untrack_free(device_mem, p); }
cudaError_t cudaHostAlloc(void **p, size_t n, unsigned int)
{
	return track_alloc(pinned_mem, 4096, p, n);
}
cudaError_t cudaFreeHost(void *p) { return untrack_free(pinned_mem, p); }

cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, enum cudaMemcpyKind kind,
			    cudaStream_t stream)
{
	std::lock_guard<std::recursive_mutex> lock(dev_mu);
	const bool d_dev = inside(device_mem, d), s_dev = inside(device_mem, s);
	const bool to_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
	const bool from_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
	if ((to_dev && !d_dev) || (from_dev && !s_dev) ||
	    (kind == cudaMemcpyHostToDevice && s_dev) || (kind == cudaMemcpyDeviceToHost && d_dev)) {
		fprintf(stderr, "cuemu: cudaMemcpyAsync kind %d: %p <- %p (%zu bytes) not of that kind\n",
			(int)kind, d, s, n);
		return refuse(cudaErrorInvalidValue);
	}
	CUstream_st *st = stream_of(stream);
	if (!d_dev && !inside(pinned_mem, d)) {
		/* into pageable memory: returns when the copy is done */
		drain(st, st->queued);
		memmove(d, s, n);
		return cudaSuccess;
	}
	if (!s_dev && !inside(pinned_mem, s)) {
		/* from pageable memory: the source is staged at the call */
		auto staged = std::make_shared<std::vector<unsigned char>>(
			(const unsigned char *)s, (const unsigned char *)s + n);
		enqueue(st, [d, staged, n] { memcpy(d, staged->data(), n); });
		if (run_order() == ORDER_COPIES_EARLY)
			drain(st, st->queued);
		return cudaSuccess;
	}
	enqueue(st, [d, s, n] { memmove(d, s, n); });
	if (run_order() == ORDER_COPIES_EARLY && d_dev && !s_dev)
		drain(st, st->queued);
	return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t stream)
{
	std::lock_guard<std::recursive_mutex> lock(dev_mu);
	if (n && !inside(device_mem, d))
		return refuse(cudaErrorInvalidValue);
	enqueue(stream_of(stream), [d, v, n] { memset(d, v, n); });
	return cudaSuccess;
}

/* ------------------------------------------------------------ streams, events */

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int)
{
	std::lock_guard<std::recursive_mutex> lock(dev_mu);
	*s = new CUstream_st();
	streams.push_back(*s);
	return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream)
{
	std::lock_guard<std::recursive_mutex> lock(dev_mu);
	CUstream_st *s = stream_of(stream);
	drain(s, s->queued);
	return cudaSuccess;
}
/* The stream's work finishes; the record stays (in `streams`), so that waits
 * queued elsewhere that name it stay valid. */
cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
	std::lock_guard<std::recursive_mutex> lock(dev_mu);
	if (!stream || stream->destroyed)
		return refuse(cudaErrorInvalidValue);
	drain(stream, stream->queued);
	stream->destroyed = true;
	return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t e, unsigned int)
{
	std::lock_guard<std::recursive_mutex> lock(dev_mu);
	if (!e->s)
		return cudaSuccess; /* never recorded: nothing to wait for */
	CUstream_st *other = e->s;
	const uint64_t seq = e->seq; /* the record as of this call */
	enqueue(stream_of(stream), [other, seq] { drain(other, seq); });
	return cudaSuccess;
}
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
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t stream)
{
	std::lock_guard<std::recursive_mutex> lock(dev_mu);
	CUstream_st *s = stream_of(stream);
	std::shared_ptr<double> t = std::make_shared<double>(0.0);
	e->t = t;
	e->s = s;
	e->seq = s->queued + 1;
	enqueue(s, [t] { *t = host_now(); });
	return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e)
{
	std::lock_guard<std::recursive_mutex> lock(dev_mu);
	if (e->s)
		drain(e->s, e->seq);
	return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t e)
{
	static const bool never_ready = env_flag("CUEMU_NOTREADY");
	std::lock_guard<std::recursive_mutex> lock(dev_mu);
	if (!never_ready) {
		if (event_done(e))
			return cudaSuccess;
		drain(e->s, e->s->done + 1); /* the device moves on meanwhile */
	}
	/* the real runtime keeps "not ready" as the thread's last error too: the
	 * next cudaGetLastError (a launch check) returns it unless it is cleared */
	return refuse(cudaErrorNotReady);
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b)
{
	std::lock_guard<std::recursive_mutex> lock(dev_mu);
	if (!a->s || !b->s)
		return refuse(cudaErrorInvalidResourceHandle);
	if (!event_done(a) || !event_done(b))
		return cudaErrorNotReady;
	*ms = (float)((*b->t - *a->t) * 1e3);
	return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e)
{
	delete e; /* a record still queued keeps its own time cell */
	return cudaSuccess;
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
cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t s)
{
	h->stream = s;
	return CUBLAS_STATUS_SUCCESS;
}
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

/* Column-major C = α op(A) op(B) + β C, float accumulation, queued on the
 * handle's stream; α and β are read at the call (host pointer mode). */
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
			    int n, int k, const void *alpha, const void *A, cudaDataType at, int lda,
			    const void *B, cudaDataType bt, int ldb, const void *beta, void *C,
			    cudaDataType ct, int ldc, cublasComputeType_t, cublasGemmAlgo_t)
{
	if (ct != CUDA_R_32F || (at != CUDA_R_16BF && at != CUDA_R_32F) ||
	    (bt != CUDA_R_16BF && bt != CUDA_R_32F))
		return CUBLAS_STATUS_NOT_SUPPORTED;
	std::lock_guard<std::recursive_mutex> lock(dev_mu);
	if (!inside(device_mem, A) || !inside(device_mem, B) || !inside(device_mem, C))
		return CUBLAS_STATUS_INVALID_VALUE;
	const float al = *(const float *)alpha, be = *(const float *)beta;
	enqueue(stream_of(h->stream), [=] {
		float *c = (float *)C;
		for (int j = 0; j < n; j++)
			for (int i = 0; i < m; i++) {
				float acc = 0;
				for (int p = 0; p < k; p++) {
					/* op(A)[i][p], op(B)[p][j] */
					size_t ai = ta == CUBLAS_OP_N ? (size_t)i + (size_t)p * lda
								      : (size_t)p + (size_t)i * lda;
					size_t bi = tb == CUBLAS_OP_N ? (size_t)p + (size_t)j * ldb
								      : (size_t)j + (size_t)p * ldb;
					acc += load_elem(A, at, ai) * load_elem(B, bt, bi);
				}
				float *dst = c + (size_t)i + (size_t)j * ldc;
				*dst = al * acc + (be != 0 ? be * *dst : 0.0f);
			}
	});
	return CUBLAS_STATUS_SUCCESS;
}
