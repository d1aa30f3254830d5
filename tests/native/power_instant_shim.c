/*
 * power_instant_shim.c - an NVML whose POWER_INSTANT field stops answering mid-run.
 *
 * The simulator cannot express it (its `unsupported` fault on `power` silences the field and
 * nvmlDeviceGetPowerUsage together), so this library sits in front of it: linked against
 * the simulated libnvidia-ml.so.1 (--no-as-needed, so the link stays), it defines
 * nvmlDeviceGetFieldValues only, and dlsym on its handle finds every other symbol in that
 * dependency. After the first egs_shim_fields_after calls, every entry answers
 * NOT_SUPPORTED, as for a field the driver stopped exposing; nvmlDeviceGetPowerUsage keeps
 * working.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>

typedef int (*fn_field_values)(void *, int, void *);

/* nvmlFieldValue_t: 40 bytes, nvmlReturn at offset 28 (see nvml.c's struct nv_field_value). */
#define FIELD_VALUE_SIZE 40
#define FIELD_RETURN_OFFSET 28
#define NVML_ERROR_NOT_SUPPORTED 3

atomic_int egs_shim_fields_calls;
int egs_shim_fields_after = 5;

static fn_field_values real;

__attribute__((constructor)) static void find_real(void)
{
    real = (fn_field_values)dlsym(RTLD_NEXT, "nvmlDeviceGetFieldValues");
}

int nvmlDeviceGetFieldValues(void *device, int count, void *values)
{
    int rc = real(device, count, values);
    if (rc == 0 && atomic_fetch_add(&egs_shim_fields_calls, 1) >= egs_shim_fields_after)
        for (int i = 0; i < count; i++)
            *(int *)((char *)values + (long)i * FIELD_VALUE_SIZE + FIELD_RETURN_OFFSET) = NVML_ERROR_NOT_SUPPORTED;
    return rc;
}
