/*
 * internal.h - what core.c, nvml.c and amdsmi.c share and nobody else sees.
 *
 * The core owns the device table, the sampler thread, the accumulators, the ring buffers and
 * the event queue; each vendor file owns its library: the dlopen handle, the symbol table
 * filled once at open, enumeration, and one function that reads every field of one device.
 * Vendor types are declared in the vendor files in our own words (API-FACTS.md), never
 * included from vendor headers, because no vendor SDK is present at build time.
 */
#ifndef EGS_INTERNAL_H
#define EGS_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "egs_core.h"

#define EGS_HIDDEN __attribute__((visibility("hidden")))

#define EGS_MAX_ROLES      32
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

struct egs_tick {
    unsigned int want;              /* set by the sampler: bit f = read field f this tick (due in
                                     * its tier and not known unsupported) */
    double values[EGS_NFIELDS];
    unsigned char status[EGS_NFIELDS];
    int lost;                       /* nonzero: the device went away during this read */
    long long lost_code;
    char lost_reason[EGS_TEXT];
};

struct egs_backend;

struct egs_dev {
    struct egs_device_info info;    /* published view; written under core->lock */
    struct egs_backend *backend;
    void *handle;                   /* nvmlDevice_t / amdsmi processor handle */
    int power_via_fields;           /* NVML: POWER_INSTANT through nvmlDeviceGetFieldValues works */
    /* Sampler-private mirrors, so the hot loop reads no shared state. */
    unsigned int unsupported;
    int lost;
    int events_on;                  /* AMD SMI: event notification initialised on this device,
                                     * to be stopped on close even once the device is lost */
};

struct egs_backend {
    int id;                         /* EGS_BACKEND_* */
    struct egs_core *core;
    struct egs_backend_info info;
    void *lib;                      /* dlopen handle */
    void *impl;                     /* the vendor file's own state */
    struct egs_role *roles;         /* the vendor file's symbol table */
    unsigned int nroles;
    /* What egs_resolve found, kept after stop so it can still be reported. */
    struct egs_symbol_info resolved[EGS_MAX_ROLES];
    int initialised;                /* the vendor init succeeded: shut down on close */
    void *events;                   /* vendor event state, NULL when events are not available */
    /* Vendor operations. */
    void (*read)(struct egs_backend *b, struct egs_dev *d, struct egs_tick *out);
    int (*wait_event)(struct egs_backend *b, struct egs_core *core, int timeout_ms);
    void (*close)(struct egs_backend *b);
};

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
    unsigned long long ticks, late_ticks, reads;
    unsigned long long reads_fast, reads_slow, slow_ticks;
    unsigned int slow_every;        /* from cfg.hz / cfg.slow_hz, fixed at egs_core_new */
    double read_s, fold_s;
    unsigned int *late_hist;        /* EGS_LATE_BUCKETS */
    unsigned int *fold_hist;        /* EGS_FOLD_BUCKETS */
    double thread_cpu_s;            /* written by the sampler when it exits */
    clockid_t sampler_clock;
    int have_sampler_clock;
    struct egs_tick *sampler_ticks; /* the sampler's per-device read buffer, allocated by start
                                     * before the thread exists so it cannot fail inside it */
    unsigned int abandoned;         /* threads stop() gave up waiting for (see egs_core_stop);
                                     * nonzero pins the core: no restart, never freed */
};

/* core.c helpers the vendor files use. */
EGS_HIDDEN double egs_now_mono(void);
EGS_HIDDEN double egs_unix_time(const struct egs_core *core);
EGS_HIDDEN void egs_copy(char *dst, size_t cap, const char *src);
/* dlopen `path` into b->lib and resolve its roles; on failure the backend is unavailable
 * with "cannot load <what>: <dlerror>" as its detail and -1 is returned. */
EGS_HIDDEN int egs_load(struct egs_backend *b, const char *path, const char *what);
EGS_HIDDEN void egs_resolve(struct egs_backend *b);
EGS_HIDDEN struct egs_dev *egs_add_device(struct egs_core *core, struct egs_backend *b);
/* Queues an event; the caller must NOT hold core->lock. */
EGS_HIDDEN void egs_push_event(struct egs_core *core, int kind, unsigned int device,
                               unsigned long long code, const char *detail);
EGS_HIDDEN void egs_push_event_locked(struct egs_core *core, int kind, unsigned int device,
                                      unsigned long long code, const char *detail);
EGS_HIDDEN int egs_stopping(struct egs_core *core);

/* Vendor entry points: load the library, initialise, enumerate into core->devs. They always
 * leave b->info describing what happened; they fail only on out-of-memory. */
EGS_HIDDEN int egs_nvml_open(struct egs_core *core, struct egs_backend *b);
EGS_HIDDEN int egs_amdsmi_open(struct egs_core *core, struct egs_backend *b);

#endif
