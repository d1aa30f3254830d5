/*
 * The code every simulated vendor library shares (sim_lib.h).
 */
#define _GNU_SOURCE
#include "sim_lib.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int sim_init(struct sim_lib *lib, int enumerate, int (*init_error)(const struct sim_scenario *),
             void (*setup)(void))
{
    int rc = lib->codes.success;
    pthread_rwlock_wrlock(&lib->lock);
    if (lib->refcount > 0) {
        lib->refcount++;
        goto out;
    }
    if (sim_scenario_from_env(lib->name, &lib->scn) != 0) {
        rc = lib->codes.bad_scenario;
        goto out;
    }
    rc = init_error(&lib->scn);
    if (rc != lib->codes.success)
        goto out;
    lib->ndevs = 0;
    for (int i = 0; enumerate && i < lib->scn.ngpus; i++) {
        if (lib->scn.gpus[i].vendor != lib->vendor)
            continue;
        lib->devs[lib->ndevs].gpu = &lib->scn.gpus[i];
        lib->devs[lib->ndevs].index = lib->ndevs;
        lib->ndevs++;
    }
    if (setup != NULL)
        setup();
    lib->t0 = sim_now();
    const char *wait_max = getenv("EGS_SIM_EVENT_WAIT_MAX_MS");
    lib->event_wait_max_s = wait_max != NULL && atof(wait_max) > 0 ? atof(wait_max) / 1000.0 : 0.0;
    struct timespec real;
    clock_gettime(CLOCK_REALTIME, &real);
    lib->t0_unix_us = (long long)real.tv_sec * 1000000LL + real.tv_nsec / 1000;
    lib->refcount = 1;
out:
    pthread_rwlock_unlock(&lib->lock);
    return rc;
}

int sim_shut_down(struct sim_lib *lib)
{
    int rc = lib->codes.success;
    pthread_rwlock_wrlock(&lib->lock);
    if (lib->refcount == 0)
        rc = lib->codes.uninitialised;
    else
        lib->refcount--;
    pthread_rwlock_unlock(&lib->lock);
    return rc;
}

const char *sim_scenario_in_use(struct sim_lib *lib)
{
    const char *path = NULL;
    pthread_rwlock_rdlock(&lib->lock);
    if (lib->refcount > 0)
        path = lib->scn.path;
    pthread_rwlock_unlock(&lib->lock);
    return path;
}

double sim_scenario_time(const struct sim_lib *lib)
{
    return sim_now() - lib->t0;
}

int sim_lock_initialized(struct sim_lib *lib)
{
    pthread_rwlock_rdlock(&lib->lock);
    if (lib->refcount == 0) {
        pthread_rwlock_unlock(&lib->lock);
        return lib->codes.uninitialised;
    }
    return lib->codes.success;
}

int sim_end_query(struct sim_lib *lib, int rc)
{
    pthread_rwlock_unlock(&lib->lock);
    return rc;
}

int sim_handle_in(const void *h, const void *base, size_t size, unsigned int n)
{
    uintptr_t b = (uintptr_t)base, p = (uintptr_t)h;
    return p >= b && p < b + n * size && (p - b) % size == 0;
}

int sim_begin_query(struct sim_lib *lib, const void *h, const void *out, const struct sim_gpu **g,
                    double *t)
{
    int rc = sim_lock_initialized(lib);
    if (rc != lib->codes.success)
        return rc;
    if (!sim_handle_in(h, lib->devs, sizeof lib->devs[0], lib->ndevs) || !out)
        return sim_end_query(lib, lib->codes.invalid);
    *g = ((const struct sim_dev *)h)->gpu;
    *t = sim_scenario_time(lib);
    sim_sleep_us(sim_query_latency_us(&lib->scn, *g, *t));
    if (sim_gpu_lost(*g, *t))
        return sim_end_query(lib, lib->codes.lost);
    return lib->codes.success;
}

