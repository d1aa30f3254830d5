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
 * nvmlDeviceGetMemoryInfo_v2, nvmlDeviceGetFieldValues) and GPM (nvmlGpm*), standing in for an
 * old driver so the core's fallback to older symbols can be tested.
 *
 * Init, shutdown, the device table and the query prologue are the simulators' shared code
 * (sim_lib.c), which also says how they are thread-safe.
 */
#define _GNU_SOURCE
#include "sim_lib.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

typedef struct sim_dev *nvmlDevice_t;

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

/* One entry of a driver-side sample buffer (nvmlDeviceGetSamples). */
typedef struct {
    unsigned long long timeStamp;   /* microseconds since 1970 */
    nvmlValue_t sampleValue;
} nvmlSample_t;

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
_Static_assert(sizeof(nvmlSample_t) == 16, "nvmlSample_t layout");

#define EVENT_SET_MAGIC 0x45475345u /* "EGSE": catches stale or foreign pointers */

struct nvml_event_set {
    unsigned int magic;
    pthread_mutex_t mu;
    unsigned long long mask[SIM_MAX_GPUS];
    double registered_at[SIM_MAX_GPUS];
    uint32_t delivered[SIM_MAX_GPUS]; /* bit i: fault i of that device was delivered */
};
typedef struct nvml_event_set *nvmlEventSet_t;

static struct sim_lib g_sim = {
    .name = "libnvidia-ml",
    .vendor = SIM_VENDOR_NVIDIA,
    .codes = {NVML_SUCCESS, NVML_ERROR_UNINITIALIZED, NVML_ERROR_INVALID_ARGUMENT,
              NVML_ERROR_GPU_IS_LOST, NVML_ERROR_UNKNOWN},
    .lock = PTHREAD_RWLOCK_INITIALIZER,
    .count_mu = PTHREAD_MUTEX_INITIALIZER,
};

/* MIG devices: handle k is the scenario's k-th [[gpu.mig]] (its `index`), `gpu` its parent. */
static struct sim_dev g_mig_devs[SIM_MAX_MIG];

/* The MIG instance behind handle d, or NULL when d is not a MIG handle. Caller holds the read lock. */
static const struct sim_mig *mig_of(nvmlDevice_t d)
{
    if (!sim_handle_in(d, g_mig_devs, sizeof g_mig_devs[0], (unsigned int)g_sim.scn.nmig))
        return NULL;
    return &g_sim.scn.migs[d - g_mig_devs];
}

/* ------------------------------------------------------------------------------------------ */
/* Init and shutdown                                                                          */

/* The scenario's init_error is an NVML return code. */
static int init_error(const struct sim_scenario *s)
{
    return s->init_error;
}

static nvmlReturn_t init_common(void)
{
    return sim_init(&g_sim, 1, init_error, NULL);
}

SIM_EXPORT nvmlReturn_t nvmlInit(void)
{
    SIM_COUNT(&g_sim);
    return init_common();
}

#ifndef SIM_NVML_LEGACY
SIM_EXPORT nvmlReturn_t nvmlInit_v2(void)
{
    SIM_COUNT(&g_sim);
    return init_common();
}
#endif

SIM_EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    SIM_COUNT(&g_sim);
    (void)flags; /* NO_GPUS / NO_ATTACH change nothing for simulated devices */
    return init_common();
}

SIM_EXPORT nvmlReturn_t nvmlShutdown(void)
{
    SIM_COUNT(&g_sim);
    return sim_shut_down(&g_sim);
}

SIM_EXPORT const char *nvmlErrorString(nvmlReturn_t result)
{
    SIM_COUNT(&g_sim);
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
    return sim_scenario_in_use(&g_sim);
}

/*
 * Not part of the vendor API either: how many times each exported NVML function was called in
 * this process (sim_calls in sim_lib.h), so a test or bench counts a reader's library calls
 * exactly. Returns how many functions were called; fills up to `cap` names and counts.
 */
SIM_EXPORT unsigned int egs_sim_nvml_calls(unsigned int cap, const char **names,
                                           unsigned long long *counts, int reset)
{
    return sim_calls(&g_sim, cap, names, counts, reset);
}

/* ------------------------------------------------------------------------------------------ */
/* MIG                                                                                        */

/*
 * A GPU with [[gpu.mig]] tables is in MIG mode (current and pending 1) with room for
 * SIM_MIG_PER_GPU MIG devices, the tables in order at indexes 0.. and NOT_FOUND past them;
 * a GPU without is not MIG-capable (NOT_SUPPORTED), as the pre-Ampere parts the other
 * scenarios model. A MIG handle answers nvmlDeviceGetGpuInstanceId,
 * nvmlDeviceGetComputeInstanceId, nvmlDeviceGetUUID and
 * nvmlDeviceGetMemoryInfo(_v2) with its instance's figures.
 */

/* The prologue of a query on a MIG handle: INVALID_ARGUMENT (no lock held) when d is not one,
 * else as sim_begin_query (success holds the read lock; the parent's lost state counts). */
static nvmlReturn_t mig_query(nvmlDevice_t d, const void *out, const struct sim_mig **m)
{
    nvmlReturn_t rc = sim_lock_initialized(&g_sim);
    if (rc != NVML_SUCCESS)
        return rc;
    *m = mig_of(d);
    if (*m == NULL || !out)
        return sim_end_query(&g_sim, NVML_ERROR_INVALID_ARGUMENT);
    const struct sim_gpu *g = &g_sim.scn.gpus[(*m)->gpu];
    double t = sim_scenario_time(&g_sim);
    sim_sleep_us(sim_query_latency_us(&g_sim.scn, g, t));
    if (sim_gpu_lost(g, t))
        return sim_end_query(&g_sim, NVML_ERROR_GPU_IS_LOST);
    return NVML_SUCCESS;
}

