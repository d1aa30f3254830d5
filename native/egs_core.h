/*
 * egs_core.h - the public interface of the native telemetry core.
 *
 * This is the one header cffi parses (native/build_native.py), so it stays plain C with no
 * #include and no #ifdef: fixed-size types are spelled with the base types cffi knows.
 * Every structure is allocated by the caller; every function returns an int status
 * (EGS_OK or a negative EGS_E_* code). Values cross this boundary in the catalogue's units
 * (bytes, degrees Celsius, W, J, MHz, percent: see EGS_F_*), whatever the vendor, so Python
 * scales nothing; names and labels belong to Python (agent/native.py).
 */

/* Status codes. */
#define EGS_OK            0
#define EGS_E_INVALID    -1   /* bad argument (index out of range, NULL, zero capacity) */
#define EGS_E_NOMEM      -2
#define EGS_E_STATE      -3   /* wrong lifecycle state (e.g. start while running) */
#define EGS_E_THREAD     -4   /* pthread_create failed */
#define EGS_E_SIZE       -5   /* caller's buffer too small; *n says how many are needed */

/* Backends. */
#define EGS_BACKEND_NVIDIA  0
#define EGS_BACKEND_AMD     1
#define EGS_NBACKENDS       2

/* Backend states. */
#define EGS_BSTATE_UNAVAILABLE 0  /* library missing or backend switched off: detail says which */
#define EGS_BSTATE_OK          1
#define EGS_BSTATE_ERROR       2  /* library present but init/enumeration failed: the library's message */

/* Device states. */
#define EGS_DSTATE_OK    0
#define EGS_DSTATE_LOST  1        /* GPU_IS_LOST / RESET_REQUIRED (or AMD equivalent): no longer read */

/* Fields and their units. Bit i of egs_device_info.unsupported is field i.
 *
 * Two tiers, on one deadline grid. The fast tier is read every tick (egs_config.hz), the slow
 * tier on the ticks whose grid index is a multiple of round(hz / slow_hz), so at hz / that
 * rate. Which fields are slow is the caller's choice (egs_config.slow_fields); a field and its
 * pair, read by one call, are always in the same tier. Calls as the per-field path makes them:
 *   UTILIZATION + MEMORY_BUSY (one call), MEMORY_USED + MEMORY_TOTAL (one call), TEMPERATURE,
 *   POWER, SM_CLOCK, MEMORY_CLOCK, ENERGY, FAN
 * (EGS_PATH_* below says how a device's driver lets the core make fewer.) A real driver spends
 * tens to hundreds of microseconds of CPU per call (NVML 580 on an H100: ~43 us for the
 * cheapest, ~400 us for some), so every call saved counts. Slot 0 reads both tiers, so an
 * unsupported field is found at start. When the sampler is held up past a slow slot, the next
 * tick that runs reads the slow tier (late, as the fast tier does). On a tick that does not
 * read a field, its ring value is NaN ("not sampled") and its accumulator is untouched:
 * nothing repeats an older reading as if it were new. */
#define EGS_F_UTILIZATION   0     /* percent, graphics/compute engine busy */
#define EGS_F_MEMORY_BUSY   1     /* percent, memory controller busy (pair of UTILIZATION) */
#define EGS_F_MEMORY_USED   2     /* bytes */
#define EGS_F_MEMORY_TOTAL  3     /* bytes (pair of MEMORY_USED) */
#define EGS_F_TEMPERATURE   4     /* degrees Celsius */
#define EGS_F_POWER         5     /* watts */
#define EGS_F_SM_CLOCK      6     /* MHz */
#define EGS_F_MEMORY_CLOCK  7     /* MHz */
#define EGS_F_ENERGY        8     /* joules, counter since driver load */
#define EGS_F_FAN           9     /* percent */
#define EGS_NFIELDS        10
#define EGS_ALL_FIELDS     0x3FF  /* (a literal: cffi's parser takes no expressions here) */

