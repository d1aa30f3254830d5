/*
 * nvml.c - the NVIDIA backend: NVML loaded with dlopen, never linked.
 *
 * The symbol table is filled once at open, preferring the newer versioned entry points and
 * falling back to the older ones that drivers before them export (as go-nvml does). At open
 * each device is asked which figures its driver keeps sample buffers for
 * (nvmlDeviceGetSamples: utilisation, memory busy, power, clocks) and which field ids
 * nvmlDeviceGetFieldValues answers (POWER_INSTANT, TOTAL_ENERGY_CONSUMPTION); those fields are
 * read that way (EGS_PATH_BUFFER, EGS_PATH_BATCH) and every other by the cheapest call that
 * serves it: one call gives both utilisation figures, one gives used and total memory. A
 * buffer or batch entry that stops answering moves its field to its own call for good, on the
 * same tick; POWER_INSTANT is preferred to nvmlDeviceGetPowerUsage, a one-second average on
 * Ampere and newer. NOT_SUPPORTED from a field's own call marks it unsupported for the device
 * for good; GPU_IS_LOST and RESET_REQUIRED mark the device lost; any other failure is counted
 * and retried on the next tick. Every vendor call the sampler makes is counted (t->calls).
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

/* --- NVML types and constants, declared from the public API description ------------------ */

typedef int nv_return;
typedef void *nv_device;
typedef void *nv_event_set;

enum {
    NV_SUCCESS = 0,
    NV_NOT_SUPPORTED = 3,
    NV_TIMEOUT = 10,
    NV_FUNCTION_NOT_FOUND = 13,
    NV_GPU_IS_LOST = 15,
    NV_RESET_REQUIRED = 16,
};

enum { NV_CLOCK_SM = 1, NV_CLOCK_MEM = 2 };
enum { NV_TEMPERATURE_GPU = 0 };
enum { NV_FI_TOTAL_ENERGY = 83, NV_FI_POWER_INSTANT = 186 };
enum { NV_NOT_FOUND = 6, NV_INSUFFICIENT_SIZE = 7 };
/* nvmlSamplingType_t values of the buffers the catalogue can use. */
enum {
    NV_SAMPLES_POWER = 0, NV_SAMPLES_GPU_UTIL = 1, NV_SAMPLES_MEM_UTIL = 2,
    NV_SAMPLES_SM_CLOCK = 5, NV_SAMPLES_MEM_CLOCK = 6,
};
enum { NV_EVENT_XID_CRITICAL = 0x8 };

struct nv_pci_info {               /* nvmlPciInfo_t (v2/v3 layout) */
    char bus_id_legacy[16];
    unsigned int domain, bus, device, pci_device_id, pci_subsystem_id;
    char bus_id[32];
};

struct nv_temperature {            /* nvmlTemperature_t, for nvmlDeviceGetTemperatureV */
    unsigned int version;
    int sensor_type;
    int temperature;
};

struct nv_utilization {
    unsigned int gpu, memory;
};

struct nv_memory {
    unsigned long long total, free, used;
};

struct nv_memory_v2 {
    unsigned int version;
    unsigned long long total, reserved, free, used;
};

union nv_value {
    double d;
    unsigned int ui;
    unsigned long ul;
    unsigned long long ull;
    long long sll;
    int si;
    unsigned short us;
};

struct nv_field_value {
    unsigned int field_id;
    unsigned int scope_id;
    long long timestamp;
    long long latency_us;
    int value_type;
    nv_return ret;
    union nv_value value;
};

enum { NV_VT_DOUBLE, NV_VT_UINT, NV_VT_ULONG, NV_VT_ULONGLONG, NV_VT_SLONGLONG, NV_VT_SINT, NV_VT_USHORT };

struct nv_sample {                 /* nvmlSample_t */
    unsigned long long timestamp;  /* microseconds since 1970 */
    union nv_value value;
};

struct nv_event_data {
    nv_device device;
    unsigned long long event_type;
    unsigned long long event_data;
    unsigned int gpu_instance_id;
    unsigned int compute_instance_id;
};

/* Per-process records, from pynvml's structures: nvmlProcessInfo_v1_t (the unversioned
 * list calls) is pid + usedGpuMemory, 16 bytes; _v2 and _v3 add the GPU and compute instance
 * ids, 24 bytes. Their pid and usedGpuMemory sit at the same offsets. */
struct nv_process_v1 {
    unsigned int pid;
    unsigned long long used_memory;    /* NV_VALUE_NOT_AVAILABLE: the driver cannot say */
};

struct nv_process_v2 {
    unsigned int pid;
    unsigned long long used_memory;
    unsigned int gpu_instance_id, compute_instance_id;
};

struct nv_process_sample {         /* nvmlProcessUtilizationSample_t */
    unsigned int pid;
    unsigned long long timestamp;  /* microseconds since 1970 */
    unsigned int sm, mem, enc, dec;
};

struct nv_process_util {           /* nvmlProcessUtilizationInfo_v1_t */
    unsigned long long timestamp;
    unsigned int pid;
    unsigned int sm, mem, enc, dec, jpg, ofa;
};

struct nv_processes_util {         /* nvmlProcessesUtilizationInfo_t, version 1 */
    unsigned int version;
    unsigned int count;
    unsigned long long last_seen;
    struct nv_process_util *samples;
};

#define NV_VALUE_NOT_AVAILABLE (~0ull)
#define NV_PROCESSES_UTIL_V1 ((unsigned int)sizeof(struct nv_processes_util) | (1u << 24))

_Static_assert(sizeof(struct nv_process_v1) == 16, "nvmlProcessInfo_v1_t is 16 bytes");
_Static_assert(sizeof(struct nv_process_v2) == 24, "nvmlProcessInfo_v2_t is 24 bytes");
_Static_assert(sizeof(struct nv_process_sample) == 32, "nvmlProcessUtilizationSample_t is 32 bytes");
_Static_assert(sizeof(struct nv_process_util) == 40, "nvmlProcessUtilizationInfo_v1_t is 40 bytes");
_Static_assert(NV_PROCESSES_UTIL_V1 == 0x01000018u, "ProcessesUtilizationInfo_v1");

#define NV_TEMPERATURE_V1 ((unsigned int)sizeof(struct nv_temperature) | (1u << 24))
#define NV_MEMORY_V2 ((unsigned int)sizeof(struct nv_memory_v2) | (2u << 24))

_Static_assert(sizeof(struct nv_field_value) == 40, "nvmlFieldValue_t is 40 bytes");
_Static_assert(sizeof(struct nv_sample) == 16, "nvmlSample_t is 16 bytes");

/* Fields a driver sample buffer can serve, and their unit (NVML mW -> W). */
static const struct {
    int field;
    int type;
    double scale;
} nv_buffers[] = {
    {EGS_F_UTILIZATION, NV_SAMPLES_GPU_UTIL, 1.0},
    {EGS_F_MEMORY_BUSY, NV_SAMPLES_MEM_UTIL, 1.0},
    {EGS_F_POWER, NV_SAMPLES_POWER, 1e-3},
    {EGS_F_SM_CLOCK, NV_SAMPLES_SM_CLOCK, 1.0},
    {EGS_F_MEMORY_CLOCK, NV_SAMPLES_MEM_CLOCK, 1.0},
};
#define NV_NBUFFERS (sizeof(nv_buffers) / sizeof(nv_buffers[0]))

/* Fields with an id for nvmlDeviceGetFieldValues (mW -> W, mJ -> J). POWER_INSTANT rather
 * than nvmlDeviceGetPowerUsage, which is a one-second average on Ampere and newer. */
static const struct {
    int field;
    unsigned int id;
    double scale;
} nv_batch[] = {
    {EGS_F_POWER, NV_FI_POWER_INSTANT, 1e-3},
    {EGS_F_ENERGY, NV_FI_TOTAL_ENERGY, 1e-3},
};
#define NV_NBATCH (sizeof(nv_batch) / sizeof(nv_batch[0]))
/* Samples taken per buffer call; a buffer holding more is read again on the same tick. */
#define NV_SAMPLE_CHUNK 128
#define NV_BUFFER_HISTORY_US 1000000ull

/* --- the symbol table --------------------------------------------------------------------- */

enum {
    R_INIT, R_SHUTDOWN, R_ERROR_STRING, R_DRIVER_VERSION, R_COUNT, R_HANDLE, R_NAME, R_UUID,
    R_PCI, R_UTILIZATION, R_MEMORY, R_TEMPERATURE, R_FIELD_VALUES, R_SAMPLES, R_POWER, R_CLOCK,
    R_FAN, R_ENERGY, R_EVENT_SET_CREATE, R_REGISTER_EVENTS, R_EVENT_WAIT, R_EVENT_SET_FREE,
    R_COMPUTE_PROCS, R_GRAPHICS_PROCS, R_PROCS_UTIL, R_PROC_UTIL, R_CLOCK_REASONS, R_POWER_LIMIT,
    R_PCIE_THROUGHPUT, R_MIG_MODE, R_MIG_COUNT, R_MIG_HANDLE, R_GPU_INSTANCE, R_COMPUTE_INSTANCE, R_TOTAL_ECC,
    R_RETIRED_PAGES, R_RETIRED_PENDING, R_REMAPPED_ROWS, R_PCIE_REPLAYS, R_GPM_SUPPORT, R_GPM_ALLOC,
    R_GPM_FREE, R_GPM_MIG_SAMPLE, R_GPM_METRICS, R_COUNT_ROLES
};

