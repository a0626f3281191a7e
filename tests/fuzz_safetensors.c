/* fuzz_safetensors.c — libFuzzer target for the safetensors header parser
 * (k2st_parse_buffer): any bytes must either parse into tensors whose payloads
 * lie inside the buffer without overlapping, or be refused with a message;
 * never crash, leak or read outside the buffer. Built by `make fuzz`. */
#include "layout.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fz {
	const uint8_t *data;
	size_t size;
	uint64_t total;
};

static int check_tensor(void *ctx, const k2st_tensor *t)
{
	struct fz *f = ctx;
	/* What the parser promises about every tensor it hands on. */
	if (t->offset > f->size || t->bytes > f->size - t->offset || t->ndim > K2P_MAX_DIMS ||
	    k2_dtype_size(t->dtype) == 0 || !t->name || !t->name[0])
		abort();
	uint64_t elems = 1;
	for (uint32_t i = 0; i < t->ndim; i++)
		elems *= t->shape[i];
	if (elems * k2_dtype_size(t->dtype) != t->bytes)
		abort();
	f->total += t->bytes;
	/* Touch the payload's ends so ASan sees any out-of-bounds offset. */
	if (t->bytes) {
		volatile uint8_t x = f->data[t->offset] ^ f->data[t->offset + t->bytes - 1];
		(void)x;
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A private copy sized exactly, so ASan flags a read one past the end. */
	uint8_t *copy = malloc(size ? size : 1);
	if (!copy)
		return 0;
	memcpy(copy, data, size);
	struct fz f = {copy, size, 0};
	k2_err err;
	int rc = k2st_parse_buffer(copy, size, "fuzz.safetensors", check_tensor, &f, &err);
	/* Non-overlapping payloads inside the data cannot sum past it. */
	if (rc == 0 && f.total > size)
		abort();
	if (rc < 0 && (err.msg[0] == '\0' || strncmp(err.msg, "fuzz.safetensors", 16) != 0))
		abort();
	free(copy);
	return 0;
}
