/*
 * Simulated libnvidia-ml.so.1, driven by a scenario file.
 *
 * Build and CI machines have no NVIDIA GPU, yet the agent's native core and the official reader
 * (pynvml) must both be exercised against NVML's real calling conventions: versioned symbols,
 * caller-allocated structs with version words, per-entry return codes in field values, GPU_IS_LOST
 * after a device falls off the bus, XID events through event sets. This library implements the
 * subset of NVML those readers use, with the signatures, struct layouts and return codes of the
 * public nvml.h, and values taken from the scenario (native/sim/README.md).
 *
 * Built with -DSIM_NVML_LEGACY it leaves out the newer versioned entry points (nvmlInit_v2,
 * nvmlDeviceGetCount_v2, nvmlDeviceGetHandleByIndex_v2, nvmlDeviceGetTemperatureV,
 * nvmlDeviceGetMemoryInfo_v2, nvmlDeviceGetFieldValues), standing in for an old driver so the
 * core's fallback to older symbols can be tested.
 *
 * Thread safety: the scenario and device table are written only by init/shutdown under a
 * write lock; every query holds the read lock, and values are pure functions of the scenario
 * time, so the sampler thread and an event-waiting thread can call concurrently.
 */
#define _GNU_SOURCE
#include "scenario.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SIM_EXPORT __attribute__((visibility("default")))

typedef int nvmlReturn_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_ALREADY_INITIALIZED = 5,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_INSUFFICIENT_POWER = 8,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_IRQ_ISSUE = 11,
    NVML_ERROR_LIBRARY_NOT_FOUND = 12,
    NVML_ERROR_FUNCTION_NOT_FOUND = 13,
    NVML_ERROR_CORRUPTED_INFOROM = 14,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_RESET_REQUIRED = 16,
    NVML_ERROR_OPERATING_SYSTEM = 17,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18,
    NVML_ERROR_IN_USE = 19,
    NVML_ERROR_MEMORY = 20,
    NVML_ERROR_NO_DATA = 21,
    NVML_ERROR_VGPU_ECC_NOT_SUPPORTED = 22,
    NVML_ERROR_INSUFFICIENT_RESOURCES = 23,
    NVML_ERROR_FREQ_NOT_SUPPORTED = 24,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_DEPRECATED = 26,
    NVML_ERROR_NOT_READY = 27,
    NVML_ERROR_GPU_NOT_FOUND = 28,
    NVML_ERROR_INVALID_STATE = 29,
    NVML_ERROR_UNKNOWN = 999,
};

enum { NVML_TEMPERATURE_GPU = 0 };
enum { NVML_CLOCK_GRAPHICS = 0, NVML_CLOCK_SM = 1, NVML_CLOCK_MEM = 2, NVML_CLOCK_VIDEO = 3 };
enum {
    NVML_VALUE_TYPE_DOUBLE = 0,
    NVML_VALUE_TYPE_UNSIGNED_INT = 1,
    NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3,
};
enum {
    NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION = 83,
    NVML_FI_DEV_POWER_AVERAGE = 185,
    NVML_FI_DEV_POWER_INSTANT = 186,
    NVML_FI_MAX = 308, /* one past the largest field id of nvml.h API 13 */
};

#define NVML_EVENT_TYPE_XID_CRITICAL_ERROR 0x8ULL
/*
 * Every event type nvml.h (API 13) defines (nvmlEventTypeAll, 0xff9f). Sets may register for
 * any of them, as on a real H100 (driver 580.159.04); other bits get NOT_SUPPORTED. Only XID
 * events are ever raised by the simulator.
 */
#define SUPPORTED_EVENT_TYPES 0xff9fULL
#define NVML_NO_INSTANCE 0xFFFFFFFFu

/* PCI ids of a Tesla P100-PCIE-16GB, as NVML packs them: device << 16 | vendor. */
#define SIM_PCI_DEVICE_ID 0x15F810DEu
#define SIM_PCI_SUBSYS_ID 0x118F10DEu

struct nvml_dev {
    const struct sim_gpu *gpu;
    unsigned int index;
};
typedef struct nvml_dev *nvmlDevice_t;