/* How a device's field is read (egs_device_info.paths[f]), cheapest first:
 *   BUFFER: the driver's own sample buffer (nvmlDeviceGetSamples), read on the slow tier's
 *           ticks whatever the field's tier: every sample the driver took since the last read
 *           is folded with its own timestamp, so the detail is the driver's resolution at a
 *           1 Hz polling cost (a drain holds the samples up to a slow period late);
 *   BATCH:  one call per device per tick serves every such field (nvmlDeviceGetFieldValues,
 *           amdsmi_get_gpu_metrics_info); on a tick that makes the call for a fast field,
 *           the slow fields it also serves are taken too (they cost nothing more);
 *   CALL:   a call of its own (or shared with its pair: utilisation, memory);
 *   NONE:   not read (unsupported, or the device is lost).
 * Chosen per device at start by asking the library; a field whose buffer or batch entry stops
 * answering falls back to its own call for good, on the same tick. */
#define EGS_PATH_NONE    0
#define EGS_PATH_CALL    1
#define EGS_PATH_BATCH   2
#define EGS_PATH_BUFFER  3

/* Core events. */
#define EGS_EVENT_XID    1        /* NVML XID critical error; code = the XID */
#define EGS_EVENT_LOST   2        /* the sampler saw the device go away; code = vendor status */
#define EGS_EVENT_AMD    3        /* AMD SMI event notification; code = amdsmi event type */

#define EGS_TEXT   256
#define EGS_DETAIL 512
#define EGS_NAME    96
#define EGS_SYMBOL  64

struct egs_config {
    const char *nvml_library;     /* path or soname; NULL or "" = "libnvidia-ml.so.1" */
    const char *amdsmi_library;   /* path; NULL or "" = "libamd_smi.so" (loader path) */
    int nvidia;                   /* 0 switches the backend off */
    int amd;
    double hz;                    /* ticks per second; each tick reads the fast tier of every device */
    unsigned int ring_len;        /* raw samples kept per device; 0 = no ring */
    int events;                   /* 0 = no event thread */
    double slow_hz;               /* slow tier rate, 0 < slow_hz <= hz: read every round(hz/slow_hz)
                                   * ticks; 0 = no slow tier (every field every tick) */
    unsigned int slow_fields;     /* the slow tier's fields (bit i = EGS_F_ i), each with its
                                   * pair; 0 = none (every field on the fast tier) */
    int no_batch;                 /* nonzero: no BATCH path (every field by its own call) */
    int no_buffers;               /* nonzero: no BUFFER path (driver sample buffers unused) */
    double process_hz;            /* per-process pass rate (egs_processes_read), 0 < process_hz
                                   * <= hz: every round(hz / process_hz) ticks; 0 = none */
    double health_hz;             /* health pass rate (egs_health_read), likewise; 0 = none */
    unsigned int event_wait_ms;   /* the event thread's longest wait in the libraries per round,
                                   * shared by the backends with events; 0 = EGS_EVENT_WAIT_MS.
                                   * An event ends a wait at once: this bounds how long stop
                                   * waits for the thread (and the wake-ups while idle). */
};

#define EGS_EVENT_WAIT_MS  500
#define EGS_EVENT_WAIT_MAX 2000  /* stop joins the threads for EGS_JOIN_TIMEOUT_S (3 s) */

struct egs_backend_info {
    int state;                    /* EGS_BSTATE_* */
    int status;                   /* the vendor's own return code when state is ERROR, else 0 */
    unsigned int ndevices;
    char library[EGS_TEXT];       /* what was passed to dlopen */
    char detail[EGS_DETAIL];      /* dlerror text, the library's error message, or a summary */
    char driver_version[EGS_NAME];
    unsigned int nsymbols;        /* roles resolved or not: read with egs_backend_symbol */
};

struct egs_symbol_info {
    char role[32];                /* e.g. "temperature" */
    char symbol[EGS_SYMBOL];      /* the symbol that serves it, "" when none was found */
};

struct egs_device_info {
    unsigned int index;           /* global index: NVIDIA devices first, then AMD */
    int backend;                  /* EGS_BACKEND_* */
    unsigned int vendor_index;    /* index within the vendor library */
    char uuid[EGS_NAME];
    char name[EGS_NAME];
    char pci_bus_id[32];
    int state;                    /* EGS_DSTATE_* */
    char lost_reason[EGS_TEXT];
    unsigned int unsupported;     /* bit mask over EGS_F_* */
    unsigned char paths[10];      /* EGS_PATH_* per field (EGS_NFIELDS entries) */
};

