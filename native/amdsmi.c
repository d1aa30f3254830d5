/*
 * amdsmi.c - the AMD backend: AMD SMI (libamd_smi.so) loaded with dlopen, never linked.
 *
 * AMD SMI reports VRAM in MiB (amdsmi.h calls them MB; they are units of 2^20 bytes), power
 * in W and energy as a counter times a resolution in uJ; this file converts them to the
 * core's units (bytes, W, J), so Python sees one set of units whatever the vendor.
 * Every figure the firmware's metrics table holds (temperature, activity, power, energy,
 * clocks) comes from one amdsmi_get_gpu_metrics_info call per tick where the device fills it
 * (the BATCH path); a figure the table marks N/A keeps its narrow call, and so does every
 * field when the table is not supported. VRAM is not in the table and keeps its own call.
 * Reading the table wakes a runtime-suspended GPU on some parts and shows false activity for
 * seconds (AMD SMI's own note): a core started with no_batch keeps the narrow calls only.
 * AMD exposes no fan figure in the catalogue, so fan is unsupported here by design.
 * AMD SMI reports an activity it cannot measure as 0xFFFF (or 0xFFFFFFFF) inside a call that
 * succeeds; that field is unsupported on the device, never a 65535 % reading.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* --- AMD SMI types and constants, declared from the public API description ---------------- */

typedef int am_status;
typedef void *am_handle;

enum {
    AM_SUCCESS = 0,
    AM_NOT_SUPPORTED = 2,
    AM_NOT_YET_IMPLEMENTED = 3,
    AM_DRM_ERROR = 6,
    AM_IO = 12,
    AM_OUT_OF_RESOURCES = 15,
    AM_NOT_FOUND = 31,
    AM_NO_DATA = 40,
};

enum { AM_INIT_AMD_GPUS = 2 };
enum { AM_PROCESSOR_AMD_GPU = 1 };
enum { AM_TEMP_EDGE = 0, AM_TEMP_CURRENT = 0 };
enum { AM_CLK_GFX = 0, AM_CLK_MEM = 4 };
enum { AM_EVT_VMFAULT = 1, AM_EVT_THERMAL_THROTTLE = 2, AM_EVT_GPU_PRE_RESET = 3, AM_EVT_GPU_POST_RESET = 4 };

#pragma pack(push, 1)
struct am_asic_info {
    char market_name[256];
    uint32_t vendor_id;
    char vendor_name[256];
    uint32_t subvendor_id;
    uint64_t device_id;
    uint32_t rev_id;
    char asic_serial[256];
    uint32_t oam_id;
    uint32_t num_of_compute_units;
    uint8_t pad[4];
    uint64_t target_graphics_version;
    uint32_t subsystem_id;
    uint32_t reserved[21];
};

struct am_engine_usage {
    uint32_t gfx_activity, umc_activity, mm_activity, reserved[13];
};

struct am_vram_usage {
    uint32_t vram_total, vram_used, reserved[2];
};

struct am_power_info {
    uint64_t socket_power;
    uint32_t current_socket_power, average_socket_power;
    uint64_t gfx_voltage, soc_voltage, mem_voltage;
    uint32_t power_limit;
    uint8_t pad[4];
    uint64_t reserved[18];
};

struct am_clk_info {
    uint32_t clk, min_clk, max_clk;
    uint8_t clk_locked, clk_deep_sleep, pad[2];
    uint32_t reserved[4];
};

struct am_driver_info {
    char driver_version[256], driver_date[256], driver_name[256];
};

struct am_event {
    am_handle processor;
    uint32_t event;
    char message[256];
    uint8_t pad[4];
};
/* The head of amdsmi_gpu_metrics_t: what the catalogue reads of it. */
struct am_metrics_head {
    uint16_t structure_size;
    uint8_t format_revision, content_revision;
    uint16_t temperature_edge, temperature_hotspot, temperature_mem;
    uint16_t temperature_vrgfx, temperature_vrsoc, temperature_vrmem;
    uint16_t average_gfx_activity, average_umc_activity, average_mm_activity;
    uint16_t average_socket_power;
    uint64_t energy_accumulator;
    uint64_t system_clock_counter;
    uint16_t average_clocks[7];
    uint16_t current_gfxclk, current_socclk, current_uclk;
    uint16_t current_other_clocks[4];
    uint32_t throttle_status;
};
#pragma pack(pop)

/* amdsmi_gpu_metrics_t as amdsmi 7.0.2 lays it out: 4544 packed bytes, current_socket_power
 * (uint16) at offset 120. */
/* amdsmi_proc_info_t (packed, 704 bytes; amdsmi_wrapper.py): the offsets the core reads. */
#define AM_PROC_SIZE 704
#define AM_PROC_PID 256           /* uint32 */
#define AM_PROC_GFX_NS 272        /* engine_usage.gfx, uint64 ns */
#define AM_PROC_ENC_NS 280        /* engine_usage.enc */
#define AM_PROC_VRAM 352          /* memory_usage.vram_mem, uint64 bytes */
#define AM_INSUFFICIENT_SIZE 41

#define AM_METRICS_SIZE 4544
#define AM_METRICS_CURRENT_SOCKET_POWER 120
#define AM_METRICS_INDEP_THROTTLE 112   /* indep_throttle_status, uint64; all ones: N/A */
_Static_assert(sizeof(struct am_metrics_head) == 72, "amdsmi_gpu_metrics_t head layout");
#define AM_NA16 0xFFFFu

