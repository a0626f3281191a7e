/* readpass.c — kern_read_pass: reads a buffer once on the kernels' threads,
 * in the tasks and with the widest loads the products use, doing nothing else
 * with the bytes: the memory read rate a product that reads each weight once
 * can at best reach. Benchmarks measure it beside the products they time. */
#include "kernels_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Bytes a task reads: the products' own task size at batch 1. */
#define READ_TASK ((size_t)64 << 10)

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

__attribute__((target("avx512f"))) static uint64_t read_avx512(const char *p, size_t n)
{
	__m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
	size_t i = 0;
	for (; i + 256 <= n; i += 256) {
		a0 = _mm512_xor_si512(a0, _mm512_loadu_si512((const void *)(p + i)));
		a1 = _mm512_xor_si512(a1, _mm512_loadu_si512((const void *)(p + i + 64)));
		a2 = _mm512_xor_si512(a2, _mm512_loadu_si512((const void *)(p + i + 128)));
		a3 = _mm512_xor_si512(a3, _mm512_loadu_si512((const void *)(p + i + 192)));
	}
	__m512i a = _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3));
	uint64_t lanes[8], s = 0;
	_mm512_storeu_si512((void *)lanes, a);
	for (int k = 0; k < 8; k++)
		s ^= lanes[k];
	for (; i < n; i++)
		s ^= (uint8_t)p[i];
	return s;
}

__attribute__((target("avx2"))) static uint64_t read_avx2(const char *p, size_t n)
{
	__m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
	size_t i = 0;
	for (; i + 128 <= n; i += 128) {
		a0 = _mm256_xor_si256(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
		a1 = _mm256_xor_si256(a1, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
		a2 = _mm256_xor_si256(a2, _mm256_loadu_si256((const __m256i *)(p + i + 64)));
		a3 = _mm256_xor_si256(a3, _mm256_loadu_si256((const __m256i *)(p + i + 96)));
	}
	__m256i a = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
	uint64_t lanes[4], s = 0;
	_mm256_storeu_si256((__m256i *)lanes, a);
	for (int k = 0; k < 4; k++)
		s ^= lanes[k];
	for (; i < n; i++)
		s ^= (uint8_t)p[i];
	return s;
}
#endif

static uint64_t read_generic(const char *p, size_t n)
{
	uint64_t s0 = 0, s1 = 0;
	size_t i = 0;
	for (; i + 16 <= n; i += 16) {
		uint64_t a, b;
		memcpy(&a, p + i, 8);
		memcpy(&b, p + i + 8, 8);
		s0 ^= a;
		s1 ^= b;
	}
	for (; i < n; i++)
		s0 ^= (uint8_t)p[i];
	return s0 ^ s1;
}

struct read_job {
	const char *p;
	size_t n;
	int isa;
	uint64_t *sums;   /* [tasks], one each: no two threads write one */
};

static void read_task(void *ctx, uint32_t i)
{
	struct read_job *j = ctx;
	const size_t off = (size_t)i * READ_TASK;
	const size_t n = j->n - off < READ_TASK ? j->n - off : READ_TASK;
	const char *p = j->p + off;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
	if (j->isa == KERN_ISA_AVX512) {
		j->sums[i] = read_avx512(p, n);
		return;
	}
	if (j->isa == KERN_ISA_AVX2) {
		j->sums[i] = read_avx2(p, n);
		return;
	}
#endif
	j->sums[i] = read_generic(p, n);
}

int kern_read_pass(const void *buf, size_t n, uint64_t *checksum)
{
	const size_t tasks = (n + READ_TASK - 1) / READ_TASK;
	if (tasks > UINT32_MAX)
		return -EINVAL;
	struct read_job j = {.p = buf, .n = n, .isa = kern_isa(),
			     .sums = calloc(tasks ? tasks : 1, sizeof(uint64_t))};
	if (!j.sums)
		return -ENOMEM;
	kern_pool_run(read_task, &j, (uint32_t)tasks);
	uint64_t s = 0;
	for (size_t i = 0; i < tasks; i++)
		s ^= j.sums[i];
	free(j.sums);
	*checksum = s;
	return 0;
}