/* Accumulated since the previous drain, for one (device, field). */
struct egs_stats {
    unsigned int device;
    int field;
    unsigned long long count;
    double sum, min, max, last;
    double first_ts, last_ts;     /* unix seconds of the first and latest sample */
    unsigned long long errors;    /* reads that failed for reasons other than NOT_SUPPORTED */
};

struct egs_event {
    int kind;                     /* EGS_EVENT_* */
    unsigned int device;
    unsigned long long code;
    double ts;                    /* unix seconds */
    char detail[EGS_TEXT];
};

struct egs_sampler_stats {
    unsigned long long ticks;
    unsigned long long late_ticks;    /* grid slots skipped because the thread was held up past them */
    unsigned long long idle_slots;    /* grid slots not woken for: nothing was due on them (every
                                       * fast field of every live device comes from a driver
                                       * sample buffer, read on the slow tier's slots, or is
                                       * unsupported); ticks + late_ticks + idle_slots = slots */
    unsigned long long reads;         /* field values attempted, both tiers (a buffered
                                       * sample is one read) */
    unsigned long long reads_fast;    /* of which fast-tier fields */
    unsigned long long reads_slow;    /* of which slow-tier fields (egs_config.slow_fields) */
    unsigned long long slow_ticks;    /* ticks that read the slow tier */
    unsigned long long calls;         /* vendor library calls the sampler made */
    unsigned long long buffered_reads;/* of the reads, samples from driver sample buffers */
    unsigned int slow_every;          /* the slow tier runs on grid slots that are multiples of this */
    double tick_late_p99_us;          /* 99th percentile of wake-up lateness */
    double thread_cpu_s;              /* CPU time of the sampler thread (CLOCK_THREAD_CPUTIME_ID) */
    double elapsed_s;                 /* since the sampler started (or until it stopped) */
    double achieved_hz;               /* (ticks + idle_slots) / elapsed_s: slots kept on time */
    double read_s;                    /* wall time inside the vendor libraries' calls */
    double fold_s;                    /* wall time folding ticks into accumulators and rings
                                       * (the core's own per-tick work, lock included) */
    double fold_p50_us;               /* median of one tick's fold: unlike the sum, untouched by
                                       * the odd preemption in the middle of a fold */
    double tick_work_p50_us;          /* median of one tick's work, wake-up to the end of its
                                       * fold (reads included, the per-process and health
                                       * passes not): what a paced loop of the same calls is
                                       * compared with, without the wake-ups' cost and noise */
    unsigned long long events_dropped;
    unsigned long long process_passes;/* per-process passes made (every device each) */
    unsigned long long process_calls; /* vendor calls those passes made (not in `calls`) */
    double process_s;                 /* wall time of those passes */
    double process_cpu_s;             /* the sampler thread's CPU time in those passes */
    unsigned long long health_passes; /* health passes made (every device each) */
    unsigned long long health_calls;  /* vendor calls those passes made (not in `calls`) */
    unsigned int abandoned_threads;   /* sampler/event threads egs_core_stop stopped waiting for
                                       * (stuck in a vendor call): they were left running, so
                                       * the vendor libraries stay loaded and the core cannot
                                       * be started again or freed (egs_core_free leaks it) */
};

/* Per-process reads. On its own period (egs_config.process_hz) the sampler asks each
 * device's library which processes use it: NVML's compute and graphics lists (newest struct
 * version the library exports: _v3, _v2, then the unversioned v1) with used memory, and its
 * per-process utilisation (nvmlDeviceGetProcessesUtilizationInfo, else
 * nvmlDeviceGetProcessUtilization: the mean of the samples since the previous pass; a listed
 * process without a sample had none, so 0, as NVML documents); AMD SMI's process list with
 * VRAM and engine busy-time counters. A list grows and is asked again when the library says
 * the buffer is short. The latest list of a device is kept whole until the next pass
 * replaces it. */
#define EGS_PROC_COMPUTE   1
#define EGS_PROC_GRAPHICS  2

#define EGS_PLIST_NONE        0   /* not read yet, or per-process reads are off */
#define EGS_PLIST_OK          1
#define EGS_PLIST_UNSUPPORTED 2   /* the library has no process list for this device */
#define EGS_PLIST_ERROR       3   /* the latest pass failed: status and detail say why */
#define EGS_PLIST_LOST        4   /* the device is lost */