static const struct egs_role nv_roles_template[R_COUNT_ROLES] = {
    [R_INIT] = {"init", {"nvmlInit_v2", "nvmlInit"}},
    [R_SHUTDOWN] = {"shutdown", {"nvmlShutdown"}},
    [R_ERROR_STRING] = {"error_string", {"nvmlErrorString"}},
    [R_DRIVER_VERSION] = {"driver_version", {"nvmlSystemGetDriverVersion"}},
    [R_COUNT] = {"device_count", {"nvmlDeviceGetCount_v2", "nvmlDeviceGetCount"}},
    [R_HANDLE] = {"device_handle", {"nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetHandleByIndex"}},
    [R_NAME] = {"name", {"nvmlDeviceGetName"}},
    [R_UUID] = {"uuid", {"nvmlDeviceGetUUID"}},
    [R_PCI] = {"pci_info", {"nvmlDeviceGetPciInfo_v3", "nvmlDeviceGetPciInfo_v2", "nvmlDeviceGetPciInfo"}},
    [R_UTILIZATION] = {"utilization", {"nvmlDeviceGetUtilizationRates"}},
    [R_MEMORY] = {"memory", {"nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetMemoryInfo"}},
    [R_TEMPERATURE] = {"temperature", {"nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperature"}},
    [R_FIELD_VALUES] = {"field_values", {"nvmlDeviceGetFieldValues"}},
    [R_SAMPLES] = {"samples", {"nvmlDeviceGetSamples"}},
    [R_POWER] = {"power_usage", {"nvmlDeviceGetPowerUsage"}},
    [R_CLOCK] = {"clock", {"nvmlDeviceGetClockInfo"}},
    [R_FAN] = {"fan_speed", {"nvmlDeviceGetFanSpeed"}},
    [R_ENERGY] = {"energy", {"nvmlDeviceGetTotalEnergyConsumption"}},
    [R_EVENT_SET_CREATE] = {"event_set_create", {"nvmlEventSetCreate"}},
    [R_REGISTER_EVENTS] = {"register_events", {"nvmlDeviceRegisterEvents"}},
    [R_EVENT_WAIT] = {"event_wait", {"nvmlEventSetWait_v2", "nvmlEventSetWait"}},
    [R_EVENT_SET_FREE] = {"event_set_free", {"nvmlEventSetFree"}},
    /* The unversioned list calls fill the v1 record (nv_list_record_size). */
    [R_COMPUTE_PROCS] = {"compute_processes", {"nvmlDeviceGetComputeRunningProcesses_v3",
                         "nvmlDeviceGetComputeRunningProcesses_v2", "nvmlDeviceGetComputeRunningProcesses"}},
    [R_GRAPHICS_PROCS] = {"graphics_processes", {"nvmlDeviceGetGraphicsRunningProcesses_v3",
                          "nvmlDeviceGetGraphicsRunningProcesses_v2", "nvmlDeviceGetGraphicsRunningProcesses"}},
    [R_PROCS_UTIL] = {"processes_utilization", {"nvmlDeviceGetProcessesUtilizationInfo"}},
    [R_PROC_UTIL] = {"process_utilization", {"nvmlDeviceGetProcessUtilization"}},
    [R_CLOCK_REASONS] = {"clock_reasons", {"nvmlDeviceGetCurrentClocksEventReasons",
                         "nvmlDeviceGetCurrentClocksThrottleReasons"}},
    [R_POWER_LIMIT] = {"power_limit", {"nvmlDeviceGetEnforcedPowerLimit"}},
    [R_PCIE_THROUGHPUT] = {"pcie_throughput", {"nvmlDeviceGetPcieThroughput"}},
    [R_MIG_MODE] = {"mig_mode", {"nvmlDeviceGetMigMode"}},
    [R_MIG_COUNT] = {"mig_device_count", {"nvmlDeviceGetMaxMigDeviceCount"}},
    [R_MIG_HANDLE] = {"mig_device_handle", {"nvmlDeviceGetMigDeviceHandleByIndex"}},
    [R_GPU_INSTANCE] = {"gpu_instance_id", {"nvmlDeviceGetGpuInstanceId"}},
    [R_COMPUTE_INSTANCE] = {"compute_instance_id", {"nvmlDeviceGetComputeInstanceId"}},
    /* The health fields' own calls, for drivers without nvmlDeviceGetFieldValues. */
    [R_TOTAL_ECC] = {"total_ecc_errors", {"nvmlDeviceGetTotalEccErrors"}},
    [R_RETIRED_PAGES] = {"retired_pages", {"nvmlDeviceGetRetiredPages_v2", "nvmlDeviceGetRetiredPages"}},
    [R_RETIRED_PENDING] = {"retired_pages_pending", {"nvmlDeviceGetRetiredPagesPendingStatus"}},
    [R_REMAPPED_ROWS] = {"remapped_rows", {"nvmlDeviceGetRemappedRows"}},
    [R_PCIE_REPLAYS] = {"pcie_replay_counter", {"nvmlDeviceGetPcieReplayCounter"}},
    /* GPM (Hopper on, drivers R520 on): MIG GPU instances' utilisation. */
    [R_GPM_SUPPORT] = {"gpm_device_support", {"nvmlGpmQueryDeviceSupport"}},
    [R_GPM_ALLOC] = {"gpm_sample_alloc", {"nvmlGpmSampleAlloc"}},
    [R_GPM_FREE] = {"gpm_sample_free", {"nvmlGpmSampleFree"}},
    [R_GPM_MIG_SAMPLE] = {"gpm_mig_sample", {"nvmlGpmMigSampleGet"}},
    [R_GPM_METRICS] = {"gpm_metrics", {"nvmlGpmMetricsGet"}},
};

_Static_assert(R_COUNT_ROLES <= EGS_MAX_ROLES, "raise EGS_MAX_ROLES");

/* GPM, from nvml.h (API 12.x / 13; pynvml carries the same): nvmlGpmSample_t is an opaque
 * handle the library allocates (nvmlGpmSampleAlloc(&s), nvmlGpmSampleFree(s));
 * nvmlGpmMigSampleGet(parent device, unsigned int gpuInstanceId, sample) fills one for a MIG
 * GPU instance; nvmlGpmMetricsGet(nvmlGpmMetricsGet_t *) computes metrics over two samples.
 * nvmlGpmSupport_t = {unsigned int version (1), isSupportedDevice};
 * nvmlGpmMetricsGet_t = {unsigned int version (1), numMetrics; sample1, sample2; metrics[]},
 * each nvmlGpmMetric_t = {unsigned int metricId; nvmlReturn_t nvmlReturn; double value;
 * metricInfo = three char pointers (short name, long name, unit)}, 40 bytes. The header's array
 * is NVML_GPM_METRIC_MAX long, a size that grew between releases (98, 210, 333, 477) under the
 * same version 1. numMetrics says how many entries the caller asks for; the request still has
 * room for the largest array known (NV_GPM_ROOM), so a driver that touches its whole array
 * stays inside ours (20 KB, zeroed once a pass per GPU instance). Metric ids (percent, 0-100): GRAPHICS_UTIL 1, SM_UTIL 2, SM_OCCUPANCY 3,
 * DRAM_BW_UTIL 10. */
typedef void *nv_gpm_sample;

struct nv_gpm_support {
    unsigned int version;
    unsigned int supported;
};

struct nv_gpm_metric {
    unsigned int id;
    nv_return ret;
    double value;
    const char *short_name, *long_name, *unit;
};

enum { NV_GPM_SUPPORT_VERSION = 1, NV_GPM_METRICS_GET_VERSION = 1 };
/* The metrics asked, in struct egs_mig's order: graphics_util, sm_util, sm_occupancy, dram_bw_util. */
static const unsigned int nv_gpm_ids[] = {1, 2, 3, 10};
#define NV_GPM_NMETRICS (sizeof(nv_gpm_ids) / sizeof(nv_gpm_ids[0]))

enum { NV_GPM_ROOM = 512 };           /* >= every release's NVML_GPM_METRIC_MAX (477 so far) */

struct nv_gpm_metrics_get {
    unsigned int version;
    unsigned int count;
    nv_gpm_sample sample1, sample2;
    struct nv_gpm_metric metrics[NV_GPM_ROOM];
};

_Static_assert(sizeof(struct nv_gpm_metric) == 40, "nvmlGpmMetric_t layout");

/* One MIG GPU instance's GPM state: two samples, allocated at its first pass and kept (the
 * newer one is the next pass's previous sample), freed at stop, when the device turns out lost,
 * leaves MIG mode or has no GPM after all. */
struct nv_gpm_instance {
    int used;
    unsigned int id;                /* GPU instance id */
    nv_gpm_sample sample[2];
    int newest;                     /* index of the latest sample taken; -1: none yet */
    unsigned int pass;              /* the device's MIG pass that last read it */
    double values[NV_GPM_NMETRICS]; /* that pass's figures (NaN: none) */
};

struct nv_gpm_dev {
    int supported;                  /* nvmlGpmQueryDeviceSupport said yes */
    struct nv_gpm_instance gi[EGS_MAX_MIG];
};

/* Per-backend state: the table (its role order is the enum above; first, as the core
 * expects), the event set and GPM's per-device state. */
struct nv_lib {
    struct egs_role roles[R_COUNT_ROLES];
    int temperature_v;              /* R_TEMPERATURE resolved to nvmlDeviceGetTemperatureV */
    int memory_v2;
    int pci_legacy;                 /* only the oldest nvmlDeviceGetPciInfo: bus id in the first 16 bytes */
    nv_event_set event_set;
    struct nv_gpm_dev *gpm;         /* by vendor index; NULL when the library has no GPM */
    unsigned int ngpm;
};