/* Sizes as amdsmi's own ctypes wrapper (7.0.2) lays the structs out. */
_Static_assert(sizeof(struct am_asic_info) == 896, "amdsmi_asic_info_t layout");
_Static_assert(sizeof(struct am_power_info) == 192, "amdsmi_power_info_t layout");
_Static_assert(sizeof(struct am_clk_info) == 32, "amdsmi_clk_info_t layout");
_Static_assert(sizeof(struct am_engine_usage) == 64, "amdsmi_engine_usage_t layout");
_Static_assert(sizeof(struct am_vram_usage) == 16, "amdsmi_vram_usage_t layout");
_Static_assert(sizeof(struct am_event) == 272, "amdsmi_evt_notification_data_t layout");

/* --- the symbol table --------------------------------------------------------------------- */

enum {
    R_INIT, R_SHUTDOWN, R_STATUS_STRING, R_SOCKETS, R_PROCESSORS, R_TYPE, R_UUID, R_BDF, R_ASIC,
    R_DRIVER, R_TEMPERATURE, R_ACTIVITY, R_VRAM, R_POWER, R_CLOCK, R_ENERGY, R_METRICS, R_EVENT_INIT,
    R_EVENT_MASK, R_EVENT_GET, R_EVENT_STOP, R_PROCESSES, R_TOTAL_ECC, R_POWER_CAP,
    R_BAD_PAGES, R_COMPUTE_PARTITION, R_MEMORY_PARTITION, R_BAD_PAGE_THRESHOLD, R_COUNT_ROLES
};

static const struct egs_role am_roles_template[R_COUNT_ROLES] = {
    [R_INIT] = {"init", {"amdsmi_init"}},
    [R_SHUTDOWN] = {"shutdown", {"amdsmi_shut_down"}},
    [R_STATUS_STRING] = {"error_string", {"amdsmi_status_code_to_string"}},
    [R_SOCKETS] = {"socket_handles", {"amdsmi_get_socket_handles"}},
    [R_PROCESSORS] = {"processor_handles", {"amdsmi_get_processor_handles"}},
    [R_TYPE] = {"processor_type", {"amdsmi_get_processor_type"}},
    [R_UUID] = {"uuid", {"amdsmi_get_gpu_device_uuid"}},
    [R_BDF] = {"bdf", {"amdsmi_get_gpu_device_bdf"}},
    [R_ASIC] = {"asic_info", {"amdsmi_get_gpu_asic_info"}},
    [R_DRIVER] = {"driver_version", {"amdsmi_get_gpu_driver_info"}},
    [R_TEMPERATURE] = {"temperature", {"amdsmi_get_temp_metric"}},
    [R_ACTIVITY] = {"utilization", {"amdsmi_get_gpu_activity"}},
    [R_VRAM] = {"memory", {"amdsmi_get_gpu_vram_usage"}},
    [R_POWER] = {"power", {"amdsmi_get_power_info"}},
    [R_CLOCK] = {"clock", {"amdsmi_get_clock_info"}},
    [R_ENERGY] = {"energy", {"amdsmi_get_energy_count"}},
    [R_METRICS] = {"metrics", {"amdsmi_get_gpu_metrics_info"}},
    [R_EVENT_INIT] = {"event_init", {"amdsmi_init_gpu_event_notification"}},
    [R_EVENT_MASK] = {"event_mask", {"amdsmi_set_gpu_event_notification_mask"}},
    [R_EVENT_GET] = {"event_get", {"amdsmi_get_gpu_event_notification"}},
    [R_EVENT_STOP] = {"event_stop", {"amdsmi_stop_gpu_event_notification"}},
    [R_PROCESSES] = {"processes", {"amdsmi_get_gpu_process_list"}},
    [R_TOTAL_ECC] = {"total_ecc", {"amdsmi_get_gpu_total_ecc_count"}},
    [R_POWER_CAP] = {"power_cap", {"amdsmi_get_power_cap_info"}},
    [R_BAD_PAGES] = {"bad_pages", {"amdsmi_get_gpu_bad_page_info"}},
    [R_COMPUTE_PARTITION] = {"compute_partition", {"amdsmi_get_gpu_compute_partition"}},
    [R_MEMORY_PARTITION] = {"memory_partition", {"amdsmi_get_gpu_memory_partition"}},
    /* amdsmi_get_gpu_bad_page_threshold(handle, uint32_t *threshold): the bad-page count at
     * which the driver considers the GPU bad (amdsmi.h, AMD SMI 6.x / 7.x). */
    [R_BAD_PAGE_THRESHOLD] = {"bad_page_threshold", {"amdsmi_get_gpu_bad_page_threshold"}},
};

_Static_assert(R_COUNT_ROLES <= EGS_MAX_ROLES, "raise EGS_MAX_ROLES");

/* Per-backend state: the table (its role order is the enum above; first, as the core
 * expects) and how many devices have event notification on. */
struct am_lib {
    struct egs_role roles[R_COUNT_ROLES];
    int events_on;                  /* devices with notification initialised */
};

typedef am_status (*fn_init)(uint64_t);
typedef am_status (*fn_status_string)(am_status, const char **);
typedef am_status (*fn_sockets)(uint32_t *, void **);
typedef am_status (*fn_processors)(void *, uint32_t *, void **);
typedef am_status (*fn_u32)(am_handle, uint32_t *);
typedef am_status (*fn_uuid)(am_handle, uint32_t *, char *);
typedef am_status (*fn_u64)(am_handle, uint64_t *);
typedef am_status (*fn_ptr)(am_handle, void *);
typedef am_status (*fn_temp)(am_handle, int, int, int64_t *);
typedef am_status (*fn_clock)(am_handle, int, struct am_clk_info *);
typedef am_status (*fn_energy)(am_handle, uint64_t *, float *, uint64_t *);
typedef am_status (*fn_handle)(am_handle);
typedef am_status (*fn_mask)(am_handle, uint64_t);
typedef am_status (*fn_event_get)(int, uint32_t *, struct am_event *);