typedef struct {
    char busIdLegacy[16];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;
#define NVML_MEMORY_V2 ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24)))

typedef struct {
    unsigned int version;
    int sensorType;
    int temperature;
} nvmlTemperature_t;
#define NVML_TEMPERATURE_V1 ((unsigned int)(sizeof(nvmlTemperature_t) | (1u << 24)))

typedef union {
    double dVal;
    int siVal;
    unsigned int uiVal;
    unsigned long ulVal;
    unsigned long long ullVal;
    signed long long sllVal;
    unsigned short usVal;
} nvmlValue_t;

typedef struct {
    unsigned int fieldId;
    unsigned int scopeId;
    long long timestamp;
    long long latencyUsec;
    int valueType;
    nvmlReturn_t nvmlReturn;
    nvmlValue_t value;
} nvmlFieldValue_t;

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlEventData_t;

/* The v1 event record, filled by the unversioned nvmlEventSetWait. */
typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
} nvmlEventData_v1_t;

_Static_assert(sizeof(nvmlPciInfo_t) == 68, "nvmlPciInfo_t layout");
_Static_assert(sizeof(nvmlFieldValue_t) == 40, "nvmlFieldValue_t layout");
_Static_assert(sizeof(nvmlTemperature_t) == 12, "nvmlTemperature_t layout");
_Static_assert(sizeof(nvmlMemory_v2_t) == 40, "nvmlMemory_v2_t layout");
_Static_assert(sizeof(nvmlMemory_t) == 24, "nvmlMemory_t layout");
_Static_assert(sizeof(nvmlUtilization_t) == 8, "nvmlUtilization_t layout");
_Static_assert(sizeof(nvmlEventData_t) == 32, "nvmlEventData_t layout");

#define EVENT_SET_MAGIC 0x45475345u /* "EGSE": catches stale or foreign pointers */

struct nvml_event_set {
    unsigned int magic;
    pthread_mutex_t mu;
    unsigned long long mask[SIM_MAX_GPUS];
    double registered_at[SIM_MAX_GPUS];
    uint32_t delivered[SIM_MAX_GPUS]; /* bit i: fault i of that device was delivered */
};
typedef struct nvml_event_set *nvmlEventSet_t;

static pthread_rwlock_t g_lock = PTHREAD_RWLOCK_INITIALIZER;
static struct sim_scenario g_scn;
static struct nvml_dev g_devs[SIM_MAX_GPUS];
static unsigned int g_ndevs;
static int g_refcount;
static double g_t0;

static double scenario_time(void)
{
    return sim_now() - g_t0;
}

/* ------------------------------------------------------------------------------------------ */
/* Init and shutdown                                                                          */

static nvmlReturn_t init_common(void)
{
    nvmlReturn_t rc = NVML_SUCCESS;
    pthread_rwlock_wrlock(&g_lock);
    if (g_refcount > 0) {
        g_refcount++;
        goto out;
    }
    if (sim_scenario_from_env("libnvidia-ml", &g_scn) != 0) {
        rc = NVML_ERROR_UNKNOWN;
        goto out;
    }
    if (g_scn.init_error != 0) {
        rc = g_scn.init_error;
        goto out;
    }
    g_ndevs = 0;
    for (int i = 0; i < g_scn.ngpus; i++) {
        if (g_scn.gpus[i].vendor != SIM_VENDOR_NVIDIA)
            continue;
        g_devs[g_ndevs].gpu = &g_scn.gpus[i];
        g_devs[g_ndevs].index = g_ndevs;
        g_ndevs++;
    }
    g_t0 = sim_now();
    g_refcount = 1;
out:
    pthread_rwlock_unlock(&g_lock);
    return rc;
}

SIM_EXPORT nvmlReturn_t nvmlInit(void)
{
    return init_common();
}

#ifndef SIM_NVML_LEGACY
SIM_EXPORT nvmlReturn_t nvmlInit_v2(void)
{
    return init_common();
}
#endif

SIM_EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags; /* NO_GPUS / NO_ATTACH change nothing for simulated devices */
    return init_common();
}