typedef nv_return (*fn_void)(void);
typedef const char *(*fn_error_string)(nv_return);
typedef nv_return (*fn_text)(char *, unsigned int);
typedef nv_return (*fn_count)(unsigned int *);
typedef nv_return (*fn_handle)(unsigned int, nv_device *);
typedef nv_return (*fn_dev_text)(nv_device, char *, unsigned int);
typedef nv_return (*fn_dev_ptr)(nv_device, void *);
typedef nv_return (*fn_dev_uint)(nv_device, unsigned int *);
typedef nv_return (*fn_dev_ull)(nv_device, unsigned long long *);
typedef nv_return (*fn_temperature)(nv_device, int, unsigned int *);
typedef nv_return (*fn_clock)(nv_device, int, unsigned int *);
typedef nv_return (*fn_field_values)(nv_device, int, struct nv_field_value *);
typedef nv_return (*fn_samples)(nv_device, int, unsigned long long, int *, unsigned int *,
                                struct nv_sample *);
typedef nv_return (*fn_processes)(nv_device, unsigned int *, void *);
typedef nv_return (*fn_process_samples)(nv_device, struct nv_process_sample *, unsigned int *,
                                        unsigned long long);
typedef nv_return (*fn_set_create)(nv_event_set *);
typedef nv_return (*fn_register)(nv_device, unsigned long long, nv_event_set);
typedef nv_return (*fn_wait)(nv_event_set, struct nv_event_data *, unsigned int);
typedef nv_return (*fn_set_free)(nv_event_set);

static nv_device h_of(const struct egs_dev *d)
{
    return d->handle;
}

static const char *nv_error(const struct nv_lib *lib, nv_return rc, char *buf, size_t cap)
{
    fn_error_string fn = EGS_FN(lib, R_ERROR_STRING, fn_error_string);
    const char *text = fn != NULL ? fn(rc) : NULL;
    snprintf(buf, cap, "%s (NVML code %d)", text != NULL ? text : "NVML error", rc);
    return buf;
}

/* Classifies one return code for one field; a lost device also fills the tick's reason. */
static unsigned char nv_classify(const struct nv_lib *lib, nv_return rc, const char *symbol,
                                 struct egs_tick *t)
{
    char msg[EGS_TEXT - 64];
    switch (rc) {
    case NV_SUCCESS:
        return EGS_R_OK;
    case NV_NOT_SUPPORTED:
    case NV_FUNCTION_NOT_FOUND:
        return EGS_R_UNSUPPORTED;
    case NV_GPU_IS_LOST:
    case NV_RESET_REQUIRED:
        return egs_tick_lost(t, rc, symbol, nv_error(lib, rc, msg, sizeof(msg)));
    default:
        return EGS_R_ERROR;
    }
}

static double nv_value_as_double(int type, const union nv_value *v)
{
    switch (type) {
    case NV_VT_DOUBLE: return v->d;
    case NV_VT_UINT: return (double)v->ui;
    case NV_VT_ULONG: return (double)v->ul;
    case NV_VT_ULONGLONG: return (double)v->ull;
    case NV_VT_SLONGLONG: return (double)v->sll;
    case NV_VT_SINT: return (double)v->si;
    case NV_VT_USHORT: return (double)v->us;
    default: return (double)v->ui;
    }
}

static void nv_read_calls(const struct nv_lib *lib, struct egs_dev *d, struct egs_tick *t)
{
    nv_device h = d->handle;
    nv_return rc;
    unsigned char s;

    if (egs_want(t, EGS_F_UTILIZATION) || egs_want(t, EGS_F_MEMORY_BUSY)) {
        struct nv_utilization u = {0, 0};
        t->calls++;
        rc = EGS_FN(lib, R_UTILIZATION, fn_dev_ptr)(h, &u);
        s = nv_classify(lib, rc, lib->roles[R_UTILIZATION].symbol, t);
        egs_put(t, EGS_F_UTILIZATION, s, u.gpu);
        egs_put(t, EGS_F_MEMORY_BUSY, s, u.memory);
    }
    if (egs_want(t, EGS_F_MEMORY_USED) || egs_want(t, EGS_F_MEMORY_TOTAL)) {
        unsigned long long used = 0, total = 0;
        if (lib->memory_v2) {
            struct nv_memory_v2 m = {.version = NV_MEMORY_V2};
            t->calls++;
            rc = EGS_FN(lib, R_MEMORY, fn_dev_ptr)(h, &m);
            used = m.used;
            total = m.total;
        } else {
            struct nv_memory m;
            t->calls++;
            rc = EGS_FN(lib, R_MEMORY, fn_dev_ptr)(h, &m);
            used = m.used;
            total = m.total;
        }
        s = nv_classify(lib, rc, lib->roles[R_MEMORY].symbol, t);
        egs_put(t, EGS_F_MEMORY_USED, s, (double)used);
        egs_put(t, EGS_F_MEMORY_TOTAL, s, (double)total);
    }
    if (egs_want(t, EGS_F_TEMPERATURE)) {
        double c;
        if (lib->temperature_v) {
            struct nv_temperature v = {.version = NV_TEMPERATURE_V1, .sensor_type = NV_TEMPERATURE_GPU};
            t->calls++;
            rc = EGS_FN(lib, R_TEMPERATURE, fn_dev_ptr)(h, &v);
            c = v.temperature;
        } else {
            unsigned int ui = 0;
            t->calls++;
            rc = EGS_FN(lib, R_TEMPERATURE, fn_temperature)(h, NV_TEMPERATURE_GPU, &ui);
            c = ui;
        }
        egs_put(t, EGS_F_TEMPERATURE, nv_classify(lib, rc, lib->roles[R_TEMPERATURE].symbol, t), c);
    }
    /* NVML gives power in mW and energy in mJ; the core hands out W and J. */
    if (egs_want(t, EGS_F_POWER)) {
        unsigned int mw = 0;
        t->calls++;
        rc = EGS_FN(lib, R_POWER, fn_dev_uint)(h, &mw);
        egs_put(t, EGS_F_POWER, nv_classify(lib, rc, lib->roles[R_POWER].symbol, t), mw / 1000.0);
    }
    if (egs_want(t, EGS_F_SM_CLOCK)) {
        unsigned int mhz = 0;
        t->calls++;
        rc = EGS_FN(lib, R_CLOCK, fn_clock)(h, NV_CLOCK_SM, &mhz);
        egs_put(t, EGS_F_SM_CLOCK, nv_classify(lib, rc, lib->roles[R_CLOCK].symbol, t), mhz);
    }
    if (egs_want(t, EGS_F_MEMORY_CLOCK)) {
        unsigned int mhz = 0;
        t->calls++;
        rc = EGS_FN(lib, R_CLOCK, fn_clock)(h, NV_CLOCK_MEM, &mhz);
        egs_put(t, EGS_F_MEMORY_CLOCK, nv_classify(lib, rc, lib->roles[R_CLOCK].symbol, t), mhz);
    }
    if (egs_want(t, EGS_F_ENERGY)) {
        unsigned long long mj = 0;
        t->calls++;
        rc = EGS_FN(lib, R_ENERGY, fn_dev_ull)(h, &mj);
        egs_put(t, EGS_F_ENERGY, nv_classify(lib, rc, lib->roles[R_ENERGY].symbol, t), (double)mj / 1000.0);
    }
    if (egs_want(t, EGS_F_FAN)) {
        unsigned int pct = 0;
        t->calls++;
        rc = EGS_FN(lib, R_FAN, fn_dev_uint)(h, &pct);
        egs_put(t, EGS_F_FAN, nv_classify(lib, rc, lib->roles[R_FAN].symbol, t), pct);
    }
}

/* Whether an answer means "this path does not serve the field": the field moves to its own
 * call (the driver may still answer that one, as when POWER_INSTANT stops after a driver
 * update or a MIG change while the averaged power call works). */
static int nv_path_gone(nv_return rc)
{
    return rc == NV_NOT_SUPPORTED || rc == NV_FUNCTION_NOT_FOUND;
}

/* The role of field f's own call. */
static int nv_call_role(int f)
{
    switch (f) {
    case EGS_F_UTILIZATION: case EGS_F_MEMORY_BUSY: return R_UTILIZATION;
    case EGS_F_MEMORY_USED: case EGS_F_MEMORY_TOTAL: return R_MEMORY;
    case EGS_F_TEMPERATURE: return R_TEMPERATURE;
    case EGS_F_POWER: return R_POWER;
    case EGS_F_SM_CLOCK: case EGS_F_MEMORY_CLOCK: return R_CLOCK;
    case EGS_F_ENERGY: return R_ENERGY;
    default: return R_FAN;
    }
}

/* Field f's buffer or batch entry said it does not serve f: its own call from now on, or
 * unsupported when this NVML has no such call. */
static void nv_path_lost(const struct nv_lib *lib, struct egs_dev *d, struct egs_tick *t, int f)
{
    egs_fall_back(d, f);
    if (lib->roles[nv_call_role(f)].fn == NULL) {
        d->path[f] = EGS_PATH_NONE;
        egs_put(t, f, EGS_R_UNSUPPORTED, 0.0);
    }
}

