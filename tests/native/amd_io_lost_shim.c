/*
 * amd_io_lost_shim.c - an AMD SMI whose GPU starts answering AMDSMI_STATUS_IO, as reads of a
 * GPU that fell off the bus do (the simulator's `lost` fault gives only NOT_FOUND).
 *
 * Linked in front of the simulated libamd_smi.so (which serves every other symbol, as in
 * power_instant_shim.c): amdsmi_get_temp_metric fails with IO (12) after its first
 * egs_shim_temp_after calls, and amdsmi_stop_gpu_event_notification is counted, so a test
 * can see the core free a lost device's event state on close.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdint.h>

#define AMDSMI_STATUS_IO 12

typedef int (*fn_temp)(void *, int, int, int64_t *);
typedef int (*fn_stop)(void *);

static fn_temp real_temp;
static fn_stop real_stop;

atomic_int egs_shim_temp_calls;
atomic_int egs_shim_stop_calls;
int egs_shim_temp_after = 3;

__attribute__((constructor)) static void find_real(void)
{
    real_temp = (fn_temp)dlsym(RTLD_NEXT, "amdsmi_get_temp_metric");
    real_stop = (fn_stop)dlsym(RTLD_NEXT, "amdsmi_stop_gpu_event_notification");
}

int amdsmi_get_temp_metric(void *processor, int sensor, int metric, int64_t *value)
{
    if (atomic_fetch_add(&egs_shim_temp_calls, 1) >= egs_shim_temp_after)
        return AMDSMI_STATUS_IO;
    return real_temp(processor, sensor, metric, value);
}

int amdsmi_stop_gpu_event_notification(void *processor)
{
    atomic_fetch_add(&egs_shim_stop_calls, 1);
    return real_stop(processor);
}
