/* offload.c — the cost model of --cpu-experts (infer_impl.h): where a missed
 * expert is computed. Two queues work side by side while the device runs the
 * ready experts: the copy pipeline (read from the mount into pinned staging,
 * copy to a device slot) and the CPU (compute from the expert's RAM copy,
 * read first when it is not in RAM). Each missed expert, fewest tokens first,
 * goes to the queue that would finish it sooner; the rates are moving
 * averages of what the run measured. */
#include "infer_impl.h"

#include <stdlib.h>

/* Weight of a new observation in the moving averages. */
#define OFFLOAD_ALPHA 0.25

static double ema(double old, uint32_t n, double v)
{
	return n == 0 ? v : (1 - OFFLOAD_ALPHA) * old + OFFLOAD_ALPHA * v;
}

void inf_offload_observe_upload(inf_offload *o, double seconds)
{
	if (!(seconds > 0))
		return;
	o->upload_s = ema(o->upload_s, o->n_upload++, seconds);
}

void inf_offload_observe_read(inf_offload *o, double seconds)
{
	if (!(seconds > 0))
		return;
	o->read_s = ema(o->read_s, o->n_read++, seconds);
}

void inf_offload_observe_cpu(inf_offload *o, uint32_t rows, double seconds)
{
	if (rows == 0 || !(seconds > 0))
		return;
	o->cpu_row_s = ema(o->cpu_row_s, o->n_cpu++, seconds / rows);
}

void inf_offload_plan(const inf_offload *o, const uint32_t *rows, const uint8_t *in_ram,
		      uint32_t n, double busy_s, uint32_t io_par, uint8_t *on_cpu)
{
	for (uint32_t i = 0; i < n; i++)
		on_cpu[i] = 0;
	if (n == 0 || !(o->upload_s > 0) || !(o->cpu_row_s > 0))
		return; /* nothing measured yet: everything goes to the GPU */
	const double per_load = o->upload_s / (io_par ? io_par : 1);
	double copy_t = busy_s, cpu_t = 0;
	uint8_t *done = calloc(n, 1);
	if (!done)
		return;
	for (uint32_t k = 0; k < n; k++) {
		uint32_t best = n;
		for (uint32_t i = 0; i < n; i++)
			if (!done[i] && (best == n || rows[i] < rows[best]))
				best = i;
		done[best] = 1;
		/* the first load pays its whole latency; loads behind it overlap */
		const double copy_end = copy_t + (copy_t > 0 ? per_load : o->upload_s);
		/* a RAM miss is read first; unmeasured, it costs an upload's time */
		const double read = !in_ram || in_ram[best] ? 0
				    : o->n_read ? o->read_s : o->upload_s;
		const double cpu_end = cpu_t + read + rows[best] * o->cpu_row_s;
		if (cpu_end < copy_end) {
			on_cpu[best] = 1;
			cpu_t = cpu_end;
		} else
			copy_t = copy_end;
	}
	free(done);
}
