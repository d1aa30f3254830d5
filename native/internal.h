/*
 * internal.h - what core.c, nvml.c and amdsmi.c share and nobody else sees.
 *
 * The core owns the device table, the sampler thread, the accumulators, the ring buffers, the
 * event queue and the steps every vendor library goes through (load, symbol lookup, close);
 * each vendor file describes its library in a struct egs_vendor: the symbol table, init and
 * enumeration, one function that reads every field of one device, and its events.
 * Vendor types are declared in the vendor files in our own words, from the vendors' public API
 * descriptions, never included from vendor headers: no vendor SDK is present at build time.
 */
#ifndef EGS_INTERNAL_H
#define EGS_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "egs_core.h"
#include "work_hist.h"

#define EGS_HIDDEN __attribute__((visibility("hidden")))

#define EGS_MAX_ROLES      48
#define EGS_MAX_CANDIDATES 4
#define EGS_EVENT_QUEUE    256
#define EGS_LATE_BUCKETS   10000   /* 1 us buckets of wake-up lateness; the last collects the rest */
#define EGS_FOLD_BUCKETS   1000    /* 50 ns buckets of fold duration; the last collects the rest */
#define EGS_FOLD_BUCKET_NS 50

/* One role of a vendor library (e.g. "temperature") and the symbols that can serve it,
 * newest first. `fn` and `symbol` say which one was found. */
struct egs_role {
    const char *role;
    const char *candidates[EGS_MAX_CANDIDATES];
    void *fn;
    const char *symbol;
};

/* Outcome of reading one field in one tick. */
enum egs_read_status {
    EGS_R_SKIPPED = 0,      /* not read: known unsupported, or the device is lost */
    EGS_R_OK,
    EGS_R_UNSUPPORTED,      /* the library said NOT_SUPPORTED just now: stop reading it */
    EGS_R_ERROR,            /* any other failure: counted, retried next tick */
};

/* One sample out of a driver's sample buffer, with the driver's own timestamp. */
struct egs_sample {
    double ts;                      /* unix seconds */
    double value;                   /* in the field's unit */
    int field;
};

#define EGS_MAX_SAMPLES 1024        /* per device per tick; more waits for the next read */

struct egs_tick {
    unsigned int want;              /* set by the sampler: bit f = read field f this tick (due in
                                     * its tier and not known unsupported) */
    double values[EGS_NFIELDS];
    unsigned char status[EGS_NFIELDS];
    int lost;                       /* nonzero: the device went away during this read */
    long long lost_code;
    char lost_reason[EGS_TEXT];
    unsigned int calls;             /* vendor calls this read made */
    unsigned int nsamples;          /* buffered samples this read took (egs_add_sample) */
    struct egs_sample samples[EGS_MAX_SAMPLES];
};

/* One device's per-process pass as a vendor file fills it: the list (egs_proc_add), its
 * outcome in info, and scratch space for the library's own records (egs_proc_scratch).
 * The buffers belong to the sampler and are reused from device to device. */
struct egs_proc_read {
    struct egs_process_list info;
    struct egs_process *procs;
    unsigned int n, cap;
    void *raw;
    size_t raw_cap;
    unsigned long long since_us;    /* utilisation samples newer than this count (unix us): one
                                     * pass period back, at least EGS_PROC_WINDOW_S */
};

/* A process-list buffer's first size when the previous pass found none. */
#define EGS_PROC_INITIAL 16
/* Calls of one list per pass at most when the library keeps saying the buffer is short (the
 * list grew between the calls). */
#define EGS_PROC_ATTEMPTS 4
/* The shortest window of per-process utilisation samples a pass averages: a driver samples
 * every fraction of a second, so any second holds a sample of a busy process. */
#define EGS_PROC_WINDOW_S 1.0
/* Health passes between re-reads of a MIG device's identity (about a minute at the default). */
#define EGS_MIG_REREAD 6

struct egs_backend;
struct egs_vendor;