static const char *am_error(const struct am_lib *lib, am_status rc, char *buf, size_t cap)
{
    const char *text = NULL;
    fn_status_string fn = EGS_FN(lib, R_STATUS_STRING, fn_status_string);
    if (fn == NULL || fn(rc, &text) != AM_SUCCESS)
        text = NULL;
    snprintf(buf, cap, "%s (AMD SMI status %d)", text != NULL ? text : "AMD SMI error", rc);
    return buf;
}

/* AMD SMI has no GPU_IS_LOST. Its status enum (amdsmi 7.0.2, amdsmi_wrapper.py: there is no
 * DRV_ERR code) leaves three answers a GPU that fell off the bus gives: NOT_FOUND (31), the
 * handle no longer matches a device; DRM_ERROR (6), the libdrm call on the device node failed
 * (the node answers ENODEV once the device is unplugged); IO (12), the sysfs read failed with
 * EIO, which is what reads of a device that no longer answers on PCIe return. Each says the
 * device, not the field, is unreachable, so the device is marked lost rather than counted
 * as an error on every field every tick. Transient failures (BUSY, RETRY, TIMEOUT) stay
 * errors and are retried. */
static int am_is_lost(am_status rc)
{
    return rc == AM_NOT_FOUND || rc == AM_DRM_ERROR || rc == AM_IO;
}

static unsigned char am_classify(const struct am_lib *lib, am_status rc, const char *symbol,
                                 struct egs_tick *t)
{
    char msg[EGS_TEXT - 64];
    if (rc == AM_SUCCESS)
        return EGS_R_OK;
    if (rc == AM_NOT_SUPPORTED || rc == AM_NOT_YET_IMPLEMENTED)
        return EGS_R_UNSUPPORTED;
    if (am_is_lost(rc))
        return egs_tick_lost(t, rc, symbol, am_error(lib, rc, msg, sizeof(msg)));
    return EGS_R_ERROR;
}

#define MIB 1048576.0

/* An activity figure from a call that succeeded: N/A sentinels make the field unsupported. */
static unsigned char am_activity(unsigned char status, uint32_t percent)
{
    if (status == EGS_R_OK && (percent == 0xFFFFu || percent == 0xFFFFFFFFu))
        return EGS_R_UNSUPPORTED;
    return status;
}

static void am_read_calls(const struct am_lib *lib, struct egs_dev *d, struct egs_tick *t)
{
    am_handle h = d->handle;
    am_status rc;
    unsigned char s;

    /* The catalogue has no multimedia-engine figure, so mm_activity is not read. */
    if (egs_want(t, EGS_F_UTILIZATION) || egs_want(t, EGS_F_MEMORY_BUSY)) {
        struct am_engine_usage u;
        memset(&u, 0, sizeof(u));
        t->calls++;
        rc = EGS_FN(lib, R_ACTIVITY, fn_ptr)(h, &u);
        s = am_classify(lib, rc, lib->roles[R_ACTIVITY].symbol, t);
        egs_put(t, EGS_F_UTILIZATION, am_activity(s, u.gfx_activity), u.gfx_activity);
        egs_put(t, EGS_F_MEMORY_BUSY, am_activity(s, u.umc_activity), u.umc_activity);
    }
    if (egs_want(t, EGS_F_MEMORY_USED) || egs_want(t, EGS_F_MEMORY_TOTAL)) {
        struct am_vram_usage v;
        memset(&v, 0, sizeof(v));
        t->calls++;
        rc = EGS_FN(lib, R_VRAM, fn_ptr)(h, &v);
        s = am_classify(lib, rc, lib->roles[R_VRAM].symbol, t);
        egs_put(t, EGS_F_MEMORY_USED, s, v.vram_used * MIB);
        egs_put(t, EGS_F_MEMORY_TOTAL, s, v.vram_total * MIB);
    }
    if (egs_want(t, EGS_F_TEMPERATURE)) {
        int64_t c = 0;
        t->calls++;
        rc = EGS_FN(lib, R_TEMPERATURE, fn_temp)(h, AM_TEMP_EDGE, AM_TEMP_CURRENT, &c);
        egs_put(t, EGS_F_TEMPERATURE, am_classify(lib, rc, lib->roles[R_TEMPERATURE].symbol, t), (double)c);
    }
    if (egs_want(t, EGS_F_POWER)) {
        struct am_power_info p;
        memset(&p, 0, sizeof(p));
        t->calls++;
        rc = EGS_FN(lib, R_POWER, fn_ptr)(h, &p);
        egs_put(t, EGS_F_POWER, am_classify(lib, rc, lib->roles[R_POWER].symbol, t), (double)p.socket_power);
    }
    if (egs_want(t, EGS_F_SM_CLOCK)) {
        struct am_clk_info c;
        memset(&c, 0, sizeof(c));
        t->calls++;
        rc = EGS_FN(lib, R_CLOCK, fn_clock)(h, AM_CLK_GFX, &c);
        egs_put(t, EGS_F_SM_CLOCK, am_classify(lib, rc, lib->roles[R_CLOCK].symbol, t), c.clk);
    }
    if (egs_want(t, EGS_F_MEMORY_CLOCK)) {
        struct am_clk_info c;
        memset(&c, 0, sizeof(c));
        t->calls++;
        rc = EGS_FN(lib, R_CLOCK, fn_clock)(h, AM_CLK_MEM, &c);
        egs_put(t, EGS_F_MEMORY_CLOCK, am_classify(lib, rc, lib->roles[R_CLOCK].symbol, t), c.clk);
    }
    if (egs_want(t, EGS_F_ENERGY)) {
        uint64_t counter = 0, stamp = 0;
        float resolution_uj = 0.0f;
        t->calls++;
        rc = EGS_FN(lib, R_ENERGY, fn_energy)(h, &counter, &resolution_uj, &stamp);
        egs_put(t, EGS_F_ENERGY, am_classify(lib, rc, lib->roles[R_ENERGY].symbol, t),
                (double)counter * (double)resolution_uj / 1e6);
    }
}

