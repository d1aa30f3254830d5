/*
 * label_failure_shim.c - an NVML whose name, UUID and driver version calls fail.
 *
 * The simulator always answers them, so this library sits in front of it the way
 * power_instant_shim.c does (linked against the simulated libnvidia-ml.so.1, which serves
 * every other symbol) and answers these three with NVML_ERROR_UNKNOWN, leaving the caller's
 * buffer untouched: what a driver in a bad state can do.
 */
#define NVML_ERROR_UNKNOWN 999

int nvmlDeviceGetName(void *device, char *name, unsigned int length)
{
    (void)device, (void)name, (void)length;
    return NVML_ERROR_UNKNOWN;
}

int nvmlDeviceGetUUID(void *device, char *uuid, unsigned int length)
{
    (void)device, (void)uuid, (void)length;
    return NVML_ERROR_UNKNOWN;
}

int nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    (void)version, (void)length;
    return NVML_ERROR_UNKNOWN;
}