SIM_EXPORT nvmlReturn_t nvmlShutdown(void)
{
    nvmlReturn_t rc = NVML_SUCCESS;
    pthread_rwlock_wrlock(&g_lock);
    if (g_refcount == 0)
        rc = NVML_ERROR_UNINITIALIZED;
    else
        g_refcount--;
    pthread_rwlock_unlock(&g_lock);
    return rc;
}

SIM_EXPORT const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_ALREADY_INITIALIZED: return "Already Initialized";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_INSUFFICIENT_POWER: return "Insufficient External Power";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_IRQ_ISSUE: return "Interrupt Request Issue";
    case NVML_ERROR_LIBRARY_NOT_FOUND: return "NVML Shared Library Not Found";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_CORRUPTED_INFOROM: return "Corrupted infoROM";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_RESET_REQUIRED: return "GPU requires restart";
    case NVML_ERROR_OPERATING_SYSTEM: return "The operating system has blocked the request.";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch.";
    case NVML_ERROR_IN_USE: return "In use by another client";
    case NVML_ERROR_MEMORY: return "Insufficient Memory";
    case NVML_ERROR_NO_DATA: return "No data";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    case NVML_ERROR_DEPRECATED: return "Deprecated";
    case NVML_ERROR_NOT_READY: return "Not ready";
    case NVML_ERROR_GPU_NOT_FOUND: return "GPU not found";
    case NVML_ERROR_INVALID_STATE: return "Invalid state";
    default: return "Unknown Error";
    }
}

/*
 * Not part of the vendor API: marks this library as the simulator, so a tool or test can
 * tell it from a real driver with dlsym (once loaded by path, it also answers a later
 * dlopen of the plain soname in the same process). Returns the scenario in use, "(built-in)",
 * or NULL before a successful init.
 */
SIM_EXPORT const char *egs_sim_nvml_scenario(void)
{
    const char *path = NULL;
    pthread_rwlock_rdlock(&g_lock);
    if (g_refcount > 0)
        path = g_scn.path;
    pthread_rwlock_unlock(&g_lock);
    return path;
}

/* ------------------------------------------------------------------------------------------ */
/* Common query prologue                                                                      */

static nvmlReturn_t lock_initialized(void)
{
    pthread_rwlock_rdlock(&g_lock);
    if (g_refcount == 0) {
        pthread_rwlock_unlock(&g_lock);
        return NVML_ERROR_UNINITIALIZED;
    }
    return NVML_SUCCESS;
}

static int valid_handle(nvmlDevice_t d)
{
    uintptr_t base = (uintptr_t)g_devs, p = (uintptr_t)d;
    return p >= base && p < base + g_ndevs * sizeof g_devs[0] &&
           (p - base) % sizeof g_devs[0] == 0;
}

/*
 * On success holds the read lock (release with pthread_rwlock_unlock) and gives the device's
 * scenario entry and the scenario time. Applies the scenario's call latency and lost state.
 */
static nvmlReturn_t begin_query(nvmlDevice_t d, const void *out, const struct sim_gpu **g,
                                double *t)
{
    nvmlReturn_t rc = lock_initialized();
    if (rc != NVML_SUCCESS)
        return rc;
    if (!valid_handle(d) || !out) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
        goto error;
    }
    *g = d->gpu;
    *t = scenario_time();
    sim_sleep_us(sim_query_latency_us(&g_scn, *g, *t));
    if (sim_gpu_lost(*g, *t)) {
        rc = NVML_ERROR_GPU_IS_LOST;
        goto error;
    }
    return NVML_SUCCESS;
error:
    pthread_rwlock_unlock(&g_lock);
    return rc;
}

static nvmlReturn_t end_query(nvmlReturn_t rc)
{
    pthread_rwlock_unlock(&g_lock);
    return rc;
}

static unsigned int to_uint(double v)
{
    return v >= 4294967295.0 ? 4294967295u : (unsigned int)llround(v);
}