/* One field of the metrics table in the catalogue's unit; NAN when the table marks it N/A. */
static double am_metric(const struct egs_dev *d, const unsigned char *table, int f)
{
    struct am_metrics_head m;
    memcpy(&m, table, sizeof(m));
    uint16_t current_power;
    memcpy(&current_power, table + AM_METRICS_CURRENT_SOCKET_POWER, sizeof(current_power));
    switch (f) {
    case EGS_F_TEMPERATURE: return m.temperature_edge == AM_NA16 ? NAN : m.temperature_edge;
    case EGS_F_UTILIZATION: return m.average_gfx_activity == AM_NA16 ? NAN : m.average_gfx_activity;
    case EGS_F_MEMORY_BUSY: return m.average_umc_activity == AM_NA16 ? NAN : m.average_umc_activity;
    case EGS_F_POWER:
        /* The socket power as amdsmi_get_power_info reports it: the current figure where the
         * part has one (MI300), else the average. */
        if (current_power != AM_NA16)
            return current_power;
        return m.average_socket_power == AM_NA16 ? NAN : m.average_socket_power;
    case EGS_F_ENERGY:
        if (m.energy_accumulator == UINT64_MAX || !(d->energy_scale > 0))
            return NAN;
        return (double)m.energy_accumulator * d->energy_scale;
    case EGS_F_SM_CLOCK: return m.current_gfxclk == AM_NA16 ? NAN : m.current_gfxclk;
    case EGS_F_MEMORY_CLOCK: return m.current_uclk == AM_NA16 ? NAN : m.current_uclk;
    default: return NAN;
    }
}

static const int am_metric_fields[] = {
    EGS_F_TEMPERATURE, EGS_F_UTILIZATION, EGS_F_MEMORY_BUSY, EGS_F_POWER, EGS_F_ENERGY,
    EGS_F_SM_CLOCK, EGS_F_MEMORY_CLOCK,
};
#define AM_NMETRIC_FIELDS (sizeof(am_metric_fields) / sizeof(am_metric_fields[0]))

/* The role of field f's narrow call. */
static int am_call_role(int f)
{
    switch (f) {
    case EGS_F_UTILIZATION: case EGS_F_MEMORY_BUSY: return R_ACTIVITY;
    case EGS_F_MEMORY_USED: case EGS_F_MEMORY_TOTAL: return R_VRAM;
    case EGS_F_TEMPERATURE: return R_TEMPERATURE;
    case EGS_F_POWER: return R_POWER;
    case EGS_F_ENERGY: return R_ENERGY;
    default: return R_CLOCK;
    }
}

/* The BATCH fields of t->want from one metrics table. A figure that turned N/A, or a table
 * no longer supported, moves to its narrow call for good (read on this tick by am_read). */
static void am_read_batch(const struct am_lib *lib, struct egs_dev *d, struct egs_tick *t)
{
    unsigned char table[AM_METRICS_SIZE];
    t->calls++;
    am_status rc = EGS_FN(lib, R_METRICS, fn_ptr)(d->handle, table);
    unsigned char s = am_classify(lib, rc, lib->roles[R_METRICS].symbol, t);
    for (unsigned int k = 0; k < AM_NMETRIC_FIELDS; k++) {
        const int f = am_metric_fields[k];
        if (!(d->batched & (1u << f)) || !(t->want & (1u << f)))
            continue;
        double v = s == EGS_R_OK ? am_metric(d, table, f) : NAN;
        if (s == EGS_R_UNSUPPORTED || (s == EGS_R_OK && isnan(v))) {
            egs_fall_back(d, f);
            if (lib->roles[am_call_role(f)].fn == NULL) {
                d->path[f] = EGS_PATH_NONE;
                egs_put(t, f, EGS_R_UNSUPPORTED, 0.0);
            }
        } else
            egs_put(t, f, s, v);
    }
}

static void am_read(struct egs_backend *b, struct egs_dev *d, struct egs_tick *t)
{
    const struct am_lib *lib = b->impl;
    /* The table holds the slow tier's clocks and energy too: on a tick that reads it anyway
     * they come at no cost, so they are taken at the fast tier's rate. */
    if (d->batched & t->want)
        t->want |= d->batched & ~d->unsupported;
    const unsigned int want = t->want;
    if (d->batched & want)
        am_read_batch(lib, d, t);
    unsigned int done = 0;
    for (int f = 0; f < EGS_NFIELDS; f++)
        if (t->status[f] != EGS_R_SKIPPED)
            done |= 1u << f;
    t->want = want & ~d->batched & ~done;
    am_read_calls(lib, d, t);
    t->want = want;
}

/* Chooses, once per device, the fields the metrics table serves: those it fills now. Energy
 * needs the counter's resolution, which only amdsmi_get_energy_count gives. */
