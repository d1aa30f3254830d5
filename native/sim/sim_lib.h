/*
 * What every simulated vendor library does the same way, whatever its vendor's API: the
 * scenario loaded at the first init and kept until the process ends, init reference
 * counting, the table of devices the library serves, scenario time, and the prologue of
 * every device query (read lock, handle check, the scenario's call latency and lost state).
 *
 * Each library keeps its own struct sim_lib and names its own status codes for these
 * outcomes, so two libraries linked into one program (as the sanitizer stress test does)
 * never share state.
 *
 * Thread safety: the scenario and the device table are written only by init/shutdown under
 * the write lock; every query holds the read lock, and values are pure functions of the
 * scenario time, so a sampler thread and an event-waiting thread can call concurrently.
 */
#ifndef EGS_SIM_LIB_H
#define EGS_SIM_LIB_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "scenario.h"

/* The vendor API a library exports; everything else stays hidden (-fvisibility=hidden). */
#define SIM_EXPORT __attribute__((visibility("default")))

/* One device of the library: its vendor handle points at this. */
struct sim_dev {
    const struct sim_gpu *gpu;
    unsigned int index;             /* within this library */
};

/* The library's own codes for the outcomes the shared code reports. */
struct sim_codes {
    int success;
    int uninitialised;              /* a query or shutdown before init */
    int invalid;                    /* a handle that is not one of this library's, or no output */
    int lost;                       /* the device fell off the bus (scenario "lost" fault) */
    int bad_scenario;               /* the scenario file could not be read */
};

/* Calls of one exported function since the library was loaded (or last reset). */
#define SIM_MAX_COUNTED 128
struct sim_counter {
    const char *fn;                 /* the function's __func__: one pointer per function */
    atomic_ullong n;
};

struct sim_lib {
    const char *name;               /* prefixes scenario errors: "libnvidia-ml" */
    int vendor;                     /* SIM_VENDOR_*: whose GPUs of the scenario it serves */
    struct sim_codes codes;
    pthread_rwlock_t lock;
    struct sim_scenario scn;
    struct sim_dev devs[SIM_MAX_GPUS];
    unsigned int ndevs;
    int refcount;
    double t0;                      /* sim_now() at the first init: scenario time 0 */
    long long t0_unix_us;           /* CLOCK_REALTIME at that moment, microseconds: driver
                                     * timestamps of scenario time t are t0_unix_us + t x 1e6 */
    double event_wait_max_s;        /* EGS_SIM_EVENT_WAIT_MAX_MS at init: an event wait returns
                                     * TIMEOUT after at most this long (0: the caller's timeout) */
    /* Call counts per exported function, so a test or bench sees exactly how many library
     * calls a reader made. Appended under count_mu, read without it (n_counted is published
     * after the slot is filled). */
    struct sim_counter counted[SIM_MAX_COUNTED];
    atomic_uint n_counted;
    pthread_mutex_t count_mu;
};

/* Counts one call of the exported function `fn` (its __func__). */
void sim_count(struct sim_lib *lib, const char *fn);
#define SIM_COUNT(lib) sim_count((lib), __func__)
/* Copies up to `cap` (name, count) pairs of the functions called so far and returns how many
 * there are; reset != 0 zeroes every count after copying. */
unsigned int sim_calls(struct sim_lib *lib, unsigned int cap, const char **names,
                       unsigned long long *counts, int reset);

/* The library's init. The first one loads the scenario, fails with init_error(scenario)
 * when that is nonzero, enumerates the vendor's GPUs (none when `enumerate` is 0) and runs
 * `setup` (may be NULL) under the write lock; later ones only count. */
int sim_init(struct sim_lib *lib, int enumerate, int (*init_error)(const struct sim_scenario *),
             void (*setup)(void));
int sim_shut_down(struct sim_lib *lib);
/* The scenario file in use, "(built-in)", or NULL before a successful init. */
const char *sim_scenario_in_use(struct sim_lib *lib);
/* Seconds since the first init. */
double sim_scenario_time(const struct sim_lib *lib);

/* Takes the read lock when the library is initialised (success), else returns uninitialised
 * with no lock held. */
int sim_lock_initialized(struct sim_lib *lib);
/* Releases the read lock and returns rc. */
int sim_end_query(struct sim_lib *lib, int rc);
/* Whether h points at one of the n elements of `size` bytes at base. */
int sim_handle_in(const void *h, const void *base, size_t size, unsigned int n);
/* The prologue of a device query: on success holds the read lock (sim_end_query) and gives
 * the device's scenario entry and the scenario time, after the scenario's call latency;
 * invalid for a foreign handle or a NULL `out`, lost once the device's lost fault is due. */
int sim_begin_query(struct sim_lib *lib, const void *h, const void *out, const struct sim_gpu **g,
                    double *t);

/* Whether XID fault f of device i is one the caller still waits for (registered for, not
 * yet delivered). */
typedef int (*sim_fault_wanted)(const void *arg, unsigned int i, int f, const struct sim_fault *fault);
/* The earliest XID fault due by scenario time t that `wanted` accepts, as *dev and *fault
 * (-1 when none), and in *next when the next accepted one falls due (+inf when none).
 * Caller holds the read lock. */
void sim_due_xid(const struct sim_lib *lib, double t, sim_fault_wanted wanted, const void *arg,
                 int *dev, int *fault, double *next);
/* Finds events with claim(arg, scenario time, &next), which returns how many it took and when
 * the next one falls due, until one is found or the monotonic `deadline` passes. The read
 * lock is held only while claim looks, never while sleeping, so a shutdown on another thread
 * is not held up by a long wait. Returns success with *found (0: timed out) or uninitialised. */
int sim_wait_events(struct sim_lib *lib, double deadline, int (*claim)(void *arg, double t, double *next),
                    void *arg, int *found);

/* A scenario value as the vendors' 32-bit unsigned fields hold it: rounded, saturated. */
uint32_t sim_to_u32(double v);

#endif