struct egs_dev {
    struct egs_device_info info;    /* published view; written under core->lock */
    struct egs_backend *backend;
    void *handle;                   /* nvmlDevice_t / amdsmi processor handle */
    /* Sampler-private mirrors, so the hot loop reads no shared state. */
    unsigned int unsupported;
    unsigned int buffered;          /* fields on the BUFFER path: read on slow ticks only */
    unsigned int batched;           /* fields on the BATCH path */
    unsigned char path[EGS_NFIELDS];/* EGS_PATH_*; fold publishes it to info.paths */
    int path_changed;               /* path differs from info.paths */
    unsigned long long last_seen[EGS_NFIELDS]; /* BUFFER: newest driver timestamp taken */
    double energy_scale;            /* AMD SMI: joules per energy counter step */
    int lost;
    int events_on;                  /* AMD SMI: event notification initialised on this device,
                                     * to be stopped on close even once the device is lost */
    /* Per-process reads: the published list (under core->lock) and the sampler's own state. */
    struct egs_process_list plist;
    struct egs_process *procs;
    unsigned int pcap;
    unsigned int proc_hint;         /* the longest list of the previous pass: the next buffer's size */
    int proc_util_off;              /* the utilisation call said NOT_SUPPORTED: not asked again */
    struct egs_health health;       /* the latest health read, published under core->lock */
    unsigned int health_off;        /* sampler-private: vendor-defined bits of health calls that
                                     * said NOT_SUPPORTED on this device (not made again) */
    /* Sampler-private: the MIG devices' identities (GPU / compute instance ids, UUID) by slot, with the
     * handle they were read from, re-read when the handle changes or every EGS_MIG_REREAD
     * passes (they change only when an operator repartitions the GPU). */
    void *mig_handle[EGS_MAX_MIG];
    unsigned int mig_instance[EGS_MAX_MIG];
    unsigned int mig_compute[EGS_MAX_MIG];
    char mig_uuid[EGS_MAX_MIG][EGS_NAME];
    unsigned int mig_passes;
};

struct egs_backend {
    int id;                         /* EGS_BACKEND_* */
    struct egs_core *core;
    struct egs_backend_info info;
    const struct egs_vendor *vendor;/* NULL until the core opens this backend */
    void *lib;                      /* dlopen handle */
    void *impl;                     /* the vendor file's own state, its role table first */
    struct egs_role *roles;         /* that table */
    unsigned int nroles;
    /* What the symbol lookup found, kept after stop so it can still be reported. */
    struct egs_symbol_info resolved[EGS_MAX_ROLES];
    int initialised;                /* the vendor init succeeded: shut down on close */
    /* Set by the core once the vendor's open (and its event registration) succeeded. */
    void (*read)(struct egs_backend *b, struct egs_dev *d, struct egs_tick *out);
    int (*wait_event)(struct egs_backend *b, struct egs_core *core, int timeout_ms);
};

/* What a vendor file hands the core: its library's symbol table and the steps the core runs,
 * in this order, to open it (egs_open_backend), sample it and close it (close_backend in
 * core.c). The steps every library shares - allocating the vendor state, dlopen and symbol
 * lookup, the check for entry points nothing works without, the backend's "ok" summary, the
 * library's shutdown and unload - are the core's, so a vendor file holds only what its
 * library does differently. */
