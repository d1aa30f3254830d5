/*
 * Scenario model shared by the simulated vendor libraries.
 *
 * Both simulated libraries (libnvidia-ml.so.1 and libamd_smi.so) read the same scenario file so
 * one TOML file describes a whole host: its GPUs, a waveform per telemetry field and faults at
 * given times. The scenario is parsed once at the library's init into fixed-size structures
 * (no heap, nothing to free) and is read-only afterwards; everything time-dependent is a pure
 * function of the scenario time t (seconds since that library's init), so concurrent callers
 * need no locking to evaluate it.
 *
 * The accepted file format is documented in native/sim/README.md.
 */
#ifndef EGS_SIM_SCENARIO_H
#define EGS_SIM_SCENARIO_H

#include <stddef.h>

#define SIM_MAX_GPUS   32
#define SIM_MAX_FAULTS 32   /* per GPU; event sets track delivery in a 32-bit mask */
#define SIM_MAX_SEQ    64   /* values in one `sequence` wave */
#define SIM_NAME_LEN   96
#define SIM_UUID_LEN   96
#define SIM_BUSID_LEN  32
#define SIM_ERR_LEN    512
#define SIM_MAX_PROCS  1024 /* [[gpu.processes]] tables of the whole file */
#define SIM_PROC_NAME  64
#define SIM_MAX_MIG    64   /* [[gpu.mig]] tables of the whole file */
#define SIM_MIG_PER_GPU 7   /* NVML's most GPU instances on one GPU (A100/H100) */

enum sim_vendor { SIM_VENDOR_NVIDIA = 0, SIM_VENDOR_AMD = 1 };

/* Telemetry fields, in the units of the scenario file (not the vendor's units). */
enum sim_field {
    SIM_F_TEMPERATURE = 0, /* degrees C */
    SIM_F_POWER,           /* W */
    SIM_F_UTILIZATION,     /* % */
    SIM_F_MEMORY_BUSY,     /* % */
    SIM_F_MEMORY_USED_MIB, /* MiB */
    SIM_F_SM_CLOCK,        /* MHz */
    SIM_F_MEMORY_CLOCK,    /* MHz */
    SIM_F_FAN,             /* % */
    SIM_F_ENERGY,          /* J, a counter */
    /* Health signals: "unsupported" unless the scenario gives them. */
    SIM_F_CLOCK_REASONS,   /* NVML clock-event reason bit mask (a sequence wave changes it over time) */
    SIM_F_ECC_CORRECTED,   /* corrected (single-bit) ECC errors: volatile and aggregate counts */
    SIM_F_ECC_UNCORRECTED, /* uncorrected (double-bit) */
    SIM_F_RETIRED_SBE,     /* pages retired for single-bit errors (pre-Ampere) */
    SIM_F_RETIRED_DBE,     /* pages retired for double-bit errors */
    SIM_F_RETIRED_PENDING, /* 1: a retirement waits for a reset */
    SIM_F_REMAPPED_CORRECTABLE,   /* rows remapped for correctable errors (Ampere on) */
    SIM_F_REMAPPED_UNCORRECTABLE, /* rows remapped for uncorrectable errors */
    SIM_F_REMAP_PENDING,   /* 1: a remap waits for a reset */
    SIM_F_REMAP_FAILURE,   /* 1: a remap failed */
    SIM_F_POWER_LIMIT,     /* W, enforced */
    SIM_F_PCIE_TX,         /* KB/s */
    SIM_F_PCIE_RX,         /* KB/s */
    SIM_F_PCIE_REPLAYS,    /* replay counter */
    SIM_F_NVLINK_TX,       /* KiB/s over NVLink (all links); NVML's counter is its integral, in KiB */
    SIM_F_NVLINK_RX,
    SIM_F_BAD_PAGES,       /* AMD: retired (bad) framebuffer pages */
    SIM_F_INDEP_THROTTLE,  /* AMD: gpu_metrics' indep_throttle_status, the kernel's ASIC-independent
                            * SMU_THROTTLER_* bit mask (a double: exact up to 2^53) */
    SIM_F_BAD_PAGE_THRESHOLD, /* AMD: bad pages at which the GPU should be replaced
                               * (amdsmi_get_gpu_bad_page_threshold) */
    SIM_F_COUNT
};

enum sim_wave_kind {
    SIM_WAVE_CONSTANT = 0, /* p[0] */
    SIM_WAVE_SINE,         /* mean p[0], amplitude p[1], period p[2] */
    SIM_WAVE_RAMP,         /* from p[0], to p[1], duration p[2], then holds `to` */
    SIM_WAVE_STEP,         /* before p[0], after p[1], at p[2] */
    SIM_WAVE_SEQUENCE,     /* values[], interval p[0]; cycles */
    SIM_WAVE_UNSUPPORTED,  /* the device does not have this field */
    SIM_WAVE_INTEGRAL      /* energy only: integral of the power wave since init */
};

struct sim_wave {
    int kind;
    double p[3];
    int nvalues;
    double values[SIM_MAX_SEQ];
};

enum sim_fault_kind {
    SIM_FAULT_LOST = 0,     /* every query fails with the vendor's "device gone" code */
    SIM_FAULT_UNSUPPORTED,  /* `field` reports NOT_SUPPORTED from then on */
    SIM_FAULT_XID,          /* an XID critical error event with `code` */
    SIM_FAULT_SLOW          /* every device query sleeps `latency_us` from then on */
};

struct sim_fault {
    double at;
    int kind;
    int field;              /* SIM_FAULT_UNSUPPORTED */
    unsigned long long code;/* SIM_FAULT_XID */
    long latency_us;        /* SIM_FAULT_SLOW */
};