/* Utilisation source of a list (egs_process_list.utilization). */
#define EGS_PUTIL_NONE        0   /* none: unsupported, or the library has no such call */
#define EGS_PUTIL_SAMPLES     1   /* nvmlDeviceGetProcessesUtilizationInfo / GetProcessUtilization */
#define EGS_PUTIL_COUNTERS    2   /* AMD SMI engine busy-time counters (gfx_ns, enc_ns) */

struct egs_process {
    unsigned int pid;             /* in the PID namespace the driver sees (the host's) */
    unsigned int kinds;           /* EGS_PROC_* bits (NVIDIA); 0 elsewhere */
    double used_memory;           /* bytes; NaN when the library does not say */
    double sm, mem, enc, dec;     /* percent (NVIDIA); NaN when there is no utilisation source */
    double gfx_ns, enc_ns;        /* AMD: engine busy time since the process started, ns; NaN elsewhere */
};

struct egs_process_list {
    int state;                    /* EGS_PLIST_* */
    int status;                   /* the vendor's return code when state is ERROR, else 0 */
    int utilization;              /* EGS_PUTIL_* */
    unsigned int count;           /* processes in the list */
    unsigned int calls;           /* vendor calls the pass made for this device */
    double ts;                    /* unix seconds of the pass */
    char detail[EGS_TEXT];        /* the failing call and the library's message when ERROR */
};

/* Health signals. On its own period (egs_config.health_hz) the sampler reads, per device,
 * the figures that say a GPU is sick before a job dies: NVML's clock-event reasons
 * (nvmlDeviceGetCurrentClocksEventReasons, else ...ThrottleReasons), one
 * nvmlDeviceGetFieldValues call for ECC, retired pages, remapped rows, the PCIe replay
 * counter and NVLink data throughput counters (without that call, on old drivers, all but NVLink
 * from their own calls), the enforced power limit and PCIe throughput. A value the device does not give
 * is NaN, never 0; a call that answers NOT_SUPPORTED is not made again on that device. AMD
 * SMI devices give the ECC totals (amdsmi_get_gpu_total_ecc_count, the kernel's RAS counters
 * since the driver loaded: the volatile pair), the power cap (amdsmi_get_power_cap_info) and
 * the bad-page count (amdsmi_get_gpu_bad_page_info) and the count at which the GPU should be
 * replaced (amdsmi_get_gpu_bad_page_threshold), the rest NaN. */
#define EGS_H_CLOCK_REASONS            0  /* bit mask of nvmlClocksEventReason* */
#define EGS_H_ECC_CORRECTED_VOLATILE   1  /* errors since the driver loaded */
#define EGS_H_ECC_UNCORRECTED_VOLATILE 2
#define EGS_H_ECC_CORRECTED_AGGREGATE  3  /* errors over the GPU's life */
#define EGS_H_ECC_UNCORRECTED_AGGREGATE 4
#define EGS_H_RETIRED_SBE              5  /* pages retired (pre-Ampere): multiple single-bit errors */
#define EGS_H_RETIRED_DBE              6  /* double-bit errors */
#define EGS_H_RETIRED_PENDING          7  /* 1: a retirement waits for a reset */
#define EGS_H_REMAPPED_CORRECTABLE     8  /* rows remapped (Ampere on) */
#define EGS_H_REMAPPED_UNCORRECTABLE   9
#define EGS_H_REMAP_PENDING           10  /* 1: a remap waits for a reset */
#define EGS_H_REMAP_FAILURE           11  /* 1: a remap failed */
#define EGS_H_POWER_LIMIT             12  /* W, enforced */
#define EGS_H_PCIE_TX                 13  /* bytes/s, the driver's last sample */
#define EGS_H_PCIE_RX                 14
#define EGS_H_PCIE_REPLAYS            15  /* replay counter */
#define EGS_H_NVLINK_TX               16  /* bytes of data sent over NVLink, all links (a counter) */
#define EGS_H_NVLINK_RX               17  /* received */
#define EGS_H_BAD_PAGES               18  /* AMD: retired (bad) framebuffer pages */
#define EGS_H_BAD_PAGE_THRESHOLD      19  /* AMD: bad pages at which the GPU should be replaced */
#define EGS_NHEALTH                   20