void sim_due_xid(const struct sim_lib *lib, double t, sim_fault_wanted wanted, const void *arg,
                 int *dev, int *fault, double *next)
{
    double best_at = INFINITY;
    *dev = *fault = -1;
    *next = INFINITY;
    for (unsigned int i = 0; i < lib->ndevs; i++) {
        const struct sim_gpu *g = lib->devs[i].gpu;
        for (int f = 0; f < g->nfaults; f++) {
            const struct sim_fault *fl = &g->faults[f];
            if (fl->kind != SIM_FAULT_XID || !wanted(arg, i, f, fl))
                continue;
            if (fl->at > t) {
                if (fl->at < *next)
                    *next = fl->at;
            } else if (fl->at < best_at) {
                best_at = fl->at;
                *dev = (int)i;
                *fault = f;
            }
        }
    }
}

int sim_wait_events(struct sim_lib *lib, double deadline, int (*claim)(void *arg, double t, double *next),
                    void *arg, int *found)
{
    /* A driver's wait may time out early; the tests make every wait short this way, so that
     * stopping a core (which waits for its event thread's current wait) stays quick. */
    if (lib->event_wait_max_s > 0 && deadline > sim_now() + lib->event_wait_max_s)
        deadline = sim_now() + lib->event_wait_max_s;
    for (;;) {
        double next, now;
        int rc = sim_lock_initialized(lib);
        if (rc != lib->codes.success)
            return rc;
        *found = claim(arg, sim_scenario_time(lib), &next);
        now = sim_now();
        next += lib->t0; /* scenario time -> monotonic */
        pthread_rwlock_unlock(&lib->lock);
        if (*found > 0 || now >= deadline)
            return lib->codes.success;
        double wake = next < deadline ? next : deadline;
        /* Re-check the library state (a shutdown meanwhile) now and then: faults are fixed
         * by the scenario, so `next` already says when the next one is due. Not more often
         * than a caller's own wait would wake: the wake-ups are the sim's cost, not ours. */
        if (wake > now + 0.5)
            wake = now + 0.5;
        sim_sleep_us((long)ceil((wake - now) * 1e6));
    }
}

uint32_t sim_to_u32(double v)
{
    return v >= 4294967295.0 ? UINT32_MAX : (uint32_t)llround(v);
}

void sim_count(struct sim_lib *lib, const char *fn)
{
    unsigned int n = atomic_load_explicit(&lib->n_counted, memory_order_acquire);
    for (unsigned int i = 0; i < n; i++) {
        if (lib->counted[i].fn == fn) {
            atomic_fetch_add_explicit(&lib->counted[i].n, 1, memory_order_relaxed);
            return;
        }
    }
    pthread_mutex_lock(&lib->count_mu);
    n = atomic_load_explicit(&lib->n_counted, memory_order_relaxed);
    unsigned int i = 0;
    while (i < n && lib->counted[i].fn != fn)
        i++;
    if (i == n && n < SIM_MAX_COUNTED) {
        lib->counted[n].fn = fn;
        atomic_store_explicit(&lib->counted[n].n, 0, memory_order_relaxed);
        atomic_store_explicit(&lib->n_counted, n + 1, memory_order_release);
    }
    if (i < SIM_MAX_COUNTED)
        atomic_fetch_add_explicit(&lib->counted[i].n, 1, memory_order_relaxed);
    pthread_mutex_unlock(&lib->count_mu);
}

unsigned int sim_calls(struct sim_lib *lib, unsigned int cap, const char **names,
                       unsigned long long *counts, int reset)
{
    unsigned int n = atomic_load_explicit(&lib->n_counted, memory_order_acquire);
    for (unsigned int i = 0; i < n; i++) {
        unsigned long long c = reset ? atomic_exchange(&lib->counted[i].n, 0)
                                     : atomic_load(&lib->counted[i].n);
        if (i < cap) {
            if (names != NULL)
                names[i] = lib->counted[i].fn;
            if (counts != NULL)
                counts[i] = c;
        }
    }
    return n;
}