static void am_choose_paths(const struct egs_core *core, const struct am_lib *lib, struct egs_dev *d)
{
    d->batched = 0;
    if (lib->roles[R_ENERGY].fn != NULL) {
        uint64_t counter = 0, stamp = 0;
        float resolution_uj = 0.0f;
        if (EGS_FN(lib, R_ENERGY, fn_energy)(d->handle, &counter, &resolution_uj, &stamp) == AM_SUCCESS)
            d->energy_scale = (double)resolution_uj / 1e6;
    }
    unsigned char *table = malloc(AM_METRICS_SIZE);
    if (table != NULL && lib->roles[R_METRICS].fn != NULL && !core->cfg.no_batch &&
        EGS_FN(lib, R_METRICS, fn_ptr)(d->handle, table) == AM_SUCCESS) {
        for (unsigned int k = 0; k < AM_NMETRIC_FIELDS; k++)
            if (!isnan(am_metric(d, table, am_metric_fields[k])))
                d->batched |= 1u << am_metric_fields[k];
        /* amdsmi_gpu_metrics_t states no unit for its temperatures, and the kernel's tables
         * differ by version (some in centi-degrees): the table serves temperature only where
         * it agrees with amdsmi_get_temp_metric (degrees C) on this device at start. */
        int64_t c = 0;
        if ((d->batched & (1u << EGS_F_TEMPERATURE)) && lib->roles[R_TEMPERATURE].fn != NULL &&
            EGS_FN(lib, R_TEMPERATURE, fn_temp)(d->handle, AM_TEMP_EDGE, AM_TEMP_CURRENT, &c) == AM_SUCCESS &&
            fabs(am_metric(d, table, EGS_F_TEMPERATURE) - (double)c) > 3.0)
            d->batched &= ~(1u << EGS_F_TEMPERATURE);
    }
    free(table);
    /* The table serves a field this library has no narrow call for. */
    d->unsupported &= ~d->batched;
    d->info.unsupported = d->unsupported;
    for (int f = 0; f < EGS_NFIELDS; f++)
        d->path[f] = (d->unsupported & (1u << f)) ? EGS_PATH_NONE
                     : (d->batched & (1u << f)) ? EGS_PATH_BATCH : EGS_PATH_CALL;
    memcpy(d->info.paths, d->path, sizeof(d->info.paths));
}

static unsigned int am_missing_fields(const struct am_lib *lib)
{
    unsigned int mask = 1u << EGS_F_FAN;
    if (lib->roles[R_ACTIVITY].fn == NULL)
        mask |= 1u << EGS_F_UTILIZATION | 1u << EGS_F_MEMORY_BUSY;
    if (lib->roles[R_VRAM].fn == NULL)
        mask |= 1u << EGS_F_MEMORY_USED | 1u << EGS_F_MEMORY_TOTAL;
    if (lib->roles[R_TEMPERATURE].fn == NULL)
        mask |= 1u << EGS_F_TEMPERATURE;
    if (lib->roles[R_POWER].fn == NULL)
        mask |= 1u << EGS_F_POWER;
    if (lib->roles[R_CLOCK].fn == NULL)
        mask |= 1u << EGS_F_SM_CLOCK | 1u << EGS_F_MEMORY_CLOCK;
    if (lib->roles[R_ENERGY].fn == NULL)
        mask |= 1u << EGS_F_ENERGY;
    return mask;
}

static int am_wait_event(struct egs_backend *b, struct egs_core *core, int timeout_ms)
{
    struct am_lib *lib = b->impl;
    struct am_event events[16];
    uint32_t n = 16;
    memset(events, 0, sizeof(events));
    am_status rc = EGS_FN(lib, R_EVENT_GET, fn_event_get)(timeout_ms, &n, events);
    if (rc != AM_SUCCESS) {
        /* NO_DATA is the ordinary timeout; anything else returned at once. */
        if (rc != AM_NO_DATA)
            egs_pause_ms(timeout_ms);
        return 0;
    }
    for (uint32_t k = 0; k < n && k < 16; k++) {
        struct egs_dev *d = egs_device_of(core, b, events[k].processor);
        if (d == NULL)
            continue;
        char detail[EGS_TEXT];
        snprintf(detail, sizeof(detail), "AMD event %u on %s: %.200s", events[k].event,
                 d->info.pci_bus_id, events[k].message);
        egs_push_event(core, EGS_EVENT_AMD, d->info.index, events[k].event, detail);
    }
    return (int)n;
}

static int am_open_events(struct egs_core *core, struct egs_backend *b)
{
    struct am_lib *lib = b->impl;
    if (lib->roles[R_EVENT_INIT].fn == NULL || lib->roles[R_EVENT_MASK].fn == NULL ||
        lib->roles[R_EVENT_GET].fn == NULL || lib->roles[R_EVENT_STOP].fn == NULL)
        return 0;
    /* Bit (event - 1) selects an event, as AMD SMI's own mask macro does. */
    uint64_t mask = 1ull << (AM_EVT_VMFAULT - 1) | 1ull << (AM_EVT_THERMAL_THROTTLE - 1) |
                    1ull << (AM_EVT_GPU_PRE_RESET - 1) | 1ull << (AM_EVT_GPU_POST_RESET - 1);
    for (unsigned int i = 0; i < core->ndevs; i++) {
        struct egs_dev *d = &core->devs[i];
        if (d->backend != b || d->lost)
            continue;
        if (EGS_FN(lib, R_EVENT_INIT, fn_handle)(d->handle) != AM_SUCCESS)
            continue;
        if (EGS_FN(lib, R_EVENT_MASK, fn_mask)(d->handle, mask) != AM_SUCCESS) {
            EGS_FN(lib, R_EVENT_STOP, fn_handle)(d->handle);
            continue;
        }
        d->events_on = 1;
        lib->events_on++;
    }
    return lib->events_on > 0;
}