struct egs_vendor {
    const char *what;               /* "NVML": how messages name the library */
    const struct egs_role *roles;   /* template of the symbol table, in the vendor's role order */
    unsigned int nroles;
    size_t state_size;              /* the vendor state (b->impl): a struct whose first member is
                                     * its copy of the role table */
    const unsigned int *needed;     /* roles without which the library is of no use */
    unsigned int nneeded;
    unsigned int shutdown;          /* the role that undoes a successful init */
    /* Initialises the library (b->initialised on success) and adds its devices with
     * egs_add_device. EGS_OK or EGS_E_NOMEM; a failure of the library itself is
     * egs_backend_failed, which the core reads as "stop here". */
    int (*open)(struct egs_core *core, struct egs_backend *b);
    /* Reads the fields of t->want (egs_want) of one device into t (egs_put). */
    void (*read)(struct egs_backend *b, struct egs_dev *d, struct egs_tick *t);
    /* Fills r with the processes using device d (NULL: the library has no process list). */
    void (*read_processes)(struct egs_backend *b, struct egs_dev *d, struct egs_proc_read *r);
    /* Fills h->values (all NaN on entry) and h->calls with device d's health signals (NULL:
     * the library gives none). */
    void (*read_health)(struct egs_backend *b, struct egs_dev *d, struct egs_health *h);
    /* Registers for events on the devices; nonzero when at least one accepted. */
    int (*open_events)(struct egs_core *core, struct egs_backend *b);
    int (*wait_event)(struct egs_backend *b, struct egs_core *core, int timeout_ms);
    /* Releases what open_events set up (lost devices included) and whatever else of the
     * library's the reads hold (NVML's GPM samples); runs on every close, before the shutdown. */
    void (*close_events)(struct egs_backend *b);
};

/* The vendor's function behind `role` in a state struct `lib` (its `roles` table), as `type`. */
#define EGS_FN(lib, role, type) ((type)(lib)->roles[role].fn)

/* Field f is due this tick (the core's tier schedule and the unsupported mask, in t->want)
 * and the device was not found lost by an earlier call of this tick. */
static inline int egs_want(const struct egs_tick *t, int f)
{
    return !t->lost && (t->want & (1u << f));
}

/* Appends one buffered sample; 0 when the tick's sample space is full. */
static inline int egs_add_sample(struct egs_tick *t, int f, double ts, double value)
{
    if (t->nsamples == EGS_MAX_SAMPLES)
        return 0;
    struct egs_sample *s = &t->samples[t->nsamples++];
    s->ts = ts;
    s->value = value;
    s->field = f;
    return 1;
}

/* Moves field f off its BUFFER or BATCH path onto its own call, for good (a vendor that then
 * finds no such call sets path NONE, still marked changed). */
static inline void egs_fall_back(struct egs_dev *d, int f)
{
    d->buffered &= ~(1u << f);
    d->batched &= ~(1u << f);
    d->path[f] = EGS_PATH_CALL;
    d->path_changed = 1;
}

/* Records one field's outcome, if the tick asked for it: a call that serves two fields gives
 * a status only to the ones asked for, so a field known unsupported is never counted again
 * because its partner is still read. */
static inline void egs_put(struct egs_tick *t, int f, unsigned char status, double value)
{
    if (t->want & (1u << f)) {
        t->status[f] = status;
        t->values[f] = value;
    }
}

struct egs_acc {
    unsigned long long count, errors;
    double sum, min, max, last, first_ts, last_ts;
};

struct egs_core {
    struct egs_config cfg;
    char nvml_path[EGS_TEXT], amdsmi_path[EGS_TEXT];

    pthread_mutex_t life;           /* serialises start/stop/free */
    pthread_mutex_t lock;           /* everything below that both threads and callers touch */
    int running;
    atomic_int stop;
    /* The sampler sleeps to its next deadline on `nap` (CLOCK_MONOTONIC); stop sets `stop`
     * and signals it, so a stop is prompt without the thread waking to check. */
    pthread_mutex_t nap_mu;
    pthread_cond_t nap;
    pthread_t sampler, eventer;
    int have_sampler, have_eventer;

    struct egs_backend backends[EGS_NBACKENDS];
    struct egs_dev *devs;
    unsigned int ndevs, devcap;

    struct egs_acc *acc;            /* ndevs x EGS_NFIELDS */
    double *ring;                   /* ndevs x ring_len x (1 + EGS_NFIELDS) */
    unsigned int ring_len;
    unsigned long long *ring_head;  /* per device: samples ever written */
    unsigned int *ring_pos;         /* per device: next slot (ring_head % ring_len, kept without
                                     * a 64-bit division per device per tick) */

