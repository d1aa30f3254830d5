/*
 * amd_centi_temp_shim.c - an AMD SMI whose metrics table holds temperatures in centi-degrees.
 *
 * amdsmi_gpu_metrics_t states no unit for its temperatures and the kernel's gpu_metrics
 * tables differ by version; this library, linked in front of the simulated libamd_smi.so (as
 * amd_io_lost_shim.c is), multiplies the table's edge temperature (offset 4, uint16) by 100
 * while amdsmi_get_temp_metric keeps answering in degrees.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <string.h>

#define EDGE_OFFSET 4

typedef int (*fn_metrics)(void *, void *);

static fn_metrics real;

__attribute__((constructor)) static void find_real(void)
{
    real = (fn_metrics)dlsym(RTLD_NEXT, "amdsmi_get_gpu_metrics_info");
}

int amdsmi_get_gpu_metrics_info(void *processor, void *metrics)
{
    int rc = real(processor, metrics);
    if (rc == 0) {
        uint16_t c;
        memcpy(&c, (char *)metrics + EDGE_OFFSET, sizeof(c));
        if (c != 0xFFFF) {
            c = (uint16_t)(c * 100);
            memcpy((char *)metrics + EDGE_OFFSET, &c, sizeof(c));
        }
    }
    return rc;
}