static void am_close_events(struct egs_backend *b)
{
    struct am_lib *lib = b->impl;
    /* Every device whose notification was initialised, lost ones included: the library
     * keeps per-device event state (an fd and a buffer) until stop frees it, whether or not
     * the device still answers. Its status on a lost device is of no interest. */
    if (lib->events_on > 0) {
        for (unsigned int i = 0; i < b->core->ndevs; i++) {
            struct egs_dev *d = &b->core->devs[i];
            if (d->events_on) {
                EGS_FN(lib, R_EVENT_STOP, fn_handle)(d->handle);
                d->events_on = 0;
            }
        }
    }
}

static void am_describe(const struct egs_core *core, struct am_lib *lib, struct egs_dev *d,
                        unsigned int missing)
{
    char uuid[EGS_NAME];
    uint32_t len = sizeof(uuid);
    memset(uuid, 0, sizeof(uuid));
    if (lib->roles[R_UUID].fn != NULL && EGS_FN(lib, R_UUID, fn_uuid)(d->handle, &len, uuid) == AM_SUCCESS)
        snprintf(d->info.uuid, sizeof(d->info.uuid), "%.*s", (int)sizeof(uuid) - 1, uuid);
    uint64_t bdf = 0;
    if (lib->roles[R_BDF].fn != NULL && EGS_FN(lib, R_BDF, fn_u64)(d->handle, &bdf) == AM_SUCCESS) {
        snprintf(d->info.pci_bus_id, sizeof(d->info.pci_bus_id), "%04llx:%02x:%02x.%x",
                 (unsigned long long)(bdf >> 16), (unsigned int)((bdf >> 8) & 0xff),
                 (unsigned int)((bdf >> 3) & 0x1f), (unsigned int)(bdf & 0x7));
    }
    struct am_asic_info *asic = calloc(1, sizeof(*asic));
    if (asic != NULL && lib->roles[R_ASIC].fn != NULL && EGS_FN(lib, R_ASIC, fn_ptr)(d->handle, asic) == AM_SUCCESS)
        snprintf(d->info.name, sizeof(d->info.name), "%.*s", (int)sizeof(d->info.name) - 1, asic->market_name);
    free(asic);
    d->unsupported = d->info.unsupported = missing;
    am_choose_paths(core, lib, d);
}

static int am_open(struct egs_core *core, struct egs_backend *b)
{
    char msg[EGS_TEXT - 64];
    int rc = EGS_OK;
    void **sockets = NULL, **procs = NULL;
    struct am_lib *lib = b->impl;

    am_status st = EGS_FN(lib, R_INIT, fn_init)(AM_INIT_AMD_GPUS);
    if (st != AM_SUCCESS) {
        egs_backend_failed(b, st, lib->roles[R_INIT].symbol, am_error(lib, st, msg, sizeof(msg)));
        goto out;
    }
    b->initialised = 1;

    uint32_t nsock = 0;
    st = EGS_FN(lib, R_SOCKETS, fn_sockets)(&nsock, NULL);
    if (st == AM_SUCCESS && nsock > 0) {
        sockets = calloc(nsock, sizeof(*sockets));
        if (sockets == NULL) {
            rc = EGS_E_NOMEM;
            goto out;
        }
        st = EGS_FN(lib, R_SOCKETS, fn_sockets)(&nsock, sockets);
    }
    if (st != AM_SUCCESS) {
        egs_backend_failed(b, st, lib->roles[R_SOCKETS].symbol, am_error(lib, st, msg, sizeof(msg)));
        goto out;
    }
    unsigned int missing = am_missing_fields(lib);
    unsigned int found = 0;
    for (uint32_t s = 0; s < nsock; s++) {
        uint32_t nproc = 0;
        if (EGS_FN(lib, R_PROCESSORS, fn_processors)(sockets[s], &nproc, NULL) != AM_SUCCESS || nproc == 0)
            continue;
        free(procs);
        procs = calloc(nproc, sizeof(*procs));
        if (procs == NULL) {
            rc = EGS_E_NOMEM;
            goto out;
        }
        if (EGS_FN(lib, R_PROCESSORS, fn_processors)(sockets[s], &nproc, procs) != AM_SUCCESS)
            continue;
        for (uint32_t p = 0; p < nproc; p++) {
            uint32_t type = AM_PROCESSOR_AMD_GPU;
            if (lib->roles[R_TYPE].fn != NULL && EGS_FN(lib, R_TYPE, fn_u32)(procs[p], &type) == AM_SUCCESS &&
                type != AM_PROCESSOR_AMD_GPU)
                continue;
            struct egs_dev *d = egs_add_device(core, b);
            if (d == NULL) {
                rc = EGS_E_NOMEM;
                goto out;
            }
            d->handle = procs[p];
            d->info.vendor_index = found++;
            am_describe(core, lib, d, missing);
            if (b->info.driver_version[0] == '\0' && lib->roles[R_DRIVER].fn != NULL) {
                struct am_driver_info *drv = calloc(1, sizeof(*drv));
                if (drv != NULL && EGS_FN(lib, R_DRIVER, fn_ptr)(d->handle, drv) == AM_SUCCESS)
                    snprintf(b->info.driver_version, sizeof(b->info.driver_version), "%.*s",
                             (int)sizeof(b->info.driver_version) - 1, drv->driver_version);
                free(drv);
            }
        }
    }
out:
    free(sockets);
    free(procs);
    return rc;
}

static const unsigned int am_needed[] = {R_INIT, R_SOCKETS, R_PROCESSORS};

/* --- per-process reads ------------------------------------------------------------------- */

typedef am_status (*fn_process_list)(am_handle, uint32_t *, void *);

static uint64_t am_u64(const char *rec, size_t off)
{
    uint64_t v;
    memcpy(&v, rec + off, sizeof(v));
    return v;
}