/* The BUFFER fields of t->want: every sample since the last one taken, oldest first. */
static void nv_read_buffers(const struct nv_lib *lib, struct egs_dev *d, struct egs_tick *t)
{
    struct nv_sample buf[NV_SAMPLE_CHUNK];
    for (unsigned int k = 0; k < NV_NBUFFERS; k++) {
        const int f = nv_buffers[k].field;
        if (!(d->buffered & (1u << f)) || !egs_want(t, f))
            continue;
        for (;;) {
            int type = 0;
            unsigned int n = NV_SAMPLE_CHUNK;
            t->calls++;
            nv_return rc = EGS_FN(lib, R_SAMPLES, fn_samples)(h_of(d), nv_buffers[k].type,
                                                              d->last_seen[f], &type, &n, buf);
            if (rc == NV_NOT_FOUND)       /* no sample since last_seen */
                break;
            if (rc != NV_SUCCESS) {
                if (nv_path_gone(rc))
                    nv_path_lost(lib, d, t, f);
                else
                    egs_put(t, f, nv_classify(lib, rc, lib->roles[R_SAMPLES].symbol, t), 0.0);
                break;
            }
            unsigned int taken = 0;
            for (unsigned int j = 0; j < n && j < NV_SAMPLE_CHUNK; j++) {
                if (buf[j].timestamp <= d->last_seen[f])
                    continue;
                if (!egs_add_sample(t, f, buf[j].timestamp * 1e-6,
                                    nv_value_as_double(type, &buf[j].value) * nv_buffers[k].scale))
                    break;
                d->last_seen[f] = buf[j].timestamp;
                taken++;
            }
            if (n < NV_SAMPLE_CHUNK || taken == 0)
                break;
        }
    }
}

/* The BATCH fields of t->want, in one nvmlDeviceGetFieldValues call. The call can succeed
 * while single entries fail: each entry's own code decides. */
static void nv_read_batch(const struct nv_lib *lib, struct egs_dev *d, struct egs_tick *t)
{
    struct nv_field_value fv[NV_NBATCH];
    int which[NV_NBATCH];
    int n = 0;
    memset(fv, 0, sizeof(fv));
    for (unsigned int k = 0; k < NV_NBATCH; k++) {
        if ((d->batched & (1u << nv_batch[k].field)) && egs_want(t, nv_batch[k].field)) {
            fv[n].field_id = nv_batch[k].id;
            which[n++] = (int)k;
        }
    }
    if (n == 0)
        return;
    t->calls++;
    nv_return call = EGS_FN(lib, R_FIELD_VALUES, fn_field_values)(h_of(d), n, fv);
    for (int j = 0; j < n; j++) {
        const int f = nv_batch[which[j]].field;
        nv_return rc = call == NV_SUCCESS ? fv[j].ret : call;
        if (nv_path_gone(rc)) {
            nv_path_lost(lib, d, t, f);
            continue;
        }
        egs_put(t, f, nv_classify(lib, rc, lib->roles[R_FIELD_VALUES].symbol, t),
                nv_value_as_double(fv[j].value_type, &fv[j].value) * nv_batch[which[j]].scale);
    }
}

/* Buffers, then the batch, then every other wanted field by its own call - including a field
 * that fell back from a buffer or the batch on this very tick, so it is not missed. */
static void nv_read(struct egs_backend *b, struct egs_dev *d, struct egs_tick *t)
{
    const struct nv_lib *lib = b->impl;
    const unsigned int want = t->want;
    if (d->buffered & want)
        nv_read_buffers(lib, d, t);
    if (d->batched & want)
        nv_read_batch(lib, d, t);
    unsigned int done = 0;
    for (int f = 0; f < EGS_NFIELDS; f++)
        if (t->status[f] != EGS_R_SKIPPED)
            done |= 1u << f;
    t->want = want & ~d->buffered & ~d->batched & ~done;
    nv_read_calls(lib, d, t);
    t->want = want;
}

/* Fields whose serving symbol the library lacks are unsupported on every device. */
static unsigned int nv_missing_fields(const struct nv_lib *lib)
{
    unsigned int mask = 0;
    if (lib->roles[R_UTILIZATION].fn == NULL)
        mask |= 1u << EGS_F_UTILIZATION | 1u << EGS_F_MEMORY_BUSY;
    if (lib->roles[R_MEMORY].fn == NULL)
        mask |= 1u << EGS_F_MEMORY_USED | 1u << EGS_F_MEMORY_TOTAL;
    if (lib->roles[R_TEMPERATURE].fn == NULL)
        mask |= 1u << EGS_F_TEMPERATURE;
    if (lib->roles[R_FIELD_VALUES].fn == NULL && lib->roles[R_POWER].fn == NULL)
        mask |= 1u << EGS_F_POWER;
    if (lib->roles[R_CLOCK].fn == NULL)
        mask |= 1u << EGS_F_SM_CLOCK | 1u << EGS_F_MEMORY_CLOCK;
    if (lib->roles[R_ENERGY].fn == NULL)
        mask |= 1u << EGS_F_ENERGY;
    if (lib->roles[R_FAN].fn == NULL)
        mask |= 1u << EGS_F_FAN;
    return mask;
}

/* Unix microseconds now. */
static unsigned long long nv_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000u;
}

/* Chooses, once per device, each field's path: a sample buffer the driver keeps for it, else
 * an id nvmlDeviceGetFieldValues answers, else its own call (egs_core.h, EGS_PATH_*). */
static void nv_choose_paths(const struct egs_core *core, const struct nv_lib *lib, struct egs_dev *d)
{
    nv_device h = d->handle;
    d->buffered = d->batched = 0;
    if (lib->roles[R_SAMPLES].fn != NULL && !core->cfg.no_buffers) {
        /* The first read takes the driver's samples of the last second too: a buffered field
         * has values from the first tick on, as a polled one does, and nothing older. */
        unsigned long long now = nv_now_us() - NV_BUFFER_HISTORY_US;
        for (unsigned int k = 0; k < NV_NBUFFERS; k++) {
            int type = 0;
            unsigned int n = 0;
            /* NULL asks only how many samples there are; NOT_FOUND is an empty buffer. */
            nv_return rc = EGS_FN(lib, R_SAMPLES, fn_samples)(h, nv_buffers[k].type, now, &type, &n, NULL);
            if (rc == NV_SUCCESS || rc == NV_NOT_FOUND) {
                d->buffered |= 1u << nv_buffers[k].field;
                d->last_seen[nv_buffers[k].field] = now;
            }
        }
    }
    if (lib->roles[R_FIELD_VALUES].fn != NULL) {
        struct nv_field_value fv[NV_NBATCH];
        memset(fv, 0, sizeof(fv));
        for (unsigned int k = 0; k < NV_NBATCH; k++)
            fv[k].field_id = nv_batch[k].id;
        if (EGS_FN(lib, R_FIELD_VALUES, fn_field_values)(h, (int)NV_NBATCH, fv) == NV_SUCCESS) {
            for (unsigned int k = 0; k < NV_NBATCH; k++) {
                const int f = nv_batch[k].field;
                if (fv[k].ret != NV_SUCCESS || (d->buffered & (1u << f)))
                    continue;
                /* With batching off, POWER_INSTANT still beats the averaged call: it stays,
                 * as the one entry of its own nvmlDeviceGetFieldValues call. */
                if (!core->cfg.no_batch || f == EGS_F_POWER)
                    d->batched |= 1u << f;
            }
        }
    }
    /* A buffer or the batch serves a field this NVML has no call of its own for. */
    d->unsupported &= ~(d->buffered | d->batched);
    for (int f = 0; f < EGS_NFIELDS; f++)
        d->path[f] = (d->unsupported & (1u << f)) ? EGS_PATH_NONE
                     : (d->buffered & (1u << f)) ? EGS_PATH_BUFFER
                     : (d->batched & (1u << f)) ? EGS_PATH_BATCH : EGS_PATH_CALL;
    memcpy(d->info.paths, d->path, sizeof(d->info.paths));
}

/* --- health signals ----------------------------------------------------------------------- */

/* Field ids (pynvml's NVML_FI_DEV_*) of the health signals one nvmlDeviceGetFieldValues call
 * serves, their scope and the factor to the core's unit. */
#define NV_ALL_LINKS 0xFFFFFFFFu   /* an NVLink field's scopeId for the sum over all links (nvml.h) */
static const struct {
    int health;
    unsigned int id;
    unsigned int scope;
    double scale;
} nv_health_fields[] = {
    {EGS_H_ECC_CORRECTED_VOLATILE, 3, 0, 1},      /* ECC_SBE_VOL_TOTAL */
    {EGS_H_ECC_UNCORRECTED_VOLATILE, 4, 0, 1},    /* ECC_DBE_VOL_TOTAL */
    {EGS_H_ECC_CORRECTED_AGGREGATE, 5, 0, 1},     /* ECC_SBE_AGG_TOTAL */
    {EGS_H_ECC_UNCORRECTED_AGGREGATE, 6, 0, 1},   /* ECC_DBE_AGG_TOTAL */
    {EGS_H_RETIRED_SBE, 29, 0, 1},
    {EGS_H_RETIRED_DBE, 30, 0, 1},
    {EGS_H_RETIRED_PENDING, 31, 0, 1},
    {EGS_H_PCIE_REPLAYS, 94, 0, 1},               /* PCIE_REPLAY_COUNTER */
    {EGS_H_REMAPPED_CORRECTABLE, 142, 0, 1},      /* REMAPPED_COR */
    {EGS_H_REMAPPED_UNCORRECTABLE, 143, 0, 1},    /* REMAPPED_UNC */
    {EGS_H_REMAP_PENDING, 144, 0, 1},
    {EGS_H_REMAP_FAILURE, 145, 0, 1},
    /* NVLINK_THROUGHPUT_DATA_TX / _RX: counters of KiB of data (without protocol overhead); a
     * GPU without NVLink answers NOT_SUPPORTED for the entry. */
    {EGS_H_NVLINK_TX, 138, NV_ALL_LINKS, 1024},
    {EGS_H_NVLINK_RX, 139, NV_ALL_LINKS, 1024},
};
#define NV_NHEALTH_FIELDS (sizeof(nv_health_fields) / sizeof(nv_health_fields[0]))