/* One scalar field, converted by `scale` and rounded; NOT_SUPPORTED when the scenario says so. */
static nvmlReturn_t read_uint(nvmlDevice_t d, int field, double scale, unsigned int *out)
{
    const struct sim_gpu *g;
    double t, v;
    nvmlReturn_t rc = begin_query(d, out, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    if (sim_gpu_field(g, field, t, &v) != 0)
        return end_query(NVML_ERROR_NOT_SUPPORTED);
    *out = to_uint(v * scale);
    return end_query(NVML_SUCCESS);
}

static nvmlReturn_t copy_string(const char *src, char *dst, unsigned int len)
{
    size_t n = strlen(src);
    if (n + 1 > len)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, n + 1);
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------------------------------ */
/* System                                                                                     */

SIM_EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    nvmlReturn_t rc = lock_initialized();
    if (rc != NVML_SUCCESS)
        return rc;
    rc = version ? copy_string(g_scn.driver_version, version, length) : NVML_ERROR_INVALID_ARGUMENT;
    return end_query(rc);
}

SIM_EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    char buf[96];
    nvmlReturn_t rc = lock_initialized();
    if (rc != NVML_SUCCESS)
        return rc;
    /* NVML's own version is the CUDA major version followed by the driver version. */
    snprintf(buf, sizeof buf, "12.%s", g_scn.driver_version);
    rc = version ? copy_string(buf, version, length) : NVML_ERROR_INVALID_ARGUMENT;
    return end_query(rc);
}

static nvmlReturn_t cuda_version(int *v)
{
    nvmlReturn_t rc = lock_initialized();
    if (rc != NVML_SUCCESS)
        return rc;
    if (!v)
        return end_query(NVML_ERROR_INVALID_ARGUMENT);
    *v = 12020;
    return end_query(NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) { return cuda_version(v); }
SIM_EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) { return cuda_version(v); }

/* ------------------------------------------------------------------------------------------ */
/* Enumeration and identity                                                                   */

static nvmlReturn_t device_count(unsigned int *count)
{
    nvmlReturn_t rc = lock_initialized();
    if (rc != NVML_SUCCESS)
        return rc;
    if (!count)
        return end_query(NVML_ERROR_INVALID_ARGUMENT);
    /* A lost device stays counted, as on a real host until the driver is reloaded. */
    *count = g_ndevs;
    return end_query(NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return device_count(count); }
#ifndef SIM_NVML_LEGACY
SIM_EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) { return device_count(count); }
#endif

static nvmlReturn_t handle_by_index(unsigned int index, nvmlDevice_t *device)
{
    nvmlReturn_t rc = lock_initialized();
    if (rc != NVML_SUCCESS)
        return rc;
    if (!device || index >= g_ndevs)
        return end_query(NVML_ERROR_INVALID_ARGUMENT);
    if (sim_gpu_lost(g_devs[index].gpu, scenario_time()))
        return end_query(NVML_ERROR_GPU_IS_LOST);
    *device = &g_devs[index];
    return end_query(NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return handle_by_index(index, device);
}
#ifndef SIM_NVML_LEGACY
SIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    return handle_by_index(index, device);
}
#endif

/*
 * Reads a PCI address the way the driver accepts it: "domain:bus:device.function" with any
 * number of domain digits, or "bus:device.function" for domain 0, hex in either case.
 */
static int parse_bus_id(const char *s, unsigned int v[4])
{
    char tail;
    if (sscanf(s, "%x:%x:%x.%x%c", &v[0], &v[1], &v[2], &v[3], &tail) == 4)
        return 0;
    v[0] = 0;
    return sscanf(s, "%x:%x.%x%c", &v[1], &v[2], &v[3], &tail) == 3 ? 0 : -1;
}

static int same_bus_id(const struct sim_gpu *g, const char *key)
{
    unsigned int v[4];
    return parse_bus_id(key, v) == 0 && v[0] == g->pci_domain && v[1] == g->pci_bus &&
           v[2] == g->pci_device && v[3] == g->pci_function;
}