/* One process using a GPU ([[gpu.processes]]): what the process-list and per-process
 * utilisation calls report for it. Utilisation figures are percent, NaN when not given
 * (the process then has no utilisation sample). */
enum sim_proc_kind { SIM_PROC_COMPUTE = 1, SIM_PROC_GRAPHICS = 2 };

struct sim_process {
    int gpu;                /* index into sim_scenario.gpus */
    unsigned int pid;
    int kinds;              /* SIM_PROC_* bits */
    double memory_mib;      /* NaN: the driver cannot say (NVML_VALUE_NOT_AVAILABLE) */
    double sm, mem, enc, dec;
    char name[SIM_PROC_NAME];
};

/* GPM figures of a MIG GPU instance (nvmlGpmMigSampleGet / nvmlGpmMetricsGet), percent; the
 * [[gpu.mig]] keys graphics_util, sm_util, sm_occupancy, dram_bw_util. */
enum sim_gpm { SIM_GPM_GRAPHICS = 0, SIM_GPM_SM, SIM_GPM_SM_OCCUPANCY, SIM_GPM_DRAM_BW, SIM_GPM_COUNT };

/* One MIG GPU instance of a GPU ([[gpu.mig]]): a MIG device handle of its own. */
struct sim_mig {
    int gpu;                /* index into sim_scenario.gpus */
    unsigned int instance;  /* GPU instance id */
    unsigned int compute_instance;  /* compute instance id within it (0 when not given) */
    unsigned long long memory_total_mib;
    double memory_used_mib;
    char uuid[SIM_UUID_LEN];
    /* The GPU instance's GPM figures (SIM_GPM_*; unsupported unless given). They belong to the
     * GPU instance: given on its first [[gpu.mig]] table, shared by its compute instances. */
    struct sim_wave gpm[SIM_GPM_COUNT];
};

struct sim_gpu {
    int vendor;
    int index;              /* position among all [[gpu]] tables of the file */
    char name[SIM_NAME_LEN];
    char uuid[SIM_UUID_LEN];
    char pci_bus_id[SIM_BUSID_LEN]; /* "DDDDDDDD:BB:DD.F" */
    unsigned int pci_domain, pci_bus, pci_device, pci_function;
    unsigned long long memory_total_mib;
    struct sim_wave fields[SIM_F_COUNT];
    int nfaults;
    struct sim_fault faults[SIM_MAX_FAULTS];
    int processes_unsupported;      /* the process-list calls answer NOT_SUPPORTED */
    int process_util_unsupported;   /* per-process utilisation answers NOT_SUPPORTED */
    int gpm_unsupported;            /* nvmlGpmQueryDeviceSupport says no; GPM samples NOT_SUPPORTED */
    char compute_partition[8];      /* AMD: "SPX".."CPX"; "" = the call answers NOT_SUPPORTED */
    char memory_partition[8];       /* AMD: "NPS1".."NPS8"; likewise */
};

struct sim_scenario {
    char path[256];         /* "(built-in)" when no file was given */
    int init_error;         /* code nvmlInit* returns instead of succeeding; 0 = none */
    int amd_init_error;     /* code amdsmi_init returns, when amd_init_error_set */
    int amd_init_error_set;
    long call_latency_us;   /* every device query sleeps this long */
    char driver_version[80];     /* NVIDIA driver (nvmlSystemGetDriverVersion) */
    char amd_driver_version[80]; /* amdgpu module (amdsmi_get_gpu_driver_info) */
    int ngpus;
    struct sim_gpu gpus[SIM_MAX_GPUS];
    int nprocs;
    struct sim_process procs[SIM_MAX_PROCS];
    int nmig;
    struct sim_mig migs[SIM_MAX_MIG];
};

/* The [[gpu.mig]] key of GPM figure k (SIM_GPM_*). */
const char *sim_gpm_name(int k);

/* Field name as written in [gpu.fields], or NULL. */
const char *sim_field_name(int field);

/* Load `path` into `out`. Returns 0, or -1 with a "file:line: what" message in `err`. */
int sim_scenario_load(const char *path, struct sim_scenario *out, char *err, size_t errlen);

/* The built-in default: one NVIDIA and one AMD device with gentle waveforms. */
void sim_scenario_default(struct sim_scenario *out);

/*
 * Loads the scenario named by $EGS_SIM_SCENARIO, or the built-in default when unset. On a bad
 * file prints "egs-sim: <lib>: file:line: what" on stderr and returns -1.
 */
int sim_scenario_from_env(const char *lib, struct sim_scenario *out);

/* Seconds on CLOCK_MONOTONIC. */
double sim_now(void);

/* Value of `w` at time t (no clamping). */
double sim_wave_eval(const struct sim_wave *w, double t);

/* Integral of `w` over [0, t]. */
double sim_wave_integral(const struct sim_wave *w, double t);

/* 1 when the device has fallen off the bus at time t. */
int sim_gpu_lost(const struct sim_gpu *g, double t);

/*
 * Value of `field` at time t in scenario units, clamped at 0 (percentages also at 100).
 * Returns 0, or -1 when the field is unsupported at t.
 */
int sim_gpu_field(const struct sim_gpu *g, int field, double t, double *out);

/* Microseconds a device query must sleep at time t (call latency plus any slow fault). */
long sim_query_latency_us(const struct sim_scenario *s, const struct sim_gpu *g, double t);

/* Sleep for `us` microseconds (no-op for <= 0). */
void sim_sleep_us(long us);

#endif