/* Bits of egs_dev.health_off: calls that said NOT_SUPPORTED on the device. */
enum {
    NV_HOFF_REASONS = 1, NV_HOFF_FIELDS = 2, NV_HOFF_LIMIT = 4, NV_HOFF_PCIE = 8, NV_HOFF_MIG = 16,
    NV_HOFF_ECC = 32, NV_HOFF_RETIRED = 64, NV_HOFF_RETIRED_PENDING = 128, NV_HOFF_REMAPPED = 256,
    NV_HOFF_REPLAYS = 512, NV_HOFF_GPM = 1024
};

static int nv_health_ok(struct egs_dev *d, nv_return rc, unsigned int bit);

typedef nv_return (*fn_mig_mode)(nv_device, unsigned int *, unsigned int *);
typedef nv_return (*fn_mig_handle)(nv_device, unsigned int, nv_device *);

/* The memory of one device handle (a MIG device's: its instance's share), in bytes. */
static nv_return nv_memory_of(const struct nv_lib *lib, nv_device h, double *used, double *total)
{
    nv_return rc;
    if (lib->memory_v2) {
        struct nv_memory_v2 m = {.version = NV_MEMORY_V2};
        rc = EGS_FN(lib, R_MEMORY, fn_dev_ptr)(h, &m);
        *used = (double)m.used, *total = (double)m.total;
    } else {
        struct nv_memory m = {0, 0, 0};
        rc = EGS_FN(lib, R_MEMORY, fn_dev_ptr)(h, &m);
        *used = (double)m.used, *total = (double)m.total;
    }
    return rc;
}

typedef nv_return (*fn_gpm_support)(nv_device, struct nv_gpm_support *);
typedef nv_return (*fn_gpm_alloc)(nv_gpm_sample *);
typedef nv_return (*fn_gpm_free)(nv_gpm_sample);
typedef nv_return (*fn_gpm_mig_sample)(nv_device, unsigned int, nv_gpm_sample);
typedef nv_return (*fn_gpm_metrics)(struct nv_gpm_metrics_get *);

/* Frees one GPU instance's samples (the library's memory) and forgets it. */
static void nv_gpm_drop(const struct nv_lib *lib, struct nv_gpm_instance *gi)
{
    for (int k = 0; k < 2; k++)
        if (gi->sample[k] != NULL)
            EGS_FN(lib, R_GPM_FREE, fn_gpm_free)(gi->sample[k]);
    memset(gi, 0, sizeof(*gi));
    gi->newest = -1;
}

static void nv_gpm_drop_device(const struct nv_lib *lib, struct nv_gpm_dev *g)
{
    for (int i = 0; i < EGS_MAX_MIG; i++)
        if (g->gi[i].used)
            nv_gpm_drop(lib, &g->gi[i]);
}

/* Device d's GPM state when GPM can be read on it (asking nvmlGpmQueryDeviceSupport once, and
 * again after a failure other than NOT_SUPPORTED); NULL switches GPM off for the pass. */
static struct nv_gpm_dev *nv_gpm_of(const struct nv_lib *lib, struct egs_dev *d, struct egs_health *h)
{
    if (lib->gpm == NULL || d->info.vendor_index >= lib->ngpm || (d->health_off & NV_HOFF_GPM))
        return NULL;
    struct nv_gpm_dev *g = &lib->gpm[d->info.vendor_index];
    if (!g->supported) {
        struct nv_gpm_support sup = {.version = NV_GPM_SUPPORT_VERSION, .supported = 0};
        h->calls++;
        if (!nv_health_ok(d, EGS_FN(lib, R_GPM_SUPPORT, fn_gpm_support)(d->handle, &sup), NV_HOFF_GPM))
            return NULL;
        if (!sup.supported) {
            d->health_off |= NV_HOFF_GPM;
            return NULL;
        }
        g->supported = 1;
    }
    return g;
}

/* The GPM state of GPU instance `id` (claimed when new: a free entry, else the one read
 * longest ago, whose samples are dropped). */
static struct nv_gpm_instance *nv_gpm_instance(const struct nv_lib *lib, struct nv_gpm_dev *g, unsigned int id)
{
    struct nv_gpm_instance *oldest = &g->gi[0];
    for (int i = 0; i < EGS_MAX_MIG; i++) {
        struct nv_gpm_instance *gi = &g->gi[i];
        if (gi->used && gi->id == id)
            return gi;
        if (!gi->used || (oldest->used && gi->pass < oldest->pass))
            oldest = gi;
    }
    nv_gpm_drop(lib, oldest);
    oldest->used = 1;
    oldest->id = id;
    return oldest;
}

/* One pass's GPM figures of GPU instance `id` into out (NaN where none): a new sample, and the
 * metrics over it and the previous pass's. Once a pass per GPU instance, however many compute
 * instances it has. NOT_SUPPORTED switches GPM off for the device (its samples freed); a lost
 * device frees its samples (the pass does not come back to it). */
static void nv_gpm_read(const struct nv_lib *lib, struct egs_dev *d, struct nv_gpm_dev *g, unsigned int pass,
                        unsigned int id, struct egs_health *h, double out[NV_GPM_NMETRICS])
{
    for (size_t k = 0; k < NV_GPM_NMETRICS; k++)
        out[k] = NAN;
    struct nv_gpm_instance *gi = nv_gpm_instance(lib, g, id);
    if (gi->pass != pass) {
        gi->pass = pass;
        for (size_t k = 0; k < NV_GPM_NMETRICS; k++)
            gi->values[k] = NAN;
        nv_return rc = NV_SUCCESS;
        for (int k = 0; k < 2 && rc == NV_SUCCESS; k++)
            if (gi->sample[k] == NULL) {
                h->calls++;
                rc = EGS_FN(lib, R_GPM_ALLOC, fn_gpm_alloc)(&gi->sample[k]);
                if (rc != NV_SUCCESS)
                    gi->sample[k] = NULL;
            }
        int cur = gi->newest == 0 ? 1 : 0;
        if (rc == NV_SUCCESS) {
            h->calls++;
            rc = EGS_FN(lib, R_GPM_MIG_SAMPLE, fn_gpm_mig_sample)(d->handle, id, gi->sample[cur]);
        }
        if (rc == NV_SUCCESS && gi->newest >= 0) {
            struct nv_gpm_metrics_get get;
            memset(&get, 0, sizeof(get));
            get.version = NV_GPM_METRICS_GET_VERSION;
            get.count = (unsigned int)NV_GPM_NMETRICS;
            get.sample1 = gi->sample[gi->newest];
            get.sample2 = gi->sample[cur];
            for (size_t k = 0; k < NV_GPM_NMETRICS; k++)
                get.metrics[k].id = nv_gpm_ids[k];
            h->calls++;
            rc = EGS_FN(lib, R_GPM_METRICS, fn_gpm_metrics)(&get);
            for (size_t k = 0; rc == NV_SUCCESS && k < NV_GPM_NMETRICS; k++)
                if (get.metrics[k].ret == NV_SUCCESS)
                    gi->values[k] = get.metrics[k].value;
        }
        if (rc == NV_SUCCESS) {
            gi->newest = cur;
        } else if (rc == NV_NOT_SUPPORTED || rc == NV_FUNCTION_NOT_FOUND) {
            d->health_off |= NV_HOFF_GPM;
            nv_gpm_drop_device(lib, g);
            return;
        } else if (rc == NV_GPU_IS_LOST || rc == NV_RESET_REQUIRED) {
            nv_gpm_drop_device(lib, g);
            return;
        }
        /* Any other failure leaves the previous sample as it was: the next pass measures
         * over both intervals. */
    }
    memcpy(out, gi->values, sizeof(gi->values));
}

/* The device's MIG instances, when it is in MIG mode: for each MIG device handle, its GPU
 * and compute instance ids and UUID (read again only when the handle changes or every
 * EGS_MIG_REREAD passes) and memory: two calls a pass for the mode and the slot count, one per
 * slot, one more per instance (four on a re-read). */