/* The MIG instances of g, as indexes into the scenario's table, in file order. */
static int mig_instances(const struct sim_gpu *g, int *out)
{
    int n = 0;
    for (int i = 0; i < g_sim.scn.nmig; i++)
        if (g_sim.scn.migs[i].gpu == g->index)
            out[n++] = i;
    return n;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t d, unsigned int *current, unsigned int *pending)
{
    SIM_COUNT(&g_sim);
    const struct sim_gpu *g;
    double t;
    int idx[SIM_MIG_PER_GPU];
    if (!pending)
        return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t rc = sim_begin_query(&g_sim, d, current, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    if (mig_instances(g, idx) == 0)
        return sim_end_query(&g_sim, NVML_ERROR_NOT_SUPPORTED);
    *current = *pending = 1;
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t d, unsigned int *count)
{
    SIM_COUNT(&g_sim);
    const struct sim_gpu *g;
    double t;
    int idx[SIM_MIG_PER_GPU];
    nvmlReturn_t rc = sim_begin_query(&g_sim, d, count, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    if (mig_instances(g, idx) == 0)
        return sim_end_query(&g_sim, NVML_ERROR_NOT_SUPPORTED);
    *count = SIM_MIG_PER_GPU;
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t d, unsigned int index, nvmlDevice_t *mig)
{
    SIM_COUNT(&g_sim);
    const struct sim_gpu *g;
    double t;
    int idx[SIM_MIG_PER_GPU];
    nvmlReturn_t rc = sim_begin_query(&g_sim, d, mig, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    int n = mig_instances(g, idx);
    if (n == 0)
        return sim_end_query(&g_sim, NVML_ERROR_NOT_SUPPORTED);
    if (index >= SIM_MIG_PER_GPU)
        return sim_end_query(&g_sim, NVML_ERROR_INVALID_ARGUMENT);
    if ((int)index >= n)
        return sim_end_query(&g_sim, NVML_ERROR_NOT_FOUND);
    g_mig_devs[idx[index]].gpu = g;
    g_mig_devs[idx[index]].index = (unsigned int)idx[index];
    *mig = &g_mig_devs[idx[index]];
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

/* A MIG handle's GPU instance id, or its compute instance id within it. */
static nvmlReturn_t mig_id(nvmlDevice_t d, unsigned int *id, int compute)
{
    const struct sim_mig *m;
    nvmlReturn_t rc = mig_query(d, id, &m);
    if (rc != NVML_SUCCESS)
        return rc;
    *id = compute ? m->compute_instance : m->instance;
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t d, unsigned int *id)
{
    SIM_COUNT(&g_sim);
    return mig_id(d, id, 0);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t d, unsigned int *id)
{
    SIM_COUNT(&g_sim);
    return mig_id(d, id, 1);
}

/* ------------------------------------------------------------------------------------------ */
/* GPM (GPU performance monitoring) of MIG GPU instances                                     */

/*
 * A GPU with [[gpu.mig]] tables supports GPM unless its [[gpu]] says gpm = "unsupported"; one
 * without is not GPM-capable (the pre-Hopper parts the other scenarios model). A sample
 * (nvmlGpmSampleAlloc, freed by nvmlGpmSampleFree) taken by nvmlGpmMigSampleGet records the
 * scenario time and, per GPM figure, the integral of its wave since init (percent x seconds),
 * as the hardware's counters accumulate activity; nvmlGpmMetricsGet divides the difference
 * of two samples by the time between them, so a constant figure comes back exactly and a
 * moving one as its mean over the interval. Figures the GPU instance does not give answer
 * NOT_SUPPORTED in their metric entry. Facts from nvml.h (API 12.x/13): nvmlGpmSupport_t =
 * {version, isSupportedDevice}, version 1; nvmlGpmMetricsGet_t = {version, numMetrics,
 * sample1, sample2, metrics[]} with version 1, each metric {metricId, nvmlReturn, value,
 * metricInfo {shortName, longName, unit}}; metric ids GRAPHICS_UTIL 1, SM_UTIL 2,
 * SM_OCCUPANCY 3, DRAM_BW_UTIL 10; only the first numMetrics entries are the caller's.
 */
#ifndef SIM_NVML_LEGACY   /* GPM came with Hopper-era drivers (R520 on): the old driver has none */
#define NVML_GPM_SUPPORT_VERSION 1u
#define NVML_GPM_METRICS_GET_VERSION 1u
#define NVML_GPM_METRIC_MAX 477u   /* nvml.h API 13's array size: numMetrics may not exceed it */
#define GPM_SAMPLE_MAGIC 0x47504d53u  /* "GPMS" */

typedef struct {
    unsigned int version;
    unsigned int isSupportedDevice;
} nvmlGpmSupport_t;

typedef struct {
    unsigned int metricId;
    nvmlReturn_t nvmlReturn;
    double value;
    struct {
        char *shortName;
        char *longName;
        char *unit;
    } metricInfo;
} nvmlGpmMetric_t;

struct sim_gpm_sample {
    unsigned int magic;
    int filled;                     /* nvmlGpmMigSampleGet succeeded on it */
    int gpu;                        /* scenario index of the parent GPU */
    unsigned int instance;          /* GPU instance id */
    double t;                       /* scenario time of the sample */
    double integral[SIM_GPM_COUNT]; /* percent x seconds since init; NaN: not given */
};
typedef struct sim_gpm_sample *nvmlGpmSample_t;

typedef struct {
    unsigned int version;
    unsigned int numMetrics;
    nvmlGpmSample_t sample1;
    nvmlGpmSample_t sample2;
    nvmlGpmMetric_t metrics[]; /* numMetrics entries (nvml.h: NVML_GPM_METRIC_MAX) */
} nvmlGpmMetricsGet_t;

_Static_assert(sizeof(nvmlGpmMetric_t) == 40, "nvmlGpmMetric_t layout");
_Static_assert(sizeof(nvmlGpmSupport_t) == 8, "nvmlGpmSupport_t layout");
_Static_assert(offsetof(nvmlGpmMetricsGet_t, metrics) == 24, "nvmlGpmMetricsGet_t header layout");

/* The metric ids the simulator serves, their SIM_GPM_* figure and names. */
static const struct {
    unsigned int id;
    int figure;
    char *short_name, *long_name;
} gpm_metrics[] = {
    {1, SIM_GPM_GRAPHICS, "GR_UTIL", "graphics utilization"},
    {2, SIM_GPM_SM, "SM_UTIL", "SM utilization"},
    {3, SIM_GPM_SM_OCCUPANCY, "SM_OCCUPANCY", "SM occupancy"},
    {10, SIM_GPM_DRAM_BW, "DRAM_BW_UTIL", "DRAM bandwidth utilization"},
};

/* Whether g is GPM-capable: in MIG mode (some [[gpu.mig]]) and not marked unsupported. */
static int gpm_capable(const struct sim_gpu *g)
{
    int idx[SIM_MIG_PER_GPU];
    return !g->gpm_unsupported && mig_instances(g, idx) > 0;
}

SIM_EXPORT nvmlReturn_t nvmlGpmQueryDeviceSupport(nvmlDevice_t d, nvmlGpmSupport_t *support)
{
    SIM_COUNT(&g_sim);
    const struct sim_gpu *g;
    double t;
    nvmlReturn_t rc = sim_begin_query(&g_sim, d, support, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    if (support->version != NVML_GPM_SUPPORT_VERSION)
        return sim_end_query(&g_sim, NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    support->isSupportedDevice = (unsigned int)gpm_capable(g);
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlGpmSampleAlloc(nvmlGpmSample_t *sample)
{
    SIM_COUNT(&g_sim);
    if (sample == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    struct sim_gpm_sample *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NVML_ERROR_MEMORY;
    s->magic = GPM_SAMPLE_MAGIC;
    *sample = s;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlGpmSampleFree(nvmlGpmSample_t sample)
{
    SIM_COUNT(&g_sim);
    if (sample == NULL || sample->magic != GPM_SAMPLE_MAGIC)
        return NVML_ERROR_INVALID_ARGUMENT;
    sample->magic = 0;   /* a second free of the same pointer is caught while the memory is not reused */
    free(sample);
    return NVML_SUCCESS;
}

/* The prologue of a sample query: INVALID_ARGUMENT for a sample not from nvmlGpmSampleAlloc,
 * else as sim_begin_query. */
static nvmlReturn_t gpm_sample_query(nvmlDevice_t d, nvmlGpmSample_t sample, const struct sim_gpu **g, double *t)
{
    if (sample == NULL || sample->magic != GPM_SAMPLE_MAGIC)
        return NVML_ERROR_INVALID_ARGUMENT;
    return sim_begin_query(&g_sim, d, sample, g, t);
}

/* The whole GPU's sample: MIG mode gives only per-instance samples here (NOT_SUPPORTED). */
SIM_EXPORT nvmlReturn_t nvmlGpmSampleGet(nvmlDevice_t d, nvmlGpmSample_t sample)
{
    SIM_COUNT(&g_sim);
    const struct sim_gpu *g;
    double t;
    nvmlReturn_t rc = gpm_sample_query(d, sample, &g, &t);
    return rc != NVML_SUCCESS ? rc : sim_end_query(&g_sim, NVML_ERROR_NOT_SUPPORTED);
}

SIM_EXPORT nvmlReturn_t nvmlGpmMigSampleGet(nvmlDevice_t d, unsigned int gpu_instance, nvmlGpmSample_t sample)
{
    SIM_COUNT(&g_sim);
    const struct sim_gpu *g;
    double t;
    nvmlReturn_t rc = gpm_sample_query(d, sample, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    if (!gpm_capable(g))
        return sim_end_query(&g_sim, NVML_ERROR_NOT_SUPPORTED);
    const struct sim_mig *m = NULL;
    for (int i = 0; i < g_sim.scn.nmig && m == NULL; i++)   /* the instance's first table */
        if (g_sim.scn.migs[i].gpu == g->index && g_sim.scn.migs[i].instance == gpu_instance)
            m = &g_sim.scn.migs[i];
    if (m == NULL)
        return sim_end_query(&g_sim, NVML_ERROR_NOT_FOUND);
    sample->filled = 1;
    sample->gpu = g->index;
    sample->instance = gpu_instance;
    sample->t = t;
    for (int k = 0; k < SIM_GPM_COUNT; k++)
        sample->integral[k] = m->gpm[k].kind == SIM_WAVE_UNSUPPORTED ? NAN : sim_wave_integral(&m->gpm[k], t);
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlGpmMetricsGet(nvmlGpmMetricsGet_t *get)
{
    SIM_COUNT(&g_sim);
    nvmlReturn_t rc = sim_lock_initialized(&g_sim);
    if (rc != NVML_SUCCESS)
        return rc;
    if (get == NULL)
        return sim_end_query(&g_sim, NVML_ERROR_INVALID_ARGUMENT);
    if (get->version != NVML_GPM_METRICS_GET_VERSION)
        return sim_end_query(&g_sim, NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    const struct sim_gpm_sample *a = get->sample1, *b = get->sample2;
    if (a == NULL || b == NULL || a->magic != GPM_SAMPLE_MAGIC || b->magic != GPM_SAMPLE_MAGIC ||
        !a->filled || !b->filled || a->gpu != b->gpu || a->instance != b->instance ||
        get->numMetrics == 0 || get->numMetrics > NVML_GPM_METRIC_MAX || !(b->t > a->t))
        return sim_end_query(&g_sim, NVML_ERROR_INVALID_ARGUMENT);
    for (unsigned int i = 0; i < get->numMetrics; i++) {
        nvmlGpmMetric_t *out = &get->metrics[i];
        out->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        out->value = 0;
        out->metricInfo.shortName = out->metricInfo.longName = out->metricInfo.unit = NULL;
        for (size_t k = 0; k < sizeof gpm_metrics / sizeof gpm_metrics[0]; k++) {
            if (gpm_metrics[k].id != out->metricId)
                continue;
            out->metricInfo.shortName = gpm_metrics[k].short_name;
            out->metricInfo.longName = gpm_metrics[k].long_name;
            out->metricInfo.unit = "%";
            int f = gpm_metrics[k].figure;
            if (isnan(a->integral[f]))
                break;
            double v = (b->integral[f] - a->integral[f]) / (b->t - a->t);
            out->value = v < 0 ? 0 : v > 100 ? 100 : v;
            out->nvmlReturn = NVML_SUCCESS;
        }
    }
    return sim_end_query(&g_sim, NVML_SUCCESS);
}
#endif

/* ------------------------------------------------------------------------------------------ */
/* Common query helpers                                                                       */

/* One scalar field, converted by `scale` and rounded; NOT_SUPPORTED when the scenario says so. */
static nvmlReturn_t read_uint(nvmlDevice_t d, int field, double scale, unsigned int *out)
{
    const struct sim_gpu *g;
    double t, v;
    nvmlReturn_t rc = sim_begin_query(&g_sim, d, out, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    if (sim_gpu_field(g, field, t, &v) != 0)
        return sim_end_query(&g_sim, NVML_ERROR_NOT_SUPPORTED);
    *out = sim_to_u32(v * scale);
    return sim_end_query(&g_sim, NVML_SUCCESS);
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
    SIM_COUNT(&g_sim);
    nvmlReturn_t rc = sim_lock_initialized(&g_sim);
    if (rc != NVML_SUCCESS)
        return rc;
    rc = version ? copy_string(g_sim.scn.driver_version, version, length) : NVML_ERROR_INVALID_ARGUMENT;
    return sim_end_query(&g_sim, rc);
}

SIM_EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    SIM_COUNT(&g_sim);
    char buf[96];
    nvmlReturn_t rc = sim_lock_initialized(&g_sim);
    if (rc != NVML_SUCCESS)
        return rc;
    /* NVML's own version is the CUDA major version followed by the driver version. */
    snprintf(buf, sizeof buf, "12.%s", g_sim.scn.driver_version);
    rc = version ? copy_string(buf, version, length) : NVML_ERROR_INVALID_ARGUMENT;
    return sim_end_query(&g_sim, rc);
}

static nvmlReturn_t cuda_version(int *v)
{
    nvmlReturn_t rc = sim_lock_initialized(&g_sim);
    if (rc != NVML_SUCCESS)
        return rc;
    if (!v)
        return sim_end_query(&g_sim, NVML_ERROR_INVALID_ARGUMENT);
    *v = 12020;
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) { SIM_COUNT(&g_sim); return cuda_version(v); }
SIM_EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) { SIM_COUNT(&g_sim); return cuda_version(v); }

/* ------------------------------------------------------------------------------------------ */
/* Enumeration and identity                                                                   */

static nvmlReturn_t device_count(unsigned int *count)
{
    nvmlReturn_t rc = sim_lock_initialized(&g_sim);
    if (rc != NVML_SUCCESS)
        return rc;
    if (!count)
        return sim_end_query(&g_sim, NVML_ERROR_INVALID_ARGUMENT);
    /* A lost device stays counted, as on a real host until the driver is reloaded. */
    *count = g_sim.ndevs;
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { SIM_COUNT(&g_sim); return device_count(count); }
#ifndef SIM_NVML_LEGACY
SIM_EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) { SIM_COUNT(&g_sim); return device_count(count); }
#endif

static nvmlReturn_t handle_by_index(unsigned int index, nvmlDevice_t *device)
{
    nvmlReturn_t rc = sim_lock_initialized(&g_sim);
    if (rc != NVML_SUCCESS)
        return rc;
    if (!device || index >= g_sim.ndevs)
        return sim_end_query(&g_sim, NVML_ERROR_INVALID_ARGUMENT);
    if (sim_gpu_lost(g_sim.devs[index].gpu, sim_scenario_time(&g_sim)))
        return sim_end_query(&g_sim, NVML_ERROR_GPU_IS_LOST);
    *device = &g_sim.devs[index];
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    SIM_COUNT(&g_sim);
    return handle_by_index(index, device);
}
#ifndef SIM_NVML_LEGACY
SIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    SIM_COUNT(&g_sim);
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
    nvmlReturn_t rc = sim_lock_initialized(&g_sim);
    if (rc != NVML_SUCCESS)
        return rc;
    if (!key || !device)
        return sim_end_query(&g_sim, NVML_ERROR_INVALID_ARGUMENT);
    for (unsigned int i = 0; i < g_sim.ndevs; i++) {
        const struct sim_gpu *g = g_sim.devs[i].gpu;
        int match = which == 0 ? strcmp(g->uuid, key) == 0 : same_bus_id(g, key);
        if (!match)
            continue;
        if (sim_gpu_lost(g, sim_scenario_time(&g_sim)))
            return sim_end_query(&g_sim, NVML_ERROR_GPU_IS_LOST);
        *device = &g_sim.devs[i];
        return sim_end_query(&g_sim, NVML_SUCCESS);
    }
    return sim_end_query(&g_sim, NVML_ERROR_NOT_FOUND);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    SIM_COUNT(&g_sim);
    return handle_by(uuid, 0, device);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *bus_id, nvmlDevice_t *device)
{
    SIM_COUNT(&g_sim);
    return handle_by(bus_id, 1, device);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByPciBusId(const char *bus_id, nvmlDevice_t *device)
{
    SIM_COUNT(&g_sim);
    return handle_by(bus_id, 1, device);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned int *index)
{
    SIM_COUNT(&g_sim);
    const struct sim_gpu *g;
    double t;
    nvmlReturn_t rc = sim_begin_query(&g_sim, d, index, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    *index = d->index;
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int length)
{
    SIM_COUNT(&g_sim);
    const struct sim_gpu *g;
    double t;
    nvmlReturn_t rc = sim_begin_query(&g_sim, d, name, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    return sim_end_query(&g_sim, copy_string(g->name, name, length));
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int length)
{
    SIM_COUNT(&g_sim);
    const struct sim_gpu *g;
    double t;
    const struct sim_mig *m;
    nvmlReturn_t rc = mig_query(d, uuid, &m);
    if (rc != NVML_ERROR_INVALID_ARGUMENT)
        return rc == NVML_SUCCESS ? sim_end_query(&g_sim, copy_string(m->uuid, uuid, length)) : rc;
    rc = sim_begin_query(&g_sim, d, uuid, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    return sim_end_query(&g_sim, copy_string(g->uuid, uuid, length));
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t d, unsigned int *minor)
{
    SIM_COUNT(&g_sim);
    const struct sim_gpu *g;
    double t;
    nvmlReturn_t rc = sim_begin_query(&g_sim, d, minor, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    *minor = d->index;
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *pci)
{
    SIM_COUNT(&g_sim);
    const struct sim_gpu *g;
    double t;
    nvmlReturn_t rc = sim_begin_query(&g_sim, d, pci, &g, &t);
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
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

/* ------------------------------------------------------------------------------------------ */
/* Telemetry                                                                                  */

SIM_EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned int *temp)
{
    SIM_COUNT(&g_sim);
    if (sensor != NVML_TEMPERATURE_GPU)
        return NVML_ERROR_INVALID_ARGUMENT;
    return read_uint(d, SIM_F_TEMPERATURE, 1.0, temp);
}

#ifndef SIM_NVML_LEGACY
SIM_EXPORT nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t d, nvmlTemperature_t *temp)
{
    SIM_COUNT(&g_sim);
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
    SIM_COUNT(&g_sim);
    const struct sim_gpu *g;
    double t, gpu, mem;
    nvmlReturn_t rc = sim_begin_query(&g_sim, d, util, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    /* One call reports both engines, so it is supported only when both are. */
    if (sim_gpu_field(g, SIM_F_UTILIZATION, t, &gpu) != 0 ||
        sim_gpu_field(g, SIM_F_MEMORY_BUSY, t, &mem) != 0)
        return sim_end_query(&g_sim, NVML_ERROR_NOT_SUPPORTED);
    util->gpu = sim_to_u32(gpu);
    util->memory = sim_to_u32(mem);
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

/* Memory figures in bytes; used is clamped to the total. */
static nvmlReturn_t memory_bytes(nvmlDevice_t d, const void *out, unsigned long long *total,
                                 unsigned long long *used)
{
    const struct sim_gpu *g;
    double t, mib;
    const struct sim_mig *m;
    nvmlReturn_t rc = mig_query(d, out, &m);
    if (rc == NVML_SUCCESS) {   /* a MIG device: its instance's share of the memory */
        *total = m->memory_total_mib << 20;
        *used = (unsigned long long)llround(m->memory_used_mib) << 20;
        if (*used > *total)
            *used = *total;
        return sim_end_query(&g_sim, NVML_SUCCESS);
    }
    if (rc != NVML_ERROR_INVALID_ARGUMENT)
        return rc;
    rc = sim_begin_query(&g_sim, d, out, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    if (sim_gpu_field(g, SIM_F_MEMORY_USED_MIB, t, &mib) != 0)
        return sim_end_query(&g_sim, NVML_ERROR_NOT_SUPPORTED);
    *total = g->memory_total_mib << 20;
    *used = (unsigned long long)llround(mib) << 20;
    if (*used > *total)
        *used = *total;
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *mem)
{
    SIM_COUNT(&g_sim);
    unsigned long long total = 0, used = 0;
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
    SIM_COUNT(&g_sim);
    unsigned long long total = 0, used = 0;
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
    SIM_COUNT(&g_sim);
    /* Instantaneous, as on the pre-Ampere parts the scenarios model. */
    return read_uint(d, SIM_F_POWER, 1000.0, milliwatts);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t d, int type, unsigned int *mhz)
{
    SIM_COUNT(&g_sim);
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
        nvmlReturn_t rc = sim_begin_query(&g_sim, d, mhz, &g, &t);
        return rc != NVML_SUCCESS ? rc : sim_end_query(&g_sim, NVML_ERROR_NOT_SUPPORTED);
    }
    }
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetFanSpeed(nvmlDevice_t d, unsigned int *speed)
{
    SIM_COUNT(&g_sim);
    return read_uint(d, SIM_F_FAN, 1.0, speed);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetFanSpeed_v2(nvmlDevice_t d, unsigned int fan,
                                                 unsigned int *speed)
{
    SIM_COUNT(&g_sim);
    if (fan != 0)
        return NVML_ERROR_INVALID_ARGUMENT; /* every simulated board has one fan */
    return read_uint(d, SIM_F_FAN, 1.0, speed);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetNumFans(nvmlDevice_t d, unsigned int *num)
{
    SIM_COUNT(&g_sim);
    const struct sim_gpu *g;
    double t, v;
    nvmlReturn_t rc = sim_begin_query(&g_sim, d, num, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    if (sim_gpu_field(g, SIM_F_FAN, t, &v) != 0)
        return sim_end_query(&g_sim, NVML_ERROR_NOT_SUPPORTED);
    *num = 1;
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t d,
                                                            unsigned long long *millijoules)
{
    SIM_COUNT(&g_sim);
    const struct sim_gpu *g;
    double t, joules;
    nvmlReturn_t rc = sim_begin_query(&g_sim, d, millijoules, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    if (sim_gpu_field(g, SIM_F_ENERGY, t, &joules) != 0)
        return sim_end_query(&g_sim, NVML_ERROR_NOT_SUPPORTED);
    *millijoules = (unsigned long long)llround(joules * 1000.0);
    return sim_end_query(&g_sim, NVML_SUCCESS);
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

/* Field ids of the health signals (pynvml's NVML_FI_DEV_*) and the scenario field behind
 * each; all unsigned long long. */
static const struct {
    unsigned int id;
    int field;
} health_fields[] = {
    {3, SIM_F_ECC_CORRECTED},   /* ECC_SBE_VOL_TOTAL */
    {4, SIM_F_ECC_UNCORRECTED}, /* ECC_DBE_VOL_TOTAL */
    {5, SIM_F_ECC_CORRECTED},   /* ECC_SBE_AGG_TOTAL: the scenario has one count for both */
    {6, SIM_F_ECC_UNCORRECTED}, /* ECC_DBE_AGG_TOTAL */
    {29, SIM_F_RETIRED_SBE},
    {30, SIM_F_RETIRED_DBE},
    {31, SIM_F_RETIRED_PENDING},
    {94, SIM_F_PCIE_REPLAYS},   /* PCIE_REPLAY_COUNTER */
    {142, SIM_F_REMAPPED_CORRECTABLE},
    {143, SIM_F_REMAPPED_UNCORRECTABLE},
    {144, SIM_F_REMAP_PENDING},
    {145, SIM_F_REMAP_FAILURE},
};

/* NVLink data throughput counters (NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX / _RX, KiB): the
 * integral of the scenario's rate. A simulated GPU has SIM_NVLINKS links sharing the traffic
 * evenly: scopeId 0..SIM_NVLINKS-1 gives one link's count, UINT_MAX the sum over all links
 * (nvml.h), any other scope is not supported. */
#define SIM_NVLINKS 2
static const struct {
    unsigned int id;
    int field;
} nvlink_fields[] = {{138, SIM_F_NVLINK_TX}, {139, SIM_F_NVLINK_RX}};

/* Fills fv when its id is a health field; 0 when it is not one. */
static int health_field_value(const struct sim_gpu *g, double t, nvmlFieldValue_t *fv)
{
    double v;
    for (size_t k = 0; k < sizeof(nvlink_fields) / sizeof(nvlink_fields[0]); k++) {
        if (nvlink_fields[k].id != fv->fieldId)
            continue;
        fv->valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
        if (sim_gpu_field(g, nvlink_fields[k].field, t, &v) != 0 ||
            (fv->scopeId >= SIM_NVLINKS && fv->scopeId != UINT32_MAX)) {
            fv->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
            return 1;
        }
        double kib = sim_wave_integral(&g->fields[nvlink_fields[k].field], t);
        fv->value.ullVal = (unsigned long long)llround(fv->scopeId == UINT32_MAX ? kib : kib / SIM_NVLINKS);
        fv->nvmlReturn = NVML_SUCCESS;
        return 1;
    }
    for (size_t k = 0; k < sizeof(health_fields) / sizeof(health_fields[0]); k++) {
        if (health_fields[k].id != fv->fieldId)
            continue;
        fv->valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
        if (sim_gpu_field(g, health_fields[k].field, t, &v) != 0) {
            fv->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
            return 1;
        }
        fv->value.ullVal = (unsigned long long)llround(v);
        fv->nvmlReturn = NVML_SUCCESS;
        return 1;
    }
    return 0;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t d, int count, nvmlFieldValue_t *values)
{
    SIM_COUNT(&g_sim);
    const struct sim_gpu *g;
    double t, v;
    nvmlReturn_t rc;
    if (count <= 0 || !values)
        return NVML_ERROR_INVALID_ARGUMENT;
    rc = sim_begin_query(&g_sim, d, values, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    long long now_us = unix_us();
    long latency = sim_query_latency_us(&g_sim.scn, g, t);
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
            fv->value.uiVal = sim_to_u32(v * 1000.0);
            fv->nvmlReturn = NVML_SUCCESS;
            break;
        case NVML_FI_DEV_POWER_AVERAGE:
            fv->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
            if (power_average_w(g, t, &v) != 0) {
                fv->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
                break;
            }
            fv->value.uiVal = sim_to_u32(v * 1000.0);
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
            if (health_field_value(g, t, fv))
                break;
            /* A real driver (580.159.04, H100) calls id 0 and ids past the last defined one
             * invalid, and a defined field the device lacks not supported. */
            fv->valueType = NVML_VALUE_TYPE_DOUBLE;
            fv->nvmlReturn = fv->fieldId == 0 || fv->fieldId >= NVML_FI_MAX
                                 ? NVML_ERROR_INVALID_ARGUMENT
                                 : NVML_ERROR_NOT_SUPPORTED;
            break;
        }
    }
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

/*
 * The driver's own sample buffers. A real driver samples some figures on its own at an internal
 * period and keeps the latest ones; nvmlDeviceGetSamples hands out those newer than the
 * caller's last seen timestamp, oldest first. The simulator takes sample k of a type at
 * scenario time k x period, valued by the scenario's wave at that time (at time 0 for the
 * samples from before init), keeps the newest SAMPLE_DEPTH, and stamps each with the wall-clock time of its scenario time, so a
 * sample keeps one timestamp however often it is asked for. The periods are the simulator's
 * choice (docs/benchmarks.md records what a real driver does where one was measured).
 */
enum {
    NVML_TOTAL_POWER_SAMPLES = 0,
    NVML_GPU_UTILIZATION_SAMPLES = 1,
    NVML_MEMORY_UTILIZATION_SAMPLES = 2,
    NVML_PROCESSOR_CLK_SAMPLES = 5,
    NVML_MEMORY_CLK_SAMPLES = 6,
};
#define SAMPLE_DEPTH 120

struct sample_type {
    int field;          /* SIM_F_* */
    double period_s;
    double scale;       /* scenario unit -> NVML unit */
};

static const struct sample_type *sample_type(int type)
{
    static const struct sample_type power = {SIM_F_POWER, 0.05, 1000.0};        /* mW */
    static const struct sample_type gpu = {SIM_F_UTILIZATION, 1.0 / 6.0, 1.0};  /* % */
    static const struct sample_type mem = {SIM_F_MEMORY_BUSY, 1.0 / 6.0, 1.0};
    static const struct sample_type sm = {SIM_F_SM_CLOCK, 0.1, 1.0};            /* MHz */
    static const struct sample_type mclk = {SIM_F_MEMORY_CLOCK, 0.1, 1.0};
    switch (type) {
    case NVML_TOTAL_POWER_SAMPLES: return &power;
    case NVML_GPU_UTILIZATION_SAMPLES: return &gpu;
    case NVML_MEMORY_UTILIZATION_SAMPLES: return &mem;
    case NVML_PROCESSOR_CLK_SAMPLES: return &sm;
    case NVML_MEMORY_CLK_SAMPLES: return &mclk;
    default: return NULL;
    }
}

/* Wall-clock microseconds of sample k of a type with period p. */
static unsigned long long sample_us(double p, long long k)
{
    return (unsigned long long)(g_sim.t0_unix_us + llround((double)k * p * 1e6));
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetSamples(nvmlDevice_t d, int type, unsigned long long lastSeen,
                                             int *valueType, unsigned int *count,
                                             nvmlSample_t *samples)
{
    SIM_COUNT(&g_sim);
    const struct sim_gpu *g;
    double t, v;
    const struct sample_type *st = sample_type(type);
    if (!valueType || !count)
        return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t rc = sim_begin_query(&g_sim, d, count, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    if (st == NULL || sim_gpu_field(g, st->field, t, &v) != 0)
        return sim_end_query(&g_sim, NVML_ERROR_NOT_SUPPORTED);
    long long last = (long long)floor(t / st->period_s);
    /* The driver was sampling before this process's init: the samples from before scenario
     * time 0 hold the values of time 0. */
    long long first = last - SAMPLE_DEPTH + 1;
    /* The first sample newer than lastSeen, found from the period and then exactly. */
    long long k = (long long)floor(((double)lastSeen - (double)g_sim.t0_unix_us) / (st->period_s * 1e6));
    if (k < first)
        k = first;
    while (k > first && sample_us(st->period_s, k - 1) > lastSeen)
        k--;
    while (k <= last && sample_us(st->period_s, k) <= lastSeen)
        k++;
    if (k > last)
        return sim_end_query(&g_sim, NVML_ERROR_NOT_FOUND);
    unsigned int avail = (unsigned int)(last - k + 1);
    *valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
    if (samples == NULL) {
        *count = avail;
        return sim_end_query(&g_sim, NVML_SUCCESS);
    }
    if (*count == 0)
        return sim_end_query(&g_sim, NVML_ERROR_INSUFFICIENT_SIZE);
    /* Oldest first; a buffer shorter than what is there takes the oldest, and the caller's
     * next lastSeen (the newest it got) finds the rest. */
    unsigned int n = avail < *count ? avail : *count;
    for (unsigned int i = 0; i < n; i++, k++) {
        double at = k > 0 ? (double)k * st->period_s : 0.0;
        if (sim_gpu_field(g, st->field, at, &v) != 0)
            v = 0; /* unsupported before t: the scenario's fault came later; not reachable */
        samples[i].timeStamp = sample_us(st->period_s, k);
        samples[i].sampleValue.ullVal = 0;
        samples[i].sampleValue.uiVal = sim_to_u32(v * st->scale);
    }
    *count = n;
    return sim_end_query(&g_sim, NVML_SUCCESS);
}
#endif

/* ------------------------------------------------------------------------------------------ */
/* Health signals                                                                             */

/* read_uint for the 64-bit outputs. */
static nvmlReturn_t health_query(nvmlDevice_t d, int field, double scale, unsigned long long *out)
{
    const struct sim_gpu *g;
    double t, v;
    nvmlReturn_t rc = sim_begin_query(&g_sim, d, out, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    if (sim_gpu_field(g, field, t, &v) != 0)
        return sim_end_query(&g_sim, NVML_ERROR_NOT_SUPPORTED);
    *out = (unsigned long long)llround(v * scale);
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

/* `clock_reasons` is the bit mask itself (nvmlClocksEventReason*). */
SIM_EXPORT nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t d, unsigned long long *reasons)
{
    SIM_COUNT(&g_sim);
    return health_query(d, SIM_F_CLOCK_REASONS, 1.0, reasons);
}

#ifndef SIM_NVML_LEGACY
SIM_EXPORT nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t d, unsigned long long *reasons)
{
    SIM_COUNT(&g_sim);
    return health_query(d, SIM_F_CLOCK_REASONS, 1.0, reasons);
}
#endif

SIM_EXPORT nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t d, unsigned int *milliwatts)
{
    SIM_COUNT(&g_sim);
    return read_uint(d, SIM_F_POWER_LIMIT, 1000.0, milliwatts);
}

/* counter 0: TX, 1: RX, KB/s. */
SIM_EXPORT nvmlReturn_t nvmlDeviceGetPcieThroughput(nvmlDevice_t d, int counter, unsigned int *value)
{
    SIM_COUNT(&g_sim);
    if (counter != 0 && counter != 1)
        return NVML_ERROR_INVALID_ARGUMENT;
    return read_uint(d, counter == 0 ? SIM_F_PCIE_TX : SIM_F_PCIE_RX, 1.0, value);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetPcieReplayCounter(nvmlDevice_t d, unsigned int *value)
{
    SIM_COUNT(&g_sim);
    return read_uint(d, SIM_F_PCIE_REPLAYS, 1.0, value);
}

/* errorType 0 corrected, 1 uncorrected; counterType 0 volatile, 1 aggregate (the same count). */
SIM_EXPORT nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t d, int errorType, int counterType,
                                                    unsigned long long *count)
{
    SIM_COUNT(&g_sim);
    if ((errorType != 0 && errorType != 1) || (counterType != 0 && counterType != 1))
        return NVML_ERROR_INVALID_ARGUMENT;
    return health_query(d, errorType == 0 ? SIM_F_ECC_CORRECTED : SIM_F_ECC_UNCORRECTED, 1.0, count);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t d, unsigned int *corr, unsigned int *unc,
                                                  unsigned int *pending, unsigned int *failure)
{
    SIM_COUNT(&g_sim);
    if (!unc || !pending || !failure)
        return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t rc = read_uint(d, SIM_F_REMAPPED_CORRECTABLE, 1.0, corr);
    if (rc == NVML_SUCCESS)
        rc = read_uint(d, SIM_F_REMAPPED_UNCORRECTABLE, 1.0, unc);
    if (rc == NVML_SUCCESS)
        rc = read_uint(d, SIM_F_REMAP_PENDING, 1.0, pending);
    if (rc == NVML_SUCCESS)
        rc = read_uint(d, SIM_F_REMAP_FAILURE, 1.0, failure);
    return rc;
}

/* Retired pages: `retired_sbe` / `retired_dbe` pages (cause 0 / 1), at made-up addresses.
 * A count smaller than the pages there are (0 asks for the count) is INSUFFICIENT_SIZE with
 * the count set, as NVML does; the legacy build has only the unversioned call. */
static nvmlReturn_t retired_pages(nvmlDevice_t d, int cause, unsigned int *count,
                                  unsigned long long *addresses, unsigned long long *timestamps)
{
    unsigned int n = 0;
    if (!count || (cause != 0 && cause != 1))
        return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t rc = read_uint(d, cause == 0 ? SIM_F_RETIRED_SBE : SIM_F_RETIRED_DBE, 1.0, &n);
    if (rc != NVML_SUCCESS)
        return rc;
    if (*count < n || (n > 0 && !addresses)) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (unsigned int i = 0; i < n; i++) {
        addresses[i] = 0x100000ull * (unsigned long long)(cause + 1) + 0x1000ull * i;
        if (timestamps)
            timestamps[i] = 1700000000ull + i;
    }
    *count = n;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetRetiredPages(nvmlDevice_t d, int cause, unsigned int *count,
                                                  unsigned long long *addresses)
{
    SIM_COUNT(&g_sim);
    return retired_pages(d, cause, count, addresses, NULL);
}

#ifndef SIM_NVML_LEGACY
SIM_EXPORT nvmlReturn_t nvmlDeviceGetRetiredPages_v2(nvmlDevice_t d, int cause, unsigned int *count,
                                                     unsigned long long *addresses,
                                                     unsigned long long *timestamps)
{
    SIM_COUNT(&g_sim);
    return retired_pages(d, cause, count, addresses, timestamps);
}
#endif

/* `retired_pending` as nvmlEnableState_t (0 / 1). */
SIM_EXPORT nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t d, unsigned int *pending)
{
    SIM_COUNT(&g_sim);
    nvmlReturn_t rc = read_uint(d, SIM_F_RETIRED_PENDING, 1.0, pending);
    if (rc == NVML_SUCCESS)
        *pending = *pending != 0;
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Processes                                                                                  */

/*
 * The scenario's [[gpu.processes]]: nvmlDeviceGet{Compute,Graphics}RunningProcesses in their
 * three struct versions (the unversioned symbol fills the oldest, 16-byte record; _v2 and _v3
 * the 24-byte one with the MIG instance ids), and per-process utilisation from a "driver"
 * sample taken every PROC_SAMPLE_S of scenario time, holding the processes with some non-zero
 * figure (as NVML documents: a process idle over the sample period has no sample).
 */
#define PROC_SAMPLE_S 1.0
#define NVML_VALUE_NOT_AVAILABLE_ULL (~0ull)
#define NVML_PROCESSES_UTILIZATION_INFO_V1 0x01000018u

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
} nvmlProcessInfo_v1_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_v2_t;

typedef struct {
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil, memUtil, encUtil, decUtil;
} nvmlProcessUtilizationSample_t;

typedef struct {
    unsigned long long timeStamp;
    unsigned int pid;
    unsigned int smUtil, memUtil, encUtil, decUtil, jpgUtil, ofaUtil;
} nvmlProcessUtilizationInfo_v1_t;

typedef struct {
    unsigned int version;
    unsigned int processSamplesCount;
    unsigned long long lastSeenTimeStamp;
    nvmlProcessUtilizationInfo_v1_t *procUtilArray;
} nvmlProcessesUtilizationInfo_t;

_Static_assert(sizeof(nvmlProcessInfo_v1_t) == 16, "nvmlProcessInfo_v1_t layout");
_Static_assert(sizeof(nvmlProcessInfo_v2_t) == 24, "nvmlProcessInfo_v2_t layout");
_Static_assert(sizeof(nvmlProcessUtilizationSample_t) == 32, "nvmlProcessUtilizationSample_t layout");
_Static_assert(sizeof(nvmlProcessUtilizationInfo_v1_t) == 40, "nvmlProcessUtilizationInfo_v1_t layout");
_Static_assert(sizeof(nvmlProcessesUtilizationInfo_t) == 24, "nvmlProcessesUtilizationInfo_t layout");

static int proc_on(const struct sim_process *p, const struct sim_gpu *g, int kind)
{
    return p->gpu == g->index && (p->kinds & kind);
}

/* One of the process-list calls; `size` is the caller's record size (16 or 24 bytes). */
static nvmlReturn_t running_processes(nvmlDevice_t d, unsigned int *count, void *infos, int kind,
                                      size_t size)
{
    const struct sim_gpu *g;
    double t;
    nvmlReturn_t rc = sim_begin_query(&g_sim, d, count, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    if (g->processes_unsupported)
        return sim_end_query(&g_sim, NVML_ERROR_NOT_SUPPORTED);
    const struct sim_scenario *s = &g_sim.scn;
    unsigned int n = 0;
    for (int i = 0; i < s->nprocs; i++)
        n += proc_on(&s->procs[i], g, kind);
    if (n > *count || (infos == NULL && n > 0)) {
        *count = n;
        return sim_end_query(&g_sim, NVML_ERROR_INSUFFICIENT_SIZE);
    }
    unsigned int k = 0;
    for (int i = 0; i < s->nprocs && infos != NULL; i++) {
        const struct sim_process *p = &s->procs[i];
        if (!proc_on(p, g, kind))
            continue;
        nvmlProcessInfo_v2_t rec = {.pid = p->pid, .gpuInstanceId = ~0u, .computeInstanceId = ~0u};
        rec.usedGpuMemory = isnan(p->memory_mib) ? NVML_VALUE_NOT_AVAILABLE_ULL
                                                 : (unsigned long long)llround(p->memory_mib * 1048576.0);
        memcpy((char *)infos + (size_t)k++ * size, &rec, size);
    }
    *count = n;
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

#define RUNNING_PROCESSES(name, kind, type)                                                   \
    SIM_EXPORT nvmlReturn_t name(nvmlDevice_t d, unsigned int *count, type *infos)            \
    {                                                                                         \
        SIM_COUNT(&g_sim);                                                                    \
        return running_processes(d, count, infos, kind, sizeof(type));                        \
    }

RUNNING_PROCESSES(nvmlDeviceGetComputeRunningProcesses, SIM_PROC_COMPUTE, nvmlProcessInfo_v1_t)
RUNNING_PROCESSES(nvmlDeviceGetGraphicsRunningProcesses, SIM_PROC_GRAPHICS, nvmlProcessInfo_v1_t)
#ifndef SIM_NVML_LEGACY
RUNNING_PROCESSES(nvmlDeviceGetComputeRunningProcesses_v2, SIM_PROC_COMPUTE, nvmlProcessInfo_v2_t)
RUNNING_PROCESSES(nvmlDeviceGetGraphicsRunningProcesses_v2, SIM_PROC_GRAPHICS, nvmlProcessInfo_v2_t)
RUNNING_PROCESSES(nvmlDeviceGetComputeRunningProcesses_v3, SIM_PROC_COMPUTE, nvmlProcessInfo_v2_t)
RUNNING_PROCESSES(nvmlDeviceGetGraphicsRunningProcesses_v3, SIM_PROC_GRAPHICS, nvmlProcessInfo_v2_t)
#endif

/* Whether process p of g has a utilisation sample (some non-zero figure). */
static int proc_sampled(const struct sim_process *p, const struct sim_gpu *g)
{
    if (p->gpu != g->index)
        return 0;
    const double u[] = {p->sm, p->mem, p->enc, p->dec};
    for (int i = 0; i < 4; i++)
        if (!isnan(u[i]) && u[i] > 0)
            return 1;
    return 0;
}

static unsigned int pct(double v)
{
    return isnan(v) ? 0 : sim_to_u32(v);
}

/* The newest per-process sample's timestamp and how many processes it holds; NOT_FOUND when
 * it is not newer than lastSeen or holds none. Caller holds the query. */
static nvmlReturn_t proc_samples(const struct sim_gpu *g, double t, unsigned long long lastSeen,
                                 unsigned long long *ts, unsigned int *n)
{
    if (g->process_util_unsupported)
        return NVML_ERROR_NOT_SUPPORTED;
    *ts = (unsigned long long)(g_sim.t0_unix_us + llround(floor(t / PROC_SAMPLE_S) * PROC_SAMPLE_S * 1e6));
    *n = 0;
    for (int i = 0; i < g_sim.scn.nprocs; i++)
        *n += proc_sampled(&g_sim.scn.procs[i], g);
    return *ts <= lastSeen || *n == 0 ? NVML_ERROR_NOT_FOUND : NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t d, nvmlProcessUtilizationSample_t *util,
                                                        unsigned int *count, unsigned long long lastSeen)
{
    SIM_COUNT(&g_sim);
    const struct sim_gpu *g;
    double t;
    unsigned long long ts;
    unsigned int n;
    nvmlReturn_t rc = sim_begin_query(&g_sim, d, count, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    if ((rc = proc_samples(g, t, lastSeen, &ts, &n)) != NVML_SUCCESS)
        return sim_end_query(&g_sim, rc);
    if (util == NULL || *count < n) {
        *count = n;
        return sim_end_query(&g_sim, NVML_ERROR_INSUFFICIENT_SIZE);
    }
    unsigned int k = 0;
    for (int i = 0; i < g_sim.scn.nprocs; i++) {
        const struct sim_process *p = &g_sim.scn.procs[i];
        if (proc_sampled(p, g))
            util[k++] = (nvmlProcessUtilizationSample_t){p->pid, ts, pct(p->sm), pct(p->mem), pct(p->enc),
                                                          pct(p->dec)};
    }
    *count = n;
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

#ifndef SIM_NVML_LEGACY
SIM_EXPORT nvmlReturn_t nvmlDeviceGetProcessesUtilizationInfo(nvmlDevice_t d, nvmlProcessesUtilizationInfo_t *info)
{
    SIM_COUNT(&g_sim);
    const struct sim_gpu *g;
    double t;
    unsigned long long ts;
    unsigned int n;
    nvmlReturn_t rc = sim_begin_query(&g_sim, d, info, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    if (info->version != NVML_PROCESSES_UTILIZATION_INFO_V1)
        return sim_end_query(&g_sim, NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    if ((rc = proc_samples(g, t, info->lastSeenTimeStamp, &ts, &n)) != NVML_SUCCESS)
        return sim_end_query(&g_sim, rc);
    if (info->procUtilArray == NULL || info->processSamplesCount < n) {
        info->processSamplesCount = n;
        return sim_end_query(&g_sim, NVML_ERROR_INSUFFICIENT_SIZE);
    }
    unsigned int k = 0;
    for (int i = 0; i < g_sim.scn.nprocs; i++) {
        const struct sim_process *p = &g_sim.scn.procs[i];
        if (proc_sampled(p, g))
            info->procUtilArray[k++] = (nvmlProcessUtilizationInfo_v1_t){
                ts, p->pid, pct(p->sm), pct(p->mem), pct(p->enc), pct(p->dec), 0, 0};
    }
    info->processSamplesCount = n;
    return sim_end_query(&g_sim, NVML_SUCCESS);
}
#endif

/* ------------------------------------------------------------------------------------------ */
/* Events                                                                                     */

SIM_EXPORT nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t d,
                                                         unsigned long long *types)
{
    SIM_COUNT(&g_sim);
    const struct sim_gpu *g;
    double t;
    nvmlReturn_t rc = sim_begin_query(&g_sim, d, types, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    *types = SUPPORTED_EVENT_TYPES;
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set)
{
    SIM_COUNT(&g_sim);
    struct nvml_event_set *s;
    nvmlReturn_t rc = sim_lock_initialized(&g_sim);
    if (rc != NVML_SUCCESS)
        return rc;
    if (!set)
        return sim_end_query(&g_sim, NVML_ERROR_INVALID_ARGUMENT);
    s = calloc(1, sizeof *s);
    if (!s)
        return sim_end_query(&g_sim, NVML_ERROR_MEMORY);
    s->magic = EVENT_SET_MAGIC;
    pthread_mutex_init(&s->mu, NULL);
    *set = s;
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set)
{
    SIM_COUNT(&g_sim);
    nvmlReturn_t rc = sim_lock_initialized(&g_sim);
    if (rc != NVML_SUCCESS)
        return rc;
    if (!set || set->magic != EVENT_SET_MAGIC)
        return sim_end_query(&g_sim, NVML_ERROR_INVALID_ARGUMENT);
    set->magic = 0;
    pthread_mutex_destroy(&set->mu);
    free(set);
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t d, unsigned long long types,
                                                 nvmlEventSet_t set)
{
    SIM_COUNT(&g_sim);
    const struct sim_gpu *g;
    double t;
    nvmlReturn_t rc;
    if (!set || set->magic != EVENT_SET_MAGIC)
        return NVML_ERROR_INVALID_ARGUMENT;
    rc = sim_begin_query(&g_sim, d, set, &g, &t);
    if (rc != NVML_SUCCESS)
        return rc;
    if (types & ~SUPPORTED_EVENT_TYPES)
        return sim_end_query(&g_sim, NVML_ERROR_NOT_SUPPORTED);
    pthread_mutex_lock(&set->mu);
    /* Like the driver, a set sees only events raised after it registered for them. */
    if (set->mask[d->index] == 0)
        set->registered_at[d->index] = t;
    set->mask[d->index] |= types;
    pthread_mutex_unlock(&set->mu);
    return sim_end_query(&g_sim, NVML_SUCCESS);
}

static int xid_wanted(const void *arg, unsigned int i, int f, const struct sim_fault *fault)
{
    const struct nvml_event_set *set = arg;
    return (set->mask[i] & NVML_EVENT_TYPE_XID_CRITICAL_ERROR) && fault->at >= set->registered_at[i] &&
           !(set->delivered[i] & (1u << f));
}

struct claim {
    struct nvml_event_set *set;
    nvmlEventData_t *out;
};

/* Claims the earliest due, undelivered XID for the set (sim_wait_events' claim). */
static int claim_event(void *arg, double t, double *next)
{
    struct claim *c = arg;
    int dev, fault;
    pthread_mutex_lock(&c->set->mu);
    sim_due_xid(&g_sim, t, xid_wanted, c->set, &dev, &fault, next);
    if (dev >= 0) {
        c->set->delivered[dev] |= 1u << fault;
        c->out->device = &g_sim.devs[dev];
        c->out->eventType = NVML_EVENT_TYPE_XID_CRITICAL_ERROR;
        c->out->eventData = g_sim.devs[dev].gpu->faults[fault].code;
        c->out->gpuInstanceId = NVML_NO_INSTANCE;
        c->out->computeInstanceId = NVML_NO_INSTANCE;
    }
    pthread_mutex_unlock(&c->set->mu);
    return dev >= 0;
}

static nvmlReturn_t event_wait(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeout_ms)
{
    double deadline = sim_now() + timeout_ms / 1000.0;
    if (!set || !data || set->magic != EVENT_SET_MAGIC)
        return NVML_ERROR_INVALID_ARGUMENT;
    struct claim c = {set, data};
    int found;
    nvmlReturn_t rc = sim_wait_events(&g_sim, deadline, claim_event, &c, &found);
    if (rc != NVML_SUCCESS)
        return rc;
    return found ? NVML_SUCCESS : NVML_ERROR_TIMEOUT;
}

SIM_EXPORT nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data,
                                            unsigned int timeout_ms)
{
    SIM_COUNT(&g_sim);
    return event_wait(set, data, timeout_ms);
}

SIM_EXPORT nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_v1_t *data,
                                         unsigned int timeout_ms)
{
    SIM_COUNT(&g_sim);
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
