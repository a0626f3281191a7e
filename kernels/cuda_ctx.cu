/* cuda_ctx.cu — the CUDA backend's context (device, compute stream, cuBLAS
 * handle, timing events, op scratch), device and pinned memory, copies, and the
 * error recording every other .cu file goes through. */
#include "cuda_common.cuh"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

int kcu_fail(kcu_ctx *ctx, cudaError_t e, const char *what, const char *file, int line)
{
	if (ctx)
		snprintf(ctx->err, sizeof(ctx->err), "%s:%d: %s: %s (%s)", file, line, what,
			 cudaGetErrorString(e), cudaGetErrorName(e));
	return e == cudaErrorMemoryAllocation ? -ENOMEM : -EIO;
}

int kcu_fail_blas(kcu_ctx *ctx, cublasStatus_t s, const char *what, const char *file,
		  int line)
{
	if (ctx)
		snprintf(ctx->err, sizeof(ctx->err), "%s:%d: %s: cuBLAS %s (%s)", file, line,
			 what, cublasGetStatusString(s), cublasGetStatusName(s));
	return s == CUBLAS_STATUS_ALLOC_FAILED ? -ENOMEM : -EIO;
}

int kcu_bad_arg(kcu_ctx *ctx, const char *op, const char *why)
{
	if (ctx)
		snprintf(ctx->err, sizeof(ctx->err), "%s: %s", op, why);
	return -EINVAL;
}

int kcu_scratch(kcu_ctx *ctx, size_t bytes, void **out)
{
	if (bytes <= ctx->scratch_bytes) {
		*out = ctx->scratch;
		return 0;
	}
	/* The old scratch may still be read by queued work: cudaFree waits for it. */
	if (ctx->scratch)
		KCU_CHECK(ctx, cudaFree(ctx->scratch));
	ctx->scratch = NULL;
	ctx->scratch_bytes = 0;
	size_t want = bytes < ((size_t)1 << 20) ? ((size_t)1 << 20) : bytes;
	KCU_CHECK(ctx, cudaMalloc(&ctx->scratch, want));
	ctx->scratch_bytes = want;
	*out = ctx->scratch;
	return 0;
}

extern "C" int kcu_device_count(void)
{
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);
	if (e != cudaSuccess) {
		(void)cudaGetLastError();
		return -ENODEV;
	}
	return n;
}

extern "C" int kcu_ctx_create(int device, kcu_ctx **out, k2_err *err)
{
	*out = NULL;
	int n = kcu_device_count();
	if (n <= 0)
		return k2_err_set(err, -ENODEV, "CUDA backend: no CUDA device (cudaGetDeviceCount: %s)",
				  n == 0 ? "0 devices" : "no driver");
	if (device < 0 || device >= n)
		return k2_err_set(err, -ENODEV, "CUDA backend: device %d asked for, %d present",
				  device, n);
	kcu_ctx *ctx = (kcu_ctx *)calloc(1, sizeof(*ctx));
	if (!ctx)
		return k2_err_set(err, -ENOMEM, "CUDA backend: out of host memory");
	ctx->device = device;
	int rc;
	cudaDeviceProp prop;
	cublasStatus_t bs;
	if ((rc = cudaSetDevice(device)) != cudaSuccess ||
	    (rc = cudaGetDeviceProperties(&prop, device)) != cudaSuccess ||
	    (rc = cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking)) != cudaSuccess ||
	    (rc = cudaEventCreate(&ctx->t0)) != cudaSuccess ||
	    (rc = cudaEventCreate(&ctx->t1)) != cudaSuccess) {
		int code = rc == cudaErrorMemoryAllocation ? -ENOMEM : -EIO;
		k2_err_set(err, code, "CUDA backend: device %d: %s", device,
			   cudaGetErrorString((cudaError_t)rc));
		kcu_ctx_destroy(ctx);
		return code;
	}
	ctx->sm_count = prop.multiProcessorCount;
	ctx->smem_optin = prop.sharedMemPerBlockOptin;
	bs = cublasCreate(&ctx->blas);
	if (bs == CUBLAS_STATUS_SUCCESS)
		bs = cublasSetStream(ctx->blas, ctx->stream);
	if (bs == CUBLAS_STATUS_SUCCESS)
		bs = cublasSetMathMode(ctx->blas, CUBLAS_DEFAULT_MATH);
	if (bs != CUBLAS_STATUS_SUCCESS) {
		k2_err_set(err, -EIO, "CUDA backend: device %d: cublasCreate: %s", device,
			   cublasGetStatusString(bs));
		kcu_ctx_destroy(ctx);
		return -EIO;
	}
	*out = ctx;
	return 0;
}

extern "C" void kcu_ctx_destroy(kcu_ctx *ctx)
{
	if (!ctx)
		return;
	cudaSetDevice(ctx->device);
	if (ctx->stream)
		cudaStreamSynchronize(ctx->stream);
	if (ctx->blas)
		cublasDestroy(ctx->blas);
	if (ctx->scratch)
		cudaFree(ctx->scratch);
	if (ctx->t0)
		cudaEventDestroy(ctx->t0);
	if (ctx->t1)
		cudaEventDestroy(ctx->t1);
	if (ctx->stream)
		cudaStreamDestroy(ctx->stream);
	(void)cudaGetLastError();
	free(ctx);
}