static void nv_read_mig(const struct nv_lib *lib, struct egs_dev *d, struct egs_health *h)
{
    if (lib->roles[R_MIG_MODE].fn == NULL || lib->roles[R_MIG_COUNT].fn == NULL ||
        lib->roles[R_MIG_HANDLE].fn == NULL || (d->health_off & NV_HOFF_MIG))
        return;
    unsigned int current = 0, pending = 0, slots = 0;
    h->calls++;
    if (!nv_health_ok(d, EGS_FN(lib, R_MIG_MODE, fn_mig_mode)(d->handle, &current, &pending), NV_HOFF_MIG))
        return;
    h->mig = current == 1;
    struct nv_gpm_dev *gpm = lib->gpm != NULL && d->info.vendor_index < lib->ngpm ? &lib->gpm[d->info.vendor_index] : NULL;
    if (!h->mig) {
        if (gpm != NULL)
            nv_gpm_drop_device(lib, gpm);   /* MIG was switched off: its instances are gone */
        return;
    }
    h->calls++;
    if (EGS_FN(lib, R_MIG_COUNT, fn_dev_uint)(d->handle, &slots) != NV_SUCCESS)
        return;
    unsigned int pass = d->mig_passes + 1;  /* never 0, a GPU instance's "not read yet" */
    int reread = d->mig_passes++ % EGS_MIG_REREAD == 0;
    gpm = nv_gpm_of(lib, d, h);
    for (unsigned int i = 0; i < slots && i < EGS_MAX_MIG; i++) {
        nv_device mig = NULL;
        h->calls++;
        if (EGS_FN(lib, R_MIG_HANDLE, fn_mig_handle)(d->handle, i, &mig) != NV_SUCCESS) {
            d->mig_handle[i] = NULL;
            continue;   /* NOT_FOUND: an empty slot */
        }
        if (reread || mig != d->mig_handle[i]) {
            int changed = mig != d->mig_handle[i];
            d->mig_handle[i] = mig;
            d->mig_instance[i] = d->mig_compute[i] = 0;
            d->mig_uuid[i][0] = '\0';
            if (lib->roles[R_GPU_INSTANCE].fn != NULL) {
                h->calls++;
                EGS_FN(lib, R_GPU_INSTANCE, fn_dev_uint)(mig, &d->mig_instance[i]);
            }
            if (lib->roles[R_COMPUTE_INSTANCE].fn != NULL) {
                h->calls++;
                EGS_FN(lib, R_COMPUTE_INSTANCE, fn_dev_uint)(mig, &d->mig_compute[i]);
            }
            if (lib->roles[R_UUID].fn != NULL) {
                h->calls++;
                if (EGS_FN(lib, R_UUID, fn_dev_text)(mig, d->mig_uuid[i], EGS_NAME) != NV_SUCCESS)
                    d->mig_uuid[i][0] = '\0';
            }
            /* A new handle may be a GPU instance made again under the same id: its counters
             * start over, so the previous sample is of no use (unless this pass took it). */
            for (int k = 0; changed && gpm != NULL && k < EGS_MAX_MIG; k++)
                if (gpm->gi[k].used && gpm->gi[k].id == d->mig_instance[i] && gpm->gi[k].pass != pass)
                    gpm->gi[k].newest = -1;
        }
        struct egs_mig *m = &h->migs[h->nmig++];
        m->instance = d->mig_instance[i];
        m->compute_instance = d->mig_compute[i];
        memcpy(m->uuid, d->mig_uuid[i], sizeof(m->uuid));
        m->memory_used = m->memory_total = NAN;
        double used, total;
        h->calls++;
        if (nv_memory_of(lib, mig, &used, &total) == NV_SUCCESS)
            m->memory_used = used, m->memory_total = total;
        double gpm_values[NV_GPM_NMETRICS];
        for (size_t k = 0; k < NV_GPM_NMETRICS; k++)
            gpm_values[k] = NAN;
        if (gpm != NULL && !(d->health_off & NV_HOFF_GPM))
            nv_gpm_read(lib, d, gpm, pass, m->instance, h, gpm_values);
        m->graphics_util = gpm_values[0];
        m->sm_util = gpm_values[1];
        m->sm_occupancy = gpm_values[2];
        m->dram_bw_util = gpm_values[3];
    }
}

/* NOT_SUPPORTED (or no such entry point) switches the call off for the device. */
static int nv_health_ok(struct egs_dev *d, nv_return rc, unsigned int bit)
{
    if (rc == NV_NOT_SUPPORTED || rc == NV_FUNCTION_NOT_FOUND)
        d->health_off |= bit;
    return rc == NV_SUCCESS;
}

typedef nv_return (*fn_total_ecc)(nv_device, int, int, unsigned long long *);
typedef nv_return (*fn_retired_v1)(nv_device, int, unsigned int *, unsigned long long *);
typedef nv_return (*fn_retired_v2)(nv_device, int, unsigned int *, unsigned long long *, unsigned long long *);
typedef nv_return (*fn_remapped)(nv_device, unsigned int *, unsigned int *, unsigned int *, unsigned int *);

/* The field-values entries, each from its own call, for a driver without
 * nvmlDeviceGetFieldValues: ECC (nvmlDeviceGetTotalEccErrors: corrected / uncorrected x
 * volatile / aggregate), retired pages (nvmlDeviceGetRetiredPages(_v2), asked for the count
 * only, and ...PendingStatus), remapped rows (nvmlDeviceGetRemappedRows) and the PCIe replay
 * counter: up to eight calls. NVLink throughput has no call of its own here. */
static void nv_read_health_calls(const struct nv_lib *lib, struct egs_dev *d, struct egs_health *h)
{
    nv_device dev = d->handle;
    if (lib->roles[R_TOTAL_ECC].fn != NULL && !(d->health_off & NV_HOFF_ECC)) {
        static const int slot[2][2] = {
            {EGS_H_ECC_CORRECTED_VOLATILE, EGS_H_ECC_CORRECTED_AGGREGATE},
            {EGS_H_ECC_UNCORRECTED_VOLATILE, EGS_H_ECC_UNCORRECTED_AGGREGATE},
        };
        for (int error = 0; error < 2; error++)        /* nvmlMemoryErrorType_t: corrected, uncorrected */
            for (int counter = 0; counter < 2; counter++) {   /* nvmlEccCounterType_t: volatile, aggregate */
                unsigned long long n = 0;
                h->calls++;
                nv_return rc = EGS_FN(lib, R_TOTAL_ECC, fn_total_ecc)(dev, error, counter, &n);
                if (!nv_health_ok(d, rc, NV_HOFF_ECC))
                    goto ecc_done;
                h->values[slot[error][counter]] = (double)n;
            }
    }
ecc_done:
    if (lib->roles[R_RETIRED_PAGES].fn != NULL && !(d->health_off & NV_HOFF_RETIRED)) {
        int v2 = strcmp(lib->roles[R_RETIRED_PAGES].symbol, "nvmlDeviceGetRetiredPages_v2") == 0;
        for (int cause = 0; cause < 2; cause++) {     /* multiple single-bit, double-bit */
            /* A count of 0 and no buffer asks for the count: SUCCESS or INSUFFICIENT_SIZE. */
            unsigned int n = 0;
            h->calls++;
            nv_return rc = v2 ? EGS_FN(lib, R_RETIRED_PAGES, fn_retired_v2)(dev, cause, &n, NULL, NULL)
                              : EGS_FN(lib, R_RETIRED_PAGES, fn_retired_v1)(dev, cause, &n, NULL);
            if (rc == NV_INSUFFICIENT_SIZE)
                rc = NV_SUCCESS;
            if (!nv_health_ok(d, rc, NV_HOFF_RETIRED))
                break;
            h->values[cause == 0 ? EGS_H_RETIRED_SBE : EGS_H_RETIRED_DBE] = n;
        }
    }
    if (lib->roles[R_RETIRED_PENDING].fn != NULL && !(d->health_off & NV_HOFF_RETIRED_PENDING)) {
        unsigned int pending = 0;    /* nvmlEnableState_t */
        h->calls++;
        if (nv_health_ok(d, EGS_FN(lib, R_RETIRED_PENDING, fn_dev_uint)(dev, &pending), NV_HOFF_RETIRED_PENDING))
            h->values[EGS_H_RETIRED_PENDING] = pending != 0;
    }
    if (lib->roles[R_REMAPPED_ROWS].fn != NULL && !(d->health_off & NV_HOFF_REMAPPED)) {
        unsigned int corr = 0, unc = 0, pending = 0, failure = 0;
        h->calls++;
        if (nv_health_ok(d, EGS_FN(lib, R_REMAPPED_ROWS, fn_remapped)(dev, &corr, &unc, &pending, &failure),
                         NV_HOFF_REMAPPED)) {
            h->values[EGS_H_REMAPPED_CORRECTABLE] = corr;
            h->values[EGS_H_REMAPPED_UNCORRECTABLE] = unc;
            h->values[EGS_H_REMAP_PENDING] = pending != 0;
            h->values[EGS_H_REMAP_FAILURE] = failure != 0;
        }
    }
    if (lib->roles[R_PCIE_REPLAYS].fn != NULL && !(d->health_off & NV_HOFF_REPLAYS)) {
        unsigned int n = 0;
        h->calls++;
        if (nv_health_ok(d, EGS_FN(lib, R_PCIE_REPLAYS, fn_dev_uint)(dev, &n), NV_HOFF_REPLAYS))
            h->values[EGS_H_PCIE_REPLAYS] = n;
    }
}

