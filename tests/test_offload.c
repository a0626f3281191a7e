/* test_offload.c — Check suite for the --cpu-experts cost model
 * (infer/offload.c): the moving averages of the two measured rates and
 * the greedy placement of a layer's missed experts onto the copy pipeline or
 * the CPU. Pure arithmetic: runs without a GPU. */
#include "infer_impl.h"

#include <check.h>
#include <math.h>
#include <string.h>

START_TEST(nothing_measured_goes_to_gpu)
{
	inf_offload o = {0};
	uint32_t rows[3] = {1, 1, 1};
	uint8_t cpu[3] = {9, 9, 9};
	inf_offload_plan(&o, rows, NULL, 3, 0, 4, cpu);
	ck_assert(cpu[0] == 0 && cpu[1] == 0 && cpu[2] == 0);
	inf_offload_observe_upload(&o, 1e-3); /* one rate alone is not enough */
	inf_offload_plan(&o, rows, NULL, 3, 0, 4, cpu);
	ck_assert(cpu[0] == 0 && cpu[1] == 0 && cpu[2] == 0);
}
END_TEST

START_TEST(moving_averages)
{
	inf_offload o = {0};
	inf_offload_observe_upload(&o, 4e-3);
	ck_assert(fabs(o.upload_s - 4e-3) < 1e-12); /* the first observation is taken as is */
	inf_offload_observe_upload(&o, 8e-3);
	ck_assert(fabs(o.upload_s - 5e-3) < 1e-12); /* 0.75·4 + 0.25·8 ms */
	inf_offload_observe_upload(&o, 0);          /* nonsense is ignored */
	inf_offload_observe_upload(&o, NAN);
	ck_assert(fabs(o.upload_s - 5e-3) < 1e-12);
	inf_offload_observe_cpu(&o, 4, 8e-3);       /* per token */
	ck_assert(fabs(o.cpu_row_s - 2e-3) < 1e-12);
	inf_offload_observe_cpu(&o, 0, 1.0);
	ck_assert(fabs(o.cpu_row_s - 2e-3) < 1e-12);
	ck_assert_uint_eq(o.n_upload, 2);
	ck_assert_uint_eq(o.n_cpu, 1);
}
END_TEST

/* Upload 1 ms (4 readers: 0.25 ms per extra load), CPU 0.4 ms per token. */
START_TEST(greedy_two_queues)
{
	inf_offload o = {.upload_s = 1e-3, .cpu_row_s = 0.4e-3, .n_upload = 1, .n_cpu = 1};
	uint32_t rows[4] = {1, 1, 1, 1};
	uint8_t cpu[4];
	/* CPU ends at 0.4 < GPU 1.0: CPU; then 0.8 < 1.0: CPU; then 1.2 > 1.0: GPU;
	 * then CPU 1.2 vs GPU 1.25: CPU */
	inf_offload_plan(&o, rows, NULL, 4, 0, 4, cpu);
	ck_assert_int_eq(cpu[0] + cpu[1] + cpu[2] + cpu[3], 3);
	ck_assert(cpu[0] && cpu[1] && !cpu[2] && cpu[3]);
	/* a slow CPU gets nothing */
	o.cpu_row_s = 5e-3;
	inf_offload_plan(&o, rows, NULL, 4, 0, 4, cpu);
	ck_assert_int_eq(cpu[0] + cpu[1] + cpu[2] + cpu[3], 0);
	/* a busy copy pipeline sends more to the CPU */
	o.cpu_row_s = 2e-3;
	inf_offload_plan(&o, rows, NULL, 4, 0, 4, cpu);
	ck_assert_int_eq(cpu[0] + cpu[1] + cpu[2] + cpu[3], 0);
	inf_offload_plan(&o, rows, NULL, 4, 10e-3, 4, cpu);
	ck_assert_int_eq(cpu[0] + cpu[1] + cpu[2] + cpu[3], 4);
}
END_TEST

/* Fewest tokens first: a big expert (many rows) stays on the GPU. */
START_TEST(rows_order)
{
	inf_offload o = {.upload_s = 1e-3, .cpu_row_s = 0.3e-3, .n_upload = 1, .n_cpu = 1};
	uint32_t rows[3] = {24, 1, 2};
	uint8_t cpu[3];
	inf_offload_plan(&o, rows, NULL, 3, 0, 1, cpu);
	ck_assert(!cpu[0] && cpu[1] && cpu[2]);
}
END_TEST

/* An expert not in RAM pays its read on the CPU side too. */
START_TEST(ram_misses_pay_the_read)
{
	inf_offload o = {.upload_s = 1e-3, .cpu_row_s = 0.2e-3, .n_upload = 1, .n_cpu = 1};
	uint32_t rows[2] = {1, 1};
	uint8_t in_ram[2] = {1, 0}, cpu[2];
	/* unmeasured read = an upload: 0.2 + (1.0 + 0.2) = 1.4 > 1.0 → GPU */
	inf_offload_plan(&o, rows, in_ram, 2, 0, 1, cpu);
	ck_assert(cpu[0] && !cpu[1]);
	/* a fast measured read (page cache): 0.2 + 0.1 + 0.2 = 0.5 < 1.0 → CPU */
	inf_offload_observe_read(&o, 0.1e-3);
	inf_offload_plan(&o, rows, in_ram, 2, 0, 1, cpu);
	ck_assert(cpu[0] && cpu[1]);
}
END_TEST

static Suite *offload_suite(void)
{
	Suite *s = suite_create("inf_offload");
	TCase *t = tcase_create("cost model");
	tcase_add_test(t, nothing_measured_goes_to_gpu);
	tcase_add_test(t, moving_averages);
	tcase_add_test(t, greedy_two_queues);
	tcase_add_test(t, rows_order);
	tcase_add_test(t, ram_misses_pay_the_read);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(offload_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