/* Finds a device by UUID (which == 0) or PCI address (which == 1). */
static nvmlReturn_t handle_by(const char *key, int which, nvmlDevice_t *device)
{
    nvmlReturn_t rc = lock_initialized();
    if (rc != NVML_SUCCESS)
        return rc;
    if (!key || !device)
        return end_query(NVML_ERROR_INVALID_ARGUMENT);
    for (unsigned int i = 0; i < g_ndevs; i++) {
        const struct sim_gpu *g = g_devs[i].gpu;
        int match = which == 0 ? strcmp(g->uuid, key) == 0 : same_bus_id(g, key);
        if (!match)
            continue;
        if (sim_gpu_lost(g, scenario_time()))
            return end_query(NVML_ERROR_GPU_IS_LOST);
        *device = &g_devs[i];
        return end_query(NVML_SUCCESS);
    }
    return end_query(NVML_ERROR_NOT_FOUND);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    return handle_by(uuid, 0, device);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *bus_id, nvmlDevice_t *device)
{
    return handle_by(bus_id, 1, device);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByPciBusId(const char *bus_id, nvmlDevice_t *device)
{
    return handle_by(bus_id, 1, device);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned int *index)
{
    const struct sim_gpu *g;
    double t;
    nvmlReturn_t rc = begin_query(d, index, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    *index = d->index;
    return end_query(NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int length)
{
    const struct sim_gpu *g;
    double t;
    nvmlReturn_t rc = begin_query(d, name, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    return end_query(copy_string(g->name, name, length));
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int length)
{
    const struct sim_gpu *g;
    double t;
    nvmlReturn_t rc = begin_query(d, uuid, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    return end_query(copy_string(g->uuid, uuid, length));
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t d, unsigned int *minor)
{
    const struct sim_gpu *g;
    double t;
    nvmlReturn_t rc = begin_query(d, minor, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    *minor = d->index;
    return end_query(NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *pci)
{
    const struct sim_gpu *g;
    double t;
    nvmlReturn_t rc = begin_query(d, pci, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    memset(pci, 0, sizeof *pci);
    /* The legacy field predates 32-bit domains and carries a 4-digit one. */
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04X:%02X:%02X.%X",
             g->pci_domain & 0xffff, g->pci_bus, g->pci_device, g->pci_function);
    snprintf(pci->busId, sizeof pci->busId, "%s", g->pci_bus_id);
    pci->domain = g->pci_domain;
    pci->bus = g->pci_bus;
    pci->device = g->pci_device;
    pci->pciDeviceId = SIM_PCI_DEVICE_ID;
    pci->pciSubSystemId = SIM_PCI_SUBSYS_ID;
    return end_query(NVML_SUCCESS);
}

/* ------------------------------------------------------------------------------------------ */
/* Telemetry                                                                                  */

SIM_EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned int *temp)
{
    if (sensor != NVML_TEMPERATURE_GPU)
        return NVML_ERROR_INVALID_ARGUMENT;
    return read_uint(d, SIM_F_TEMPERATURE, 1.0, temp);
}

#ifndef SIM_NVML_LEGACY
SIM_EXPORT nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t d, nvmlTemperature_t *temp)
{
    unsigned int v;
    nvmlReturn_t rc;
    if (!temp)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (temp->version != NVML_TEMPERATURE_V1)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (temp->sensorType != NVML_TEMPERATURE_GPU)
        return NVML_ERROR_INVALID_ARGUMENT;
    rc = read_uint(d, SIM_F_TEMPERATURE, 1.0, &v);
    if (rc == NVML_SUCCESS)
        temp->temperature = (int)v;
    return rc;
}
#endif

SIM_EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *util)
{
    const struct sim_gpu *g;
    double t, gpu, mem;
    nvmlReturn_t rc = begin_query(d, util, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    /* One call reports both engines, so it is supported only when both are. */
    if (sim_gpu_field(g, SIM_F_UTILIZATION, t, &gpu) != 0 ||
        sim_gpu_field(g, SIM_F_MEMORY_BUSY, t, &mem) != 0)
        return end_query(NVML_ERROR_NOT_SUPPORTED);
    util->gpu = to_uint(gpu);
    util->memory = to_uint(mem);
    return end_query(NVML_SUCCESS);
}

/* Memory figures in bytes; used is clamped to the total. */
static nvmlReturn_t memory_bytes(nvmlDevice_t d, const void *out, unsigned long long *total,
                                 unsigned long long *used)
{
    const struct sim_gpu *g;
    double t, mib;
    nvmlReturn_t rc = begin_query(d, out, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    if (sim_gpu_field(g, SIM_F_MEMORY_USED_MIB, t, &mib) != 0)
        return end_query(NVML_ERROR_NOT_SUPPORTED);
    *total = g->memory_total_mib << 20;
    *used = (unsigned long long)llround(mib) << 20;
    if (*used > *total)
        *used = *total;
    return end_query(NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *mem)
{
    unsigned long long total, used;
    nvmlReturn_t rc = memory_bytes(d, mem, &total, &used);
    if (rc != NVML_SUCCESS)
        return rc;
    mem->total = total;
    mem->used = used;
    mem->free = total - used;
    return NVML_SUCCESS;
}

#ifndef SIM_NVML_LEGACY
SIM_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *mem)
{
    unsigned long long total, used;
    nvmlReturn_t rc;
    if (!mem)
        return NVML_ERROR_INVALID_ARGUMENT;
    /* Driver 580.159.04 (H100) answers any other version word here with FUNCTION_NOT_FOUND,
     * where nvmlDeviceGetTemperatureV says ARGUMENT_VERSION_MISMATCH; imitated as observed. */
    if (mem->version != NVML_MEMORY_V2)
        return NVML_ERROR_FUNCTION_NOT_FOUND;
    rc = memory_bytes(d, mem, &total, &used);
    if (rc != NVML_SUCCESS)
        return rc;
    /* The simulated driver reserves nothing, so v1 and v2 agree on used and free. */
    mem->total = total;
    mem->reserved = 0;
    mem->used = used;
    mem->free = total - used;
    return NVML_SUCCESS;
}
#endif

SIM_EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned int *milliwatts)
{
    /* Instantaneous, as on the pre-Ampere parts the scenarios model. */
    return read_uint(d, SIM_F_POWER, 1000.0, milliwatts);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t d, int type, unsigned int *mhz)
{
    switch (type) {
    case NVML_CLOCK_GRAPHICS:
    case NVML_CLOCK_SM:
        return read_uint(d, SIM_F_SM_CLOCK, 1.0, mhz);
    case NVML_CLOCK_MEM:
        return read_uint(d, SIM_F_MEMORY_CLOCK, 1.0, mhz);
    case NVML_CLOCK_VIDEO:
    default: {
        /* The scenario has no video clock, and a real driver answers NOT_SUPPORTED (not
         * INVALID_ARGUMENT) to clock types it does not know; validate the handle first. */
        const struct sim_gpu *g;
        double t;
        nvmlReturn_t rc = begin_query(d, mhz, &g, &t);
        return rc != NVML_SUCCESS ? rc : end_query(NVML_ERROR_NOT_SUPPORTED);
    }
    }
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetFanSpeed(nvmlDevice_t d, unsigned int *speed)
{
    return read_uint(d, SIM_F_FAN, 1.0, speed);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetFanSpeed_v2(nvmlDevice_t d, unsigned int fan,
                                                 unsigned int *speed)
{
    if (fan != 0)
        return NVML_ERROR_INVALID_ARGUMENT; /* every simulated board has one fan */
    return read_uint(d, SIM_F_FAN, 1.0, speed);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetNumFans(nvmlDevice_t d, unsigned int *num)
{
    const struct sim_gpu *g;
    double t, v;
    nvmlReturn_t rc = begin_query(d, num, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    if (sim_gpu_field(g, SIM_F_FAN, t, &v) != 0)
        return end_query(NVML_ERROR_NOT_SUPPORTED);
    *num = 1;
    return end_query(NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t d,
                                                            unsigned long long *millijoules)
{
    const struct sim_gpu *g;
    double t, joules;
    nvmlReturn_t rc = begin_query(d, millijoules, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    if (sim_gpu_field(g, SIM_F_ENERGY, t, &joules) != 0)
        return end_query(NVML_ERROR_NOT_SUPPORTED);
    *millijoules = (unsigned long long)llround(joules * 1000.0);
    return end_query(NVML_SUCCESS);
}

#ifndef SIM_NVML_LEGACY
/* Average power over the last second: the power wave's integral over [t-1, t]. */
static int power_average_w(const struct sim_gpu *g, double t, double *out)
{
    double instant;
    if (sim_gpu_field(g, SIM_F_POWER, t, &instant) != 0)
        return -1;
    if (t < 1.0) {
        *out = instant;
        return 0;
    }
    const struct sim_wave *w = &g->fields[SIM_F_POWER];
    double avg = sim_wave_integral(w, t) - sim_wave_integral(w, t - 1.0);
    *out = avg < 0 ? 0 : avg;
    return 0;
}

static long long unix_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t d, int count, nvmlFieldValue_t *values)
{
    const struct sim_gpu *g;
    double t, v;
    nvmlReturn_t rc;
    if (count <= 0 || !values)
        return NVML_ERROR_INVALID_ARGUMENT;
    rc = begin_query(d, values, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    long long now_us = unix_us();
    long latency = sim_query_latency_us(&g_scn, g, t);
    for (int i = 0; i < count; i++) {
        nvmlFieldValue_t *fv = &values[i];
        fv->timestamp = now_us;
        fv->latencyUsec = latency;
        fv->value.ullVal = 0;
        switch (fv->fieldId) {
        case NVML_FI_DEV_POWER_INSTANT:
            fv->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
            if (sim_gpu_field(g, SIM_F_POWER, t, &v) != 0) {
                fv->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
                break;
            }
            fv->value.uiVal = to_uint(v * 1000.0);
            fv->nvmlReturn = NVML_SUCCESS;
            break;
        case NVML_FI_DEV_POWER_AVERAGE:
            fv->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
            if (power_average_w(g, t, &v) != 0) {
                fv->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
                break;
            }
            fv->value.uiVal = to_uint(v * 1000.0);
            fv->nvmlReturn = NVML_SUCCESS;
            break;
        case NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION:
            fv->valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
            if (sim_gpu_field(g, SIM_F_ENERGY, t, &v) != 0) {
                fv->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
                break;
            }
            fv->value.ullVal = (unsigned long long)llround(v * 1000.0);
            fv->nvmlReturn = NVML_SUCCESS;
            break;
        default:
            /* A real driver (580.159.04, H100) calls id 0 and ids past the last defined one
             * invalid, and a defined field the device lacks not supported. */
            fv->valueType = NVML_VALUE_TYPE_DOUBLE;
            fv->nvmlReturn = fv->fieldId == 0 || fv->fieldId >= NVML_FI_MAX
                                 ? NVML_ERROR_INVALID_ARGUMENT
                                 : NVML_ERROR_NOT_SUPPORTED;
            break;
        }
    }
    return end_query(NVML_SUCCESS);
}
#endif

/* ------------------------------------------------------------------------------------------ */
/* Events                                                                                     */

SIM_EXPORT nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t d,
                                                         unsigned long long *types)
{
    const struct sim_gpu *g;
    double t;
    nvmlReturn_t rc = begin_query(d, types, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    *types = SUPPORTED_EVENT_TYPES;
    return end_query(NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set)
{
    struct nvml_event_set *s;
    nvmlReturn_t rc = lock_initialized();
    if (rc != NVML_SUCCESS)
        return rc;
    if (!set)
        return end_query(NVML_ERROR_INVALID_ARGUMENT);
    s = calloc(1, sizeof *s);
    if (!s)
        return end_query(NVML_ERROR_MEMORY);
    s->magic = EVENT_SET_MAGIC;
    pthread_mutex_init(&s->mu, NULL);
    *set = s;
    return end_query(NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set)
{
    nvmlReturn_t rc = lock_initialized();
    if (rc != NVML_SUCCESS)
        return rc;
    if (!set || set->magic != EVENT_SET_MAGIC)
        return end_query(NVML_ERROR_INVALID_ARGUMENT);
    set->magic = 0;
    pthread_mutex_destroy(&set->mu);
    free(set);
    return end_query(NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t d, unsigned long long types,
                                                 nvmlEventSet_t set)
{
    const struct sim_gpu *g;
    double t;
    nvmlReturn_t rc;
    if (!set || set->magic != EVENT_SET_MAGIC)
        return NVML_ERROR_INVALID_ARGUMENT;
    rc = begin_query(d, set, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    if (types & ~SUPPORTED_EVENT_TYPES)
        return end_query(NVML_ERROR_NOT_SUPPORTED);
    pthread_mutex_lock(&set->mu);
    /* Like the driver, a set sees only events raised after it registered for them. */
    if (set->mask[d->index] == 0)
        set->registered_at[d->index] = t;
    set->mask[d->index] |= types;
    pthread_mutex_unlock(&set->mu);
    return end_query(NVML_SUCCESS);
}

/*
 * Claims the earliest due, undelivered XID for `set`, or reports when the next one falls due
 * (`*next`, +inf when none). Caller holds the global read lock.
 */
static int claim_event(struct nvml_event_set *set, double t, nvmlEventData_t *out, double *next)
{
    int best_dev = -1, best_fault = -1;
    double best_at = INFINITY;
    *next = INFINITY;
    pthread_mutex_lock(&set->mu);
    for (unsigned int i = 0; i < g_ndevs; i++) {
        if (!(set->mask[i] & NVML_EVENT_TYPE_XID_CRITICAL_ERROR))
            continue;
        const struct sim_gpu *g = g_devs[i].gpu;
        for (int f = 0; f < g->nfaults; f++) {
            const struct sim_fault *fl = &g->faults[f];
            if (fl->kind != SIM_FAULT_XID || fl->at < set->registered_at[i] ||
                (set->delivered[i] & (1u << f)))
                continue;
            if (fl->at > t) {
                if (fl->at < *next)
                    *next = fl->at;
            } else if (fl->at < best_at) {
                best_at = fl->at;
                best_dev = (int)i;
                best_fault = f;
            }
        }
    }
    if (best_dev >= 0) {
        set->delivered[best_dev] |= 1u << best_fault;
        out->device = &g_devs[best_dev];
        out->eventType = NVML_EVENT_TYPE_XID_CRITICAL_ERROR;
        out->eventData = g_devs[best_dev].gpu->faults[best_fault].code;
        out->gpuInstanceId = NVML_NO_INSTANCE;
        out->computeInstanceId = NVML_NO_INSTANCE;
    }
    pthread_mutex_unlock(&set->mu);
    return best_dev >= 0;
}

static nvmlReturn_t event_wait(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeout_ms)
{
    double deadline = sim_now() + timeout_ms / 1000.0;
    if (!set || !data || set->magic != EVENT_SET_MAGIC)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (;;) {
        double next, now;
        /* The read lock is held only while looking, never while sleeping, so a shutdown on
         * another thread is not held up by a long wait. */
        nvmlReturn_t rc = lock_initialized();
        if (rc != NVML_SUCCESS)
            return rc;
        if (claim_event(set, scenario_time(), data, &next))
            return end_query(NVML_SUCCESS);
        now = sim_now();
        next += g_t0; /* scenario time -> monotonic */
        pthread_rwlock_unlock(&g_lock);
        if (now >= deadline)
            return NVML_ERROR_TIMEOUT;
        double wake = next < deadline ? next : deadline;
        if (wake > now + 0.1)
            wake = now + 0.1; /* re-check the library state now and then */
        sim_sleep_us((long)ceil((wake - now) * 1e6));
    }
}

SIM_EXPORT nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data,
                                            unsigned int timeout_ms)
{
    return event_wait(set, data, timeout_ms);
}

SIM_EXPORT nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_v1_t *data,
                                         unsigned int timeout_ms)
{
    nvmlEventData_t full;
    nvmlReturn_t rc;
    if (!data)
        return NVML_ERROR_INVALID_ARGUMENT;
    rc = event_wait(set, &full, timeout_ms);
    if (rc == NVML_SUCCESS) {
        data->device = full.device;
        data->eventType = full.eventType;
        data->eventData = full.eventData;
    }
    return rc;
}