/* amdsmi_get_gpu_process_list into r: a buffer sized from the previous pass, grown while the
 * library answers OUT_OF_RESOURCES (a list longer than the buffer) or INSUFFICIENT_SIZE.
 * GPU memory is the process's VRAM (memory_usage.vram_mem, the device memory NVML's
 * usedGpuMemory also counts), not `mem`; the engine counters go out raw (Python makes
 * rates of them between passes). */
static void am_read_processes(struct egs_backend *b, struct egs_dev *d, struct egs_proc_read *r)
{
    const struct am_lib *lib = b->impl;
    fn_process_list fn = EGS_FN(lib, R_PROCESSES, fn_process_list);
    const char *symbol = lib->roles[R_PROCESSES].symbol;
    char msg[EGS_TEXT - 64];
    if (fn == NULL) {
        r->info.state = EGS_PLIST_UNSUPPORTED;
        return;
    }
    uint32_t cap = d->proc_hint ? d->proc_hint + d->proc_hint / 4 + 4 : EGS_PROC_INITIAL, n = 0;
    am_status rc = AM_OUT_OF_RESOURCES;
    for (int attempt = 0; attempt < EGS_PROC_ATTEMPTS && (rc == AM_OUT_OF_RESOURCES || rc == AM_INSUFFICIENT_SIZE);
         attempt++) {
        if (egs_proc_scratch(r, (size_t)cap * AM_PROC_SIZE) == NULL) {
            egs_proc_failed(r, 0, symbol, "out of memory");
            return;
        }
        n = cap;
        r->info.calls++;
        rc = fn(d->handle, &n, r->raw);
        if (rc == AM_OUT_OF_RESOURCES || rc == AM_INSUFFICIENT_SIZE)
            cap = n > cap ? n + n / 4 + 4 : cap * 2;
    }
    if (rc == AM_NOT_SUPPORTED || rc == AM_NOT_YET_IMPLEMENTED) {
        r->info.state = EGS_PLIST_UNSUPPORTED;
        return;
    }
    if (am_is_lost(rc)) {
        r->info.state = EGS_PLIST_LOST;
        return;
    }
    if (rc != AM_SUCCESS) {
        egs_proc_failed(r, rc, symbol, am_error(lib, rc, msg, sizeof(msg)));
        return;
    }
    for (uint32_t k = 0; k < n && k < cap; k++) {
        const char *rec = (const char *)r->raw + (size_t)k * AM_PROC_SIZE;
        uint32_t pid;
        memcpy(&pid, rec + AM_PROC_PID, sizeof(pid));
        struct egs_process *p = egs_proc_add(r, pid);
        if (p == NULL) {
            egs_proc_failed(r, 0, symbol, "out of memory");
            return;
        }
        p->used_memory = (double)am_u64(rec, AM_PROC_VRAM);
        p->gfx_ns = (double)am_u64(rec, AM_PROC_GFX_NS);
        p->enc_ns = (double)am_u64(rec, AM_PROC_ENC_NS);
    }
    d->proc_hint = n;
    r->info.state = EGS_PLIST_OK;
    r->info.utilization = EGS_PUTIL_COUNTERS;
}

/* --- health signals ----------------------------------------------------------------------- */

struct am_error_count {            /* amdsmi_error_count_t (amdsmi_wrapper.py) */
    uint64_t correctable, uncorrectable, deferred;
    uint64_t reserved[5];
};
_Static_assert(sizeof(struct am_error_count) == 64, "amdsmi_error_count_t is 64 bytes");

/* The ECC totals (the kernel's RAS error counters, which count since the driver loaded: the
 * volatile pair). The other signals have no AMD SMI call the core reads yet: NaN. */
/* amdsmi_power_cap_info_t (packed): caps in microwatts on bare-metal Linux (amdsmi.h). */
struct am_power_cap {
    uint64_t power_cap, default_power_cap, dpm_cap, min_power_cap, max_power_cap;
    uint64_t reserved[3];
};
_Static_assert(sizeof(struct am_power_cap) == 64, "amdsmi_power_cap_info_t is 64 bytes");

/* Bits of egs_dev.health_off: calls that said NOT_SUPPORTED on the device. */
enum {
    AM_HOFF_ECC = 1, AM_HOFF_CAP = 2, AM_HOFF_BAD_PAGES = 4, AM_HOFF_COMPUTE_PART = 8, AM_HOFF_MEMORY_PART = 16,
    AM_HOFF_THROTTLE = 32, AM_HOFF_BAD_THRESHOLD = 64
};

/* The kernel's ASIC-independent throttler bits (amdgpu_smu.h SMU_THROTTLER_*, the layout of
 * gpu_metrics' indep_throttle_status) that map clearly to an NVML clock-event reason: the
 * package power limits (PPT0-3, SPL, FPPT, SPPT, SPPT_APU: bits 0-7) to SW power cap, the
 * temperature limits the firmware holds (TEMP_*: bits 32-43) to SW thermal slowdown. Current
 * (TDC/EDC/APCC), VRHOT/PROCHOT, PPM and FIT have no clear counterpart and are left out. */
#define AM_THROTTLE_POWER   0x00000000000000FFull
#define AM_THROTTLE_THERMAL 0x00000FFF00000000ull
#define NV_REASON_SW_POWER_CAP       0x04u   /* nvmlClocksEventReasonSwPowerCap */
#define NV_REASON_SW_THERMAL         0x20u   /* nvmlClocksEventReasonSwThermalSlowdown */

/* NOT_SUPPORTED (or not implemented) switches the call off for the device. */
static int am_health_ok(struct egs_dev *d, am_status rc, unsigned int bit)
{
    if (rc == AM_NOT_SUPPORTED || rc == AM_NOT_YET_IMPLEMENTED)
        d->health_off |= bit;
    return rc == AM_SUCCESS;
}