static void nv_read_health(struct egs_backend *b, struct egs_dev *d, struct egs_health *h)
{
    const struct nv_lib *lib = b->impl;
    nv_device dev = d->handle;
    if (lib->roles[R_CLOCK_REASONS].fn != NULL && !(d->health_off & NV_HOFF_REASONS)) {
        unsigned long long reasons = 0;
        h->calls++;
        if (nv_health_ok(d, EGS_FN(lib, R_CLOCK_REASONS, fn_dev_ull)(dev, &reasons), NV_HOFF_REASONS))
            h->values[EGS_H_CLOCK_REASONS] = (double)reasons;
    }
    if (lib->roles[R_FIELD_VALUES].fn != NULL && !(d->health_off & NV_HOFF_FIELDS)) {
        struct nv_field_value fv[NV_NHEALTH_FIELDS];
        memset(fv, 0, sizeof(fv));
        for (size_t k = 0; k < NV_NHEALTH_FIELDS; k++)
            fv[k].field_id = nv_health_fields[k].id, fv[k].scope_id = nv_health_fields[k].scope;
        h->calls++;
        if (nv_health_ok(d, EGS_FN(lib, R_FIELD_VALUES, fn_field_values)(dev, (int)NV_NHEALTH_FIELDS, fv),
                         NV_HOFF_FIELDS)) {
            int any = 0;
            for (size_t k = 0; k < NV_NHEALTH_FIELDS; k++) {
                if (fv[k].ret != NV_SUCCESS)
                    continue;
                h->values[nv_health_fields[k].health] =
                    nv_value_as_double(fv[k].value_type, &fv[k].value) * nv_health_fields[k].scale;
                any = 1;
            }
            /* Not one entry answers on this device: the call is of no use to ask again. */
            if (!any)
                d->health_off |= NV_HOFF_FIELDS;
        }
    }
    if (lib->roles[R_FIELD_VALUES].fn == NULL)
        nv_read_health_calls(lib, d, h);
    if (lib->roles[R_POWER_LIMIT].fn != NULL && !(d->health_off & NV_HOFF_LIMIT)) {
        unsigned int mw = 0;
        h->calls++;
        if (nv_health_ok(d, EGS_FN(lib, R_POWER_LIMIT, fn_dev_uint)(dev, &mw), NV_HOFF_LIMIT))
            h->values[EGS_H_POWER_LIMIT] = mw / 1000.0;
    }
    if (lib->roles[R_PCIE_THROUGHPUT].fn != NULL && !(d->health_off & NV_HOFF_PCIE)) {
        /* NVML gives KB/s; taken as 1000 bytes (nvml.h does not say KiB). */
        for (int counter = 0; counter < 2; counter++) {
            unsigned int kbps = 0;
            h->calls++;
            if (!nv_health_ok(d, EGS_FN(lib, R_PCIE_THROUGHPUT, fn_clock)(dev, counter, &kbps), NV_HOFF_PCIE))
                break;
            h->values[counter == 0 ? EGS_H_PCIE_TX : EGS_H_PCIE_RX] = kbps * 1000.0;
        }
    }
    nv_read_mig(lib, d, h);
}

/* --- per-process reads ------------------------------------------------------------------- */

/* The record the resolved list call fills: the unversioned symbol is the v1 layout. */
static size_t nv_list_record_size(const struct nv_lib *lib, int role)
{
    const char *sym = lib->roles[role].symbol;
    size_t n = strlen(sym);
    return n > 3 && sym[n - 3] == '_' && sym[n - 2] == 'v' ? sizeof(struct nv_process_v2)
                                                            : sizeof(struct nv_process_v1);
}

/* Fails the pass with NVML's reason, or marks it lost; returns rc. */
static nv_return nv_proc_error(const struct nv_lib *lib, struct egs_proc_read *r, nv_return rc, int role)
{
    char msg[EGS_TEXT - 64];
    if (rc == NV_GPU_IS_LOST || rc == NV_RESET_REQUIRED)
        r->info.state = EGS_PLIST_LOST;
    else
        egs_proc_failed(r, rc, lib->roles[role].symbol, nv_error(lib, rc, msg, sizeof(msg)));
    return rc;
}

/* Calls a list or sample function into scratch space of `size`-byte records, growing it
 * while NVML says it is short. *count is in: the first capacity; out: the records. */
static nv_return nv_grow_call(const struct nv_lib *lib, struct egs_dev *d, struct egs_proc_read *r,
                              int role, size_t size, unsigned int *count, unsigned long long last_seen)
{
    unsigned int cap = *count;
    nv_return rc = NV_INSUFFICIENT_SIZE;
    for (int attempt = 0; attempt < EGS_PROC_ATTEMPTS && rc == NV_INSUFFICIENT_SIZE; attempt++) {
        void *raw = egs_proc_scratch(r, cap * size);
        if (raw == NULL)
            return -1;
        unsigned int n = cap;
        r->info.calls++;
        if (role == R_PROCS_UTIL) {
            struct nv_processes_util u = {NV_PROCESSES_UTIL_V1, cap, last_seen, raw};
            rc = EGS_FN(lib, role, nv_return (*)(nv_device, struct nv_processes_util *))(d->handle, &u);
            n = u.count;
        } else if (role == R_PROC_UTIL) {
            rc = EGS_FN(lib, role, fn_process_samples)(d->handle, raw, &n, last_seen);
        } else {
            rc = EGS_FN(lib, role, fn_processes)(d->handle, &n, raw);
        }
        /* A list that grew between NVML's count and this call: ask again, with room to spare. */
        if (rc == NV_INSUFFICIENT_SIZE)
            cap = n > cap ? n + n / 4 + 4 : cap * 2;
        else
            *count = n;
    }
    return rc;
}

/* One of the compute / graphics lists into r. NV_SUCCESS, NV_NOT_SUPPORTED (no such list on
 * this device), or the failure already recorded in r. */
static nv_return nv_process_list(const struct nv_lib *lib, struct egs_dev *d, struct egs_proc_read *r,
                                 int role, unsigned int kind, unsigned int *longest)
{
    if (lib->roles[role].fn == NULL)
        return NV_NOT_SUPPORTED;
    size_t size = nv_list_record_size(lib, role);
    unsigned int n = d->proc_hint ? d->proc_hint + d->proc_hint / 4 + 4 : EGS_PROC_INITIAL;
    nv_return rc = nv_grow_call(lib, d, r, role, size, &n, 0);
    if (rc == NV_NOT_SUPPORTED || rc == NV_FUNCTION_NOT_FOUND)
        return NV_NOT_SUPPORTED;
    if (rc == -1) {
        egs_proc_failed(r, 0, lib->roles[role].symbol, "out of memory");
        return rc;
    }
    if (rc != NV_SUCCESS)
        return nv_proc_error(lib, r, rc, role);
    if (n > *longest)
        *longest = n;
    for (unsigned int k = 0; k < n; k++) {
        struct nv_process_v1 rec;
        memcpy(&rec, (const char *)r->raw + k * size, sizeof(rec));
        struct egs_process *p = egs_proc_add(r, rec.pid);
        if (p == NULL) {
            egs_proc_failed(r, 0, lib->roles[role].symbol, "out of memory");
            return -1;
        }
        p->kinds |= kind;
        if (rec.used_memory != NV_VALUE_NOT_AVAILABLE && isnan(p->used_memory))
            p->used_memory = (double)rec.used_memory;
    }
    return NV_SUCCESS;
}

/* One utilisation record of either call, as (pid, timestamp, SM, memory, encoder, decoder). */
static void nv_util_record(int role, const char *rec, unsigned int *pid, unsigned long long *ts,
                           unsigned int u[4])
{
    if (role == R_PROCS_UTIL) {
        struct nv_process_util s;
        memcpy(&s, rec, sizeof(s));
        *pid = s.pid, *ts = s.timestamp, u[0] = s.sm, u[1] = s.mem, u[2] = s.enc, u[3] = s.dec;
    } else {
        struct nv_process_sample s;
        memcpy(&s, rec, sizeof(s));
        *pid = s.pid, *ts = s.timestamp, u[0] = s.sm, u[1] = s.mem, u[2] = s.enc, u[3] = s.dec;
    }
}

/* Per-process utilisation: the mean of each listed process's samples over the pass's window
 * (r->since_us on). NVML gives a sample only to a process with some utilisation in the sample
 * period, so a listed process with none (or NOT_FOUND: no sample at all) was idle: 0. */
static void nv_process_utilization(const struct nv_lib *lib, struct egs_dev *d, struct egs_proc_read *r)
{
    int role = lib->roles[R_PROCS_UTIL].fn != NULL ? R_PROCS_UTIL
             : lib->roles[R_PROC_UTIL].fn != NULL ? R_PROC_UTIL : -1;
    if (role < 0 || d->proc_util_off || r->n == 0)
        return;
    size_t size = role == R_PROCS_UTIL ? sizeof(struct nv_process_util) : sizeof(struct nv_process_sample);
    unsigned int n = r->n + 4;
    nv_return rc = nv_grow_call(lib, d, r, role, size, &n, r->since_us);
    if (rc == NV_NOT_SUPPORTED || rc == NV_FUNCTION_NOT_FOUND) {
        d->proc_util_off = 1;
        return;
    }
    if (rc == NV_NOT_FOUND)
        n = 0;
    else if (rc != NV_SUCCESS)
        return;     /* no figures this pass (NaN); the list itself stands */
    r->info.utilization = EGS_PUTIL_SAMPLES;
    for (unsigned int k = 0; k < r->n; k++) {
        struct egs_process *p = &r->procs[k];
        double sum[4] = {0, 0, 0, 0};
        unsigned int m = 0, pid, u[4];
        unsigned long long ts;
        for (unsigned int j = 0; j < n; j++) {
            nv_util_record(role, (const char *)r->raw + j * size, &pid, &ts, u);
            if (pid != p->pid)
                continue;
            for (int f = 0; f < 4; f++)
                sum[f] += u[f];
            m++;
        }
        p->sm = m ? sum[0] / m : 0.0;
        p->mem = m ? sum[1] / m : 0.0;
        p->enc = m ? sum[2] / m : 0.0;
        p->dec = m ? sum[3] / m : 0.0;
    }
}

static void nv_read_processes(struct egs_backend *b, struct egs_dev *d, struct egs_proc_read *r)
{
    const struct nv_lib *lib = b->impl;
    unsigned int longest = 0;
    int served = 0;
    nv_return rc = nv_process_list(lib, d, r, R_COMPUTE_PROCS, EGS_PROC_COMPUTE, &longest);
    if (rc == NV_SUCCESS)
        served++;
    else if (rc != NV_NOT_SUPPORTED)
        return;
    rc = nv_process_list(lib, d, r, R_GRAPHICS_PROCS, EGS_PROC_GRAPHICS, &longest);
    if (rc == NV_SUCCESS)
        served++;
    else if (rc != NV_NOT_SUPPORTED)
        return;
    d->proc_hint = longest;
    if (!served) {
        r->info.state = EGS_PLIST_UNSUPPORTED;
        return;
    }
    r->info.state = EGS_PLIST_OK;
    nv_process_utilization(lib, d, r);
}

