/* backend.c — opening a backend by name (backend.h). */
#include "backend.h"

#include <errno.h>
#include <string.h>

int kern_backend_open(const char *name, int device, kern_backend **out, k2_err *err)
{
	*out = NULL;
	if (!name || strcmp(name, "cpu") == 0)
		return kern_backend_cpu_open(out, err);
	if (strcmp(name, "cuda") == 0)
		return kern_backend_cuda_open(device, out, err);
	return k2_err_set(err, -ENOENT, "unknown backend '%s' (%s)", name, kern_backend_names());
}

void kern_backend_close(kern_backend *b)
{
	if (b)
		b->ops->destroy(b);
}

int kern_backend_known(const char *name)
{
	return name && (strcmp(name, "cpu") == 0 || strcmp(name, "cuda") == 0);
}

int kern_backend_available(const char *name)
{
	if (strcmp(name, "cpu") == 0)
		return 1;
	if (strcmp(name, "cuda") == 0)
		return kern_backend_cuda_available();
	return 0;
}

const char *kern_backend_default(void)
{
	return kern_backend_cuda_available() ? "cuda" : "cpu";
}

const char *kern_backend_names(void)
{
	return "cpu, cuda";
}
