/*
 * samples_gone_shim.c - an NVML whose sample buffers stop answering mid-run.
 *
 * Linked in front of the simulated libnvidia-ml.so.1 as power_instant_shim.c is: it defines
 * nvmlDeviceGetSamples only. After the first egs_shim_samples_after calls every call answers
 * NOT_SUPPORTED, as on a driver that stopped exposing the buffers, while the per-field calls
 * keep working; the core must move those fields to their own calls without losing them.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>

#define NVML_ERROR_NOT_SUPPORTED 3

typedef int (*fn_samples)(void *, int, unsigned long long, int *, unsigned int *, void *);

atomic_int egs_shim_samples_calls;
int egs_shim_samples_after = 20;

static fn_samples real;

__attribute__((constructor)) static void find_real(void)
{
    real = (fn_samples)dlsym(RTLD_NEXT, "nvmlDeviceGetSamples");
}

int nvmlDeviceGetSamples(void *device, int type, unsigned long long last_seen, int *value_type,
                         unsigned int *count, void *samples)
{
    if (atomic_fetch_add(&egs_shim_samples_calls, 1) >= egs_shim_samples_after)
        return NVML_ERROR_NOT_SUPPORTED;
    return real(device, type, last_seen, value_type, count, samples);
}