/* A MIG device of a GPU in MIG mode, read on the health pass: NVML's MIG device handles
 * (nvmlDeviceGetMigDeviceHandleByIndex) with their GPU and compute instance ids, UUID and memory,
 * and its GPU instance's utilisation from GPM (nvmlGpmMigSampleGet on the parent, one sample a
 * pass, nvmlGpmMetricsGet over this pass's and the previous pass's samples): the mean over the
 * time between the two passes. NaN on the first pass of an instance (no previous sample), and
 * where the GPU or driver has no GPM; compute instances of one GPU instance share its figures. */
#define EGS_MAX_MIG 7

struct egs_mig {
    unsigned int instance;        /* GPU instance id */
    unsigned int compute_instance;/* compute instance id within it */
    char uuid[EGS_NAME];          /* "MIG-..." */
    double memory_used, memory_total;  /* bytes; NaN where not given */
    double graphics_util;         /* percent: time any graphics/compute work was active (GPM GRAPHICS_UTIL) */
    double sm_util;               /* percent of SMs busy (GPM SM_UTIL) */
    double sm_occupancy;          /* percent of the SMs' warp slots in use (GPM SM_OCCUPANCY) */
    double dram_bw_util;          /* percent of the DRAM bandwidth used (GPM DRAM_BW_UTIL) */
};

struct egs_health {
    double ts;                    /* unix seconds of the read; 0 = not read yet */
    unsigned int calls;           /* vendor calls the read made */
    double values[20];            /* EGS_NHEALTH entries, NaN where not given */
    int mig;                      /* 1: the device is in MIG mode (its instances below), 0: not,
                                   * -1: the library does not say (not MIG-capable) */
    unsigned int nmig;
    struct egs_mig migs[7];       /* EGS_MAX_MIG entries */
    char compute_partition[16];   /* AMD: the compute partition mode ("SPX", "DPX", "TPX", "QPX",
                                   * "CPX"); "" where not given (NOT_SUPPORTED, NVIDIA) */
    char memory_partition[16];    /* AMD: the memory partition mode ("NPS1".."NPS8"); likewise */
};

struct egs_core;

int egs_core_new(const struct egs_config *cfg, struct egs_core **out);
void egs_core_free(struct egs_core *core);            /* stops first when running */

/* Loads the libraries, enumerates, starts the sampler (and event) threads. A missing library
 * or failing init is a backend state, not an error of this call. Queries never wait for the
 * vendor libraries meanwhile: the new run is built aside and swapped in at once. EGS_E_STATE
 * while running, or after a stop that abandoned a thread. */
int egs_core_start(struct egs_core *core);
/* Idempotent. Waits at most a few seconds for the threads: a vendor call on a GPU that fell
 * off the bus can hang for minutes, and shutdown must not. A thread still inside such a call
 * is abandoned (egs_sampler_stats.abandoned_threads) and the call still returns EGS_OK. */
int egs_core_stop(struct egs_core *core);
int egs_core_running(struct egs_core *core);

int egs_backend_get(struct egs_core *core, int backend, struct egs_backend_info *out);
int egs_backend_symbol(struct egs_core *core, int backend, unsigned int i, struct egs_symbol_info *out);

int egs_device_count(struct egs_core *core, unsigned int *n);
int egs_device_get(struct egs_core *core, unsigned int index, struct egs_device_info *out);

/* Copies every (device, field) accumulator into out (capacity cap, at least
 * devices x EGS_NFIELDS) and resets them, in one critical section of fixed size. */
int egs_drain(struct egs_core *core, struct egs_stats *out, unsigned int cap, unsigned int *n);

/* Raw samples of one device newer than `since` (unix s), oldest first: timestamps[i] and
 * values[i * EGS_NFIELDS + f] (NaN where the field was not read). */
int egs_ring_read(struct egs_core *core, unsigned int device, double since,
                  double *timestamps, double *values, unsigned int cap, unsigned int *n);

int egs_events_read(struct egs_core *core, struct egs_event *out, unsigned int cap, unsigned int *n);

int egs_sampler_get(struct egs_core *core, struct egs_sampler_stats *out);

/* The latest process list of one device: *info always (when the device exists), the
 * processes into out; EGS_E_SIZE with *n = the count when cap is smaller. */
int egs_processes_read(struct egs_core *core, unsigned int device, struct egs_process_list *info,
                       struct egs_process *out, unsigned int cap, unsigned int *n);

/* The latest health read of one device. */
int egs_health_read(struct egs_core *core, unsigned int device, struct egs_health *out);