extern "C" int kcu_ctx_info(kcu_ctx *ctx, kcu_info *out)
{
	memset(out, 0, sizeof(*out));
	cudaDeviceProp prop;
	KCU_CHECK(ctx, cudaGetDeviceProperties(&prop, ctx->device));
	snprintf(out->name, sizeof(out->name), "%s", prop.name);
	out->device = ctx->device;
	out->cc_major = prop.major;
	out->cc_minor = prop.minor;
	out->sm_count = prop.multiProcessorCount;
	out->l2_bytes = (uint64_t)prop.l2CacheSize;
	out->smem_per_block = prop.sharedMemPerBlockOptin;
	size_t fr = 0, tot = 0;
	KCU_CHECK(ctx, cudaMemGetInfo(&fr, &tot));
	out->mem_free = fr;
	out->mem_total = tot;
	KCU_CHECK(ctx, cudaRuntimeGetVersion(&out->runtime_version));
	KCU_CHECK(ctx, cudaDriverGetVersion(&out->driver_version));
	return 0;
}

extern "C" const char *kcu_ctx_error(const kcu_ctx *ctx)
{
	return ctx ? ctx->err : "CUDA backend: no context";
}

extern "C" int kcu_alloc(kcu_ctx *ctx, size_t bytes, void **dptr)
{
	*dptr = NULL;
	if (bytes == 0)
		return kcu_bad_arg(ctx, "kcu_alloc", "zero bytes");
	KCU_CHECK(ctx, cudaMalloc(dptr, bytes));
	return 0;
}

extern "C" void kcu_free(kcu_ctx *ctx, void *dptr)
{
	if (!dptr)
		return;
	cudaError_t e = cudaFree(dptr);
	if (e != cudaSuccess)
		kcu_fail(ctx, e, "cudaFree", __FILE__, __LINE__);
}

extern "C" int kcu_host_alloc(kcu_ctx *ctx, size_t bytes, void **ptr)
{
	*ptr = NULL;
	if (bytes == 0)
		return kcu_bad_arg(ctx, "kcu_host_alloc", "zero bytes");
	KCU_CHECK(ctx, cudaHostAlloc(ptr, bytes, cudaHostAllocPortable));
	return 0;
}

extern "C" void kcu_host_free(kcu_ctx *ctx, void *ptr)
{
	if (!ptr)
		return;
	cudaError_t e = cudaFreeHost(ptr);
	if (e != cudaSuccess)
		kcu_fail(ctx, e, "cudaFreeHost", __FILE__, __LINE__);
}

extern "C" int kcu_upload(kcu_ctx *ctx, void *dst, const void *src, size_t n)
{
	if (n == 0)
		return 0;
	KCU_CHECK(ctx, cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, ctx->stream));
	KCU_CHECK(ctx, cudaStreamSynchronize(ctx->stream));
	return 0;
}

extern "C" int kcu_download(kcu_ctx *ctx, void *dst, const void *src, size_t n)
{
	if (n == 0)
		return kcu_sync(ctx);
	KCU_CHECK(ctx, cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, ctx->stream));
	KCU_CHECK(ctx, cudaStreamSynchronize(ctx->stream));
	return 0;
}

extern "C" int kcu_memset(kcu_ctx *ctx, void *dst, int byte, size_t n)
{
	if (n == 0)
		return 0;
	KCU_CHECK(ctx, cudaMemsetAsync(dst, byte, n, ctx->stream));
	return 0;
}

extern "C" int kcu_copy(kcu_ctx *ctx, void *dst, const void *src, size_t n)
{
	if (n == 0)
		return 0;
	KCU_CHECK(ctx, cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, ctx->stream));
	return 0;
}

extern "C" int kcu_sync(kcu_ctx *ctx)
{
	KCU_CHECK(ctx, cudaStreamSynchronize(ctx->stream));
	return 0;
}

extern "C" int kcu_timer_begin(kcu_ctx *ctx)
{
	KCU_CHECK(ctx, cudaEventRecord(ctx->t0, ctx->stream));
	ctx->timer_started = 1;
	return 0;
}

extern "C" int kcu_timer_end(kcu_ctx *ctx, double *seconds)
{
	*seconds = 0;
	if (!ctx->timer_started)
		return kcu_bad_arg(ctx, "kcu_timer_end", "kcu_timer_begin was not called");
	ctx->timer_started = 0;
	KCU_CHECK(ctx, cudaEventRecord(ctx->t1, ctx->stream));
	KCU_CHECK(ctx, cudaEventSynchronize(ctx->t1));
	float ms = 0;
	KCU_CHECK(ctx, cudaEventElapsedTime(&ms, ctx->t0, ctx->t1));
	*seconds = ms * 1e-3;
	return 0;
}
