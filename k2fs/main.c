/* main.c — the k2fs program: `k2fs PACK MOUNTPOINT [options]` (k2fs --help). */
#include "k2fs.h"

int main(int argc, char **argv)
{
	return k2fs_main(argc, argv);
}