    struct egs_event events[EGS_EVENT_QUEUE];
    unsigned int ev_head, ev_count;
    unsigned long long ev_dropped;

    double realtime_offset;         /* unix time = monotonic + offset, fixed at start */
    double start_mono, stop_mono;
    unsigned long long ticks, late_ticks, idle_slots, reads;
    unsigned long long idle_pending;  /* the slots of the sampler's current idle stretch ... */
    double idle_from;                 /* ... from this CLOCK_MONOTONIC time (its first slot) */
    unsigned long long reads_fast, reads_slow, slow_ticks, calls, buffered_reads;
    double ring_lag_s;              /* the oldest a buffered sample was when folded: the ring is
                                     * in time order but for that much (egs_ring_read) */
    unsigned int slow_every;        /* from cfg.hz / cfg.slow_hz, fixed at egs_core_new */
    unsigned int proc_every;        /* from cfg.hz / cfg.process_hz; 0 = no per-process pass */
    unsigned int health_every;      /* from cfg.hz / cfg.health_hz; 0 = no health pass */
    unsigned long long health_passes, health_calls;
    unsigned long long process_passes, process_calls;
    double process_s, process_cpu_s;
    double read_s, fold_s;
    unsigned int *late_hist;        /* EGS_LATE_BUCKETS */
    unsigned int *fold_hist;        /* EGS_FOLD_BUCKETS */
    unsigned int *work_hist;        /* EGS_WORK_BUCKETS */
    double thread_cpu_s;            /* written by the sampler when it exits */
    clockid_t sampler_clock;
    int have_sampler_clock;
    struct egs_tick *sampler_ticks; /* the sampler's per-device read buffer, allocated by start
                                     * before the thread exists so it cannot fail inside it */
    unsigned int abandoned;         /* threads stop() gave up waiting for (see egs_core_stop);
                                     * nonzero pins the core: no restart, never freed */
};

/* core.c helpers the vendor files use. */
EGS_HIDDEN void egs_copy(char *dst, size_t cap, const char *src);
EGS_HIDDEN struct egs_dev *egs_add_device(struct egs_core *core, struct egs_backend *b);
/* The device of backend `b` whose vendor handle is `handle`, or NULL. */
EGS_HIDDEN struct egs_dev *egs_device_of(struct egs_core *core, const struct egs_backend *b,
                                         const void *handle);
/* The library failed at `symbol` with its own `status` and `message`: the backend is in
 * error and its open stops. */
EGS_HIDDEN void egs_backend_failed(struct egs_backend *b, int status, const char *symbol,
                                   const char *message);
/* The device went away during this tick's read (the first such call gives the reason);
 * returns the status of the field that call served: EGS_R_SKIPPED. */
EGS_HIDDEN unsigned char egs_tick_lost(struct egs_tick *t, long long code, const char *symbol,
                                       const char *message);
/* The entry of `pid` in the pass's list, added (zeroed, figures NaN) when new; NULL when out
 * of memory. */
EGS_HIDDEN struct egs_process *egs_proc_add(struct egs_proc_read *r, unsigned int pid);
/* The pass's scratch space, at least `bytes` long; NULL when out of memory. */
EGS_HIDDEN void *egs_proc_scratch(struct egs_proc_read *r, size_t bytes);
/* Ends a pass in error: the library's `status` at `symbol`, with its message. */
EGS_HIDDEN void egs_proc_failed(struct egs_proc_read *r, int status, const char *symbol, const char *message);
/* Queues an event; the caller must NOT hold core->lock. */
EGS_HIDDEN void egs_push_event(struct egs_core *core, int kind, unsigned int device,
                               unsigned long long code, const char *detail);
/* Sleeps `ms` milliseconds: an event wait that failed at once pauses instead of spinning. */
EGS_HIDDEN void egs_pause_ms(int ms);

/* The vendor files. */
EGS_HIDDEN extern const struct egs_vendor egs_nvml;
EGS_HIDDEN extern const struct egs_vendor egs_amdsmi;

#endif