/* One partition mode string (amdsmi_get_gpu_compute_partition / _memory_partition: handle,
 * buffer, its length), left "" unless the call succeeds. */
static void am_read_partition(const struct am_lib *lib, int role, unsigned int bit, struct egs_dev *d,
                              struct egs_health *h, char *out, size_t len)
{
    typedef am_status (*fn_partition)(am_handle, char *, uint32_t);
    if (lib->roles[role].fn == NULL || (d->health_off & bit))
        return;
    h->calls++;
    if (!am_health_ok(d, EGS_FN(lib, role, fn_partition)(d->handle, out, (uint32_t)len), bit))
        out[0] = '\0';
    out[len - 1] = '\0';
}

/* The throttle status as an NVML clock-event reason mask (EGS_H_CLOCK_REASONS): one
 * gpu_metrics call, its indep_throttle_status (tables before v1.4 say N/A there: NaN, and
 * the call is not made again on the device). */
static void am_read_throttle(const struct am_lib *lib, struct egs_dev *d, struct egs_health *h)
{
    unsigned char table[AM_METRICS_SIZE];
    uint64_t indep;
    if (lib->roles[R_METRICS].fn == NULL || (d->health_off & AM_HOFF_THROTTLE))
        return;
    h->calls++;
    if (!am_health_ok(d, EGS_FN(lib, R_METRICS, fn_ptr)(d->handle, table), AM_HOFF_THROTTLE))
        return;
    memcpy(&indep, table + AM_METRICS_INDEP_THROTTLE, sizeof(indep));
    if (indep == UINT64_MAX) {
        d->health_off |= AM_HOFF_THROTTLE;
        return;
    }
    h->values[EGS_H_CLOCK_REASONS] = (double)((indep & AM_THROTTLE_POWER ? NV_REASON_SW_POWER_CAP : 0u) |
                                              (indep & AM_THROTTLE_THERMAL ? NV_REASON_SW_THERMAL : 0u));
}

/* ECC totals, the power cap, the bad-page count and its threshold, the compute and memory
 * partition modes and the throttle status (gpu_metrics' ASIC-independent bits): seven calls a
 * device a read. */
static void am_read_health(struct egs_backend *b, struct egs_dev *d, struct egs_health *h)
{
    const struct am_lib *lib = b->impl;
    typedef am_status (*fn_ecc)(am_handle, struct am_error_count *);
    typedef am_status (*fn_cap)(am_handle, uint32_t, struct am_power_cap *);
    typedef am_status (*fn_bad_pages)(am_handle, uint32_t *, void *);
    if (lib->roles[R_TOTAL_ECC].fn != NULL && !(d->health_off & AM_HOFF_ECC)) {
        struct am_error_count ec;
        memset(&ec, 0, sizeof(ec));
        h->calls++;
        if (am_health_ok(d, EGS_FN(lib, R_TOTAL_ECC, fn_ecc)(d->handle, &ec), AM_HOFF_ECC)) {
            h->values[EGS_H_ECC_CORRECTED_VOLATILE] = (double)ec.correctable;
            h->values[EGS_H_ECC_UNCORRECTED_VOLATILE] = (double)ec.uncorrectable;
        }
    }
    if (lib->roles[R_POWER_CAP].fn != NULL && !(d->health_off & AM_HOFF_CAP)) {
        struct am_power_cap cap;
        memset(&cap, 0, sizeof(cap));
        h->calls++;
        if (am_health_ok(d, EGS_FN(lib, R_POWER_CAP, fn_cap)(d->handle, 0, &cap), AM_HOFF_CAP))
            h->values[EGS_H_POWER_LIMIT] = (double)cap.power_cap / 1e6;
    }
    if (lib->roles[R_BAD_PAGES].fn != NULL && !(d->health_off & AM_HOFF_BAD_PAGES)) {
        uint32_t n = 0;   /* no buffer: the count only */
        h->calls++;
        if (am_health_ok(d, EGS_FN(lib, R_BAD_PAGES, fn_bad_pages)(d->handle, &n, NULL), AM_HOFF_BAD_PAGES))
            h->values[EGS_H_BAD_PAGES] = n;
    }
    if (lib->roles[R_BAD_PAGE_THRESHOLD].fn != NULL && !(d->health_off & AM_HOFF_BAD_THRESHOLD)) {
        uint32_t n = 0;
        h->calls++;
        if (am_health_ok(d, EGS_FN(lib, R_BAD_PAGE_THRESHOLD, fn_u32)(d->handle, &n), AM_HOFF_BAD_THRESHOLD))
            h->values[EGS_H_BAD_PAGE_THRESHOLD] = n;
    }
    am_read_partition(lib, R_COMPUTE_PARTITION, AM_HOFF_COMPUTE_PART, d, h, h->compute_partition,
                      sizeof(h->compute_partition));
    am_read_partition(lib, R_MEMORY_PARTITION, AM_HOFF_MEMORY_PART, d, h, h->memory_partition,
                      sizeof(h->memory_partition));
    am_read_throttle(lib, d, h);
}

const struct egs_vendor egs_amdsmi = {
    .what = "AMD SMI",
    .roles = am_roles_template,
    .nroles = R_COUNT_ROLES,
    .state_size = sizeof(struct am_lib),
    .needed = am_needed,
    .nneeded = sizeof(am_needed) / sizeof(am_needed[0]),
    .shutdown = R_SHUTDOWN,
    .open = am_open,
    .read = am_read,
    .read_processes = am_read_processes,
    .read_health = am_read_health,
    .open_events = am_open_events,
    .wait_event = am_wait_event,
    .close_events = am_close_events,
};