static int nv_wait_event(struct egs_backend *b, struct egs_core *core, int timeout_ms)
{
    struct nv_lib *lib = b->impl;
    struct nv_event_data ev;
    memset(&ev, 0, sizeof(ev));
    nv_return rc = EGS_FN(lib, R_EVENT_WAIT, fn_wait)(lib->event_set, &ev, (unsigned int)timeout_ms);
    if (rc == NV_TIMEOUT)
        return 0;
    if (rc != NV_SUCCESS) {
        /* Not a timeout, so the wait returned at once. */
        egs_pause_ms(timeout_ms);
        return 0;
    }
    struct egs_dev *d = egs_device_of(core, b, ev.device);
    if (!(ev.event_type & NV_EVENT_XID_CRITICAL) || d == NULL)
        return 0;
    char detail[EGS_TEXT];
    snprintf(detail, sizeof(detail), "XID %llu on %s (%s)", ev.event_data, d->info.uuid,
             d->info.pci_bus_id);
    egs_push_event(core, EGS_EVENT_XID, d->info.index, ev.event_data, detail);
    return 1;
}

/* Registers XID critical errors on every device that accepts them; none → no events. */
static int nv_open_events(struct egs_core *core, struct egs_backend *b)
{
    struct nv_lib *lib = b->impl;
    if (lib->roles[R_EVENT_SET_CREATE].fn == NULL || lib->roles[R_REGISTER_EVENTS].fn == NULL ||
        lib->roles[R_EVENT_WAIT].fn == NULL || lib->roles[R_EVENT_SET_FREE].fn == NULL)
        return 0;
    nv_event_set set = NULL;
    if (EGS_FN(lib, R_EVENT_SET_CREATE, fn_set_create)(&set) != NV_SUCCESS)
        return 0;
    int registered = 0;
    for (unsigned int i = 0; i < core->ndevs; i++) {
        struct egs_dev *d = &core->devs[i];
        if (d->backend == b && !d->lost &&
            EGS_FN(lib, R_REGISTER_EVENTS, fn_register)(d->handle, NV_EVENT_XID_CRITICAL, set) == NV_SUCCESS)
            registered++;
    }
    if (registered == 0) {
        EGS_FN(lib, R_EVENT_SET_FREE, fn_set_free)(set);
        return 0;
    }
    lib->event_set = set;
    return 1;
}

/* Runs before nvmlShutdown on every stop: the event set, and GPM's samples (the library's
 * memory, of no use once it shuts down). */
static void nv_close_events(struct egs_backend *b)
{
    struct nv_lib *lib = b->impl;
    if (lib->event_set != NULL)
        EGS_FN(lib, R_EVENT_SET_FREE, fn_set_free)(lib->event_set);
    if (lib->gpm != NULL) {
        for (unsigned int i = 0; i < lib->ngpm; i++)
            nv_gpm_drop_device(lib, &lib->gpm[i]);
        free(lib->gpm);
        lib->gpm = NULL;
    }
}

/* One text label of a device. A failed call (or a missing symbol) leaves the reason in
 * the label, never an empty string a consumer would take for a real, blank value. */
static void nv_label(const struct nv_lib *lib, int role, nv_device h, char *out, size_t cap)
{
    char msg[EGS_NAME - 16];
    if (lib->roles[role].fn == NULL) {
        snprintf(out, cap, "unknown (no %s in this NVML)", lib->roles[role].candidates[0]);
        return;
    }
    nv_return rc = EGS_FN(lib, role, fn_dev_text)(h, out, (unsigned int)cap);
    if (rc != NV_SUCCESS)
        snprintf(out, cap, "unknown (%s)", nv_error(lib, rc, msg, sizeof(msg)));
    else if (out[0] == '\0')
        snprintf(out, cap, "unknown (%s returned an empty string)", lib->roles[role].symbol);
}

static void nv_describe(const struct egs_core *core, const struct nv_lib *lib, struct egs_dev *d,
                        unsigned int i, nv_device h, unsigned int missing)
{
    d->handle = h;
    d->info.vendor_index = i;
    nv_label(lib, R_NAME, h, d->info.name, sizeof(d->info.name));
    nv_label(lib, R_UUID, h, d->info.uuid, sizeof(d->info.uuid));
    if (lib->roles[R_PCI].fn != NULL) {
        struct nv_pci_info pci;
        memset(&pci, 0, sizeof(pci));
        if (EGS_FN(lib, R_PCI, fn_dev_ptr)(h, &pci) == NV_SUCCESS) {
            const char *id = lib->pci_legacy ? pci.bus_id_legacy : pci.bus_id;
            size_t cap = lib->pci_legacy ? sizeof(pci.bus_id_legacy) : sizeof(pci.bus_id);
            snprintf(d->info.pci_bus_id, sizeof(d->info.pci_bus_id), "%.*s", (int)cap, id);
        }
    }
    d->unsupported = missing | (1u << EGS_F_POWER);   /* until a path for it is found */
    if (lib->roles[R_POWER].fn != NULL)
        d->unsupported &= ~(1u << EGS_F_POWER);
    nv_choose_paths(core, lib, d);
    d->info.unsupported = d->unsupported;
}

static int nv_open(struct egs_core *core, struct egs_backend *b)
{
    char msg[EGS_TEXT - 64];
    struct nv_lib *lib = b->impl;
    lib->temperature_v = lib->roles[R_TEMPERATURE].symbol != NULL &&
                         strcmp(lib->roles[R_TEMPERATURE].symbol, "nvmlDeviceGetTemperatureV") == 0;
    lib->memory_v2 = lib->roles[R_MEMORY].symbol != NULL &&
                     strcmp(lib->roles[R_MEMORY].symbol, "nvmlDeviceGetMemoryInfo_v2") == 0;
    lib->pci_legacy = lib->roles[R_PCI].symbol != NULL &&
                      strcmp(lib->roles[R_PCI].symbol, "nvmlDeviceGetPciInfo") == 0;

    nv_return rc = EGS_FN(lib, R_INIT, fn_void)();
    if (rc != NV_SUCCESS) {
        egs_backend_failed(b, rc, lib->roles[R_INIT].symbol, nv_error(lib, rc, msg, sizeof(msg)));
        return EGS_OK;
    }
    b->initialised = 1;
    /* The version is a label, not a reason to give up on the backend: on failure it says why. */
    if (lib->roles[R_DRIVER_VERSION].fn == NULL) {
        egs_copy(b->info.driver_version, sizeof(b->info.driver_version),
                 "unknown (no nvmlSystemGetDriverVersion)");
    } else {
        char vmsg[EGS_NAME - 16];
        rc = EGS_FN(lib, R_DRIVER_VERSION, fn_text)(b->info.driver_version, sizeof(b->info.driver_version));
        if (rc != NV_SUCCESS)
            snprintf(b->info.driver_version, sizeof(b->info.driver_version), "unknown (%s)",
                     nv_error(lib, rc, vmsg, sizeof(vmsg)));
    }

    unsigned int count = 0;
    rc = EGS_FN(lib, R_COUNT, fn_count)(&count);
    if (rc != NV_SUCCESS) {
        egs_backend_failed(b, rc, lib->roles[R_COUNT].symbol, nv_error(lib, rc, msg, sizeof(msg)));
        return EGS_OK;
    }
    unsigned int missing = nv_missing_fields(lib);
    /* GPM only when every call it needs is there (a driver before R520 has none). */
    int gpm = 1;
    for (int r = R_GPM_SUPPORT; r <= R_GPM_METRICS; r++)
        gpm = gpm && lib->roles[r].fn != NULL;
    if (gpm && count > 0) {
        lib->gpm = calloc(count, sizeof(*lib->gpm));
        if (lib->gpm == NULL)
            return EGS_E_NOMEM;
        lib->ngpm = count;
    }
    for (unsigned int i = 0; i < count; i++) {
        nv_device h = NULL;
        rc = EGS_FN(lib, R_HANDLE, fn_handle)(i, &h);
        struct egs_dev *d = egs_add_device(core, b);
        if (d == NULL)
            return EGS_E_NOMEM;
        if (rc != NV_SUCCESS) {
            /* Keep the index visible: an operator needs to see the GPU the driver cannot reach. */
            d->info.vendor_index = i;
            d->lost = 1;
            d->info.state = EGS_DSTATE_LOST;
            d->unsupported = d->info.unsupported = (1u << EGS_NFIELDS) - 1;
            snprintf(d->info.lost_reason, EGS_TEXT, "%s(%u): %s", lib->roles[R_HANDLE].symbol, i,
                     nv_error(lib, rc, msg, sizeof(msg)));
            continue;
        }
        nv_describe(core, lib, d, i, h, missing);
    }
    return EGS_OK;
}

static const unsigned int nv_needed[] = {R_INIT, R_COUNT, R_HANDLE};

const struct egs_vendor egs_nvml = {
    .what = "NVML",
    .roles = nv_roles_template,
    .nroles = R_COUNT_ROLES,
    .state_size = sizeof(struct nv_lib),
    .needed = nv_needed,
    .nneeded = sizeof(nv_needed) / sizeof(nv_needed[0]),
    .shutdown = R_SHUTDOWN,
    .open = nv_open,
    .read = nv_read,
    .read_processes = nv_read_processes,
    .read_health = nv_read_health,
    .open_events = nv_open_events,
    .wait_event = nv_wait_event,
    .close_events = nv_close_events,
};
