/*
 * core.c - the device table, the sampler thread, accumulators, ring buffers and events.
 *
 * The sampler runs an absolute-deadline loop on CLOCK_MONOTONIC (clock_nanosleep with
 * TIMER_ABSTIME), so a slow tick does not shift the phase of the ones after it. Each tick
 * reads the fields that are due (the fast tier always, the slow tier on every slow_every-th
 * grid slot: see egs_core.h; a slot with nothing due is slept through) of every live device
 * into a private buffer with no lock held
 * (the vendor calls are the slow part), then takes the lock once to fold that buffer into
 * the accumulators and the ring. Python drains all accumulators in one short critical section of
 * fixed size, so draining costs the same at 10 Hz and at 1 kHz. The threads never call into
 * Python: cffi lets C threads run without the GIL.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#include "internal.h"

#define EGS_EXPORT __attribute__((visibility("default")))

/* --- small helpers ---------------------------------------------------------------------- */

static double ts_seconds(const struct timespec *t)
{
    return (double)t->tv_sec + (double)t->tv_nsec * 1e-9;
}

static double now_mono(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return ts_seconds(&t);
}

static double unix_time(const struct egs_core *core)
{
    return now_mono() + core->realtime_offset;
}

void egs_copy(char *dst, size_t cap, const char *src)
{
    if (cap == 0)
        return;
    if (src == NULL)
        src = "";
    snprintf(dst, cap, "%s", src);
}

static int stopping(struct egs_core *core)
{
    return atomic_load_explicit(&core->stop, memory_order_relaxed);
}

/* Fills each role's fn with the first candidate the library exports. A role left without a
 * symbol is reported (empty symbol name) and its fields become unsupported, never a crash. */
static void resolve_roles(struct egs_backend *b)
{
    for (unsigned int i = 0; i < b->nroles && i < EGS_MAX_ROLES; i++) {
        struct egs_role *r = &b->roles[i];
        r->fn = NULL;
        r->symbol = NULL;
        for (int c = 0; c < EGS_MAX_CANDIDATES && r->candidates[c] != NULL; c++) {
            void *fn = dlsym(b->lib, r->candidates[c]);
            if (fn != NULL) {
                r->fn = fn;
                r->symbol = r->candidates[c];
                break;
            }
        }
        egs_copy(b->resolved[i].role, sizeof(b->resolved[i].role), r->role);
        egs_copy(b->resolved[i].symbol, sizeof(b->resolved[i].symbol), r->symbol);
        b->info.nsymbols = i + 1;
    }
}

struct egs_dev *egs_add_device(struct egs_core *core, struct egs_backend *b)
{
    if (core->ndevs == core->devcap) {
        unsigned int cap = core->devcap ? core->devcap * 2 : 8;
        struct egs_dev *grown = realloc(core->devs, cap * sizeof(*grown));
        if (grown == NULL)
            return NULL;
        core->devs = grown;
        core->devcap = cap;
    }
    struct egs_dev *d = &core->devs[core->ndevs];
    memset(d, 0, sizeof(*d));
    d->backend = b;
    d->info.index = core->ndevs;
    d->info.backend = b->id;
    d->info.state = EGS_DSTATE_OK;
    core->ndevs++;
    b->info.ndevices++;
    return d;
}

struct egs_dev *egs_device_of(struct egs_core *core, const struct egs_backend *b, const void *handle)
{
    for (unsigned int i = 0; i < core->ndevs; i++) {
        struct egs_dev *d = &core->devs[i];
        if (d->backend == b && d->handle == handle)
            return d;
    }
    return NULL;
}

void egs_backend_failed(struct egs_backend *b, int status, const char *symbol, const char *message)
{
    b->info.state = EGS_BSTATE_ERROR;
    b->info.status = status;
    snprintf(b->info.detail, sizeof(b->info.detail), "%s failed: %s", symbol, message);
}

unsigned char egs_tick_lost(struct egs_tick *t, long long code, const char *symbol, const char *message)
{
    if (!t->lost) {
        t->lost = 1;
        t->lost_code = code;
        snprintf(t->lost_reason, sizeof(t->lost_reason), "%s: %s", symbol, message);
    }
    return EGS_R_SKIPPED;
}

void egs_pause_ms(int ms)
{
    struct timespec pause = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&pause, NULL);
}

static void push_event_locked(struct egs_core *core, int kind, unsigned int device,
                              unsigned long long code, const char *detail)
{
    if (core->ev_count == EGS_EVENT_QUEUE) {
        /* Keep the newest: drop the oldest and count it. */
        core->ev_head = (core->ev_head + 1) % EGS_EVENT_QUEUE;
        core->ev_count--;
        core->ev_dropped++;
    }
    struct egs_event *e = &core->events[(core->ev_head + core->ev_count) % EGS_EVENT_QUEUE];
    e->kind = kind;
    e->device = device;
    e->code = code;
    e->ts = unix_time(core);
    egs_copy(e->detail, sizeof(e->detail), detail);
    core->ev_count++;
}

void egs_push_event(struct egs_core *core, int kind, unsigned int device,
                    unsigned long long code, const char *detail)
{
    pthread_mutex_lock(&core->lock);
    push_event_locked(core, kind, device, code, detail);
    pthread_mutex_unlock(&core->lock);
}

static void acc_reset(struct egs_acc *a, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        memset(&a[i], 0, sizeof(a[i]));
        a[i].min = INFINITY;
        a[i].max = -INFINITY;
    }
}

/* --- lifecycle ---------------------------------------------------------------------------- */

/* Ticks of a `hz` grid between runs of a pass at `rate`; 0 when rate is 0 (no pass). */
static unsigned int every_ticks(double hz, double rate)
{
    if (!(rate > 0.0))
        return 0;
    long long every = llround(hz / rate);
    return every < 1 ? 1u : every > 0x7fffffff ? 0x7fffffffu : (unsigned int)every;
}

EGS_EXPORT int egs_core_new(const struct egs_config *cfg, struct egs_core **out)
{
    if (cfg == NULL || out == NULL || !(cfg->hz > 0.0))
        return EGS_E_INVALID;
    /* NaN fails both comparisons, so it is refused too. */
    if (!(cfg->slow_hz >= 0.0 && cfg->slow_hz <= cfg->hz))
        return EGS_E_INVALID;
    /* Only known fields, and a pair read by one call never split across the tiers. */
    const unsigned int slow = cfg->slow_fields;
    if ((slow & ~(unsigned int)EGS_ALL_FIELDS) ||
        !(slow >> EGS_F_UTILIZATION & 1) != !(slow >> EGS_F_MEMORY_BUSY & 1) ||
        !(slow >> EGS_F_MEMORY_USED & 1) != !(slow >> EGS_F_MEMORY_TOTAL & 1))
        return EGS_E_INVALID;
    if (!(cfg->process_hz >= 0.0 && cfg->process_hz <= cfg->hz) ||
        !(cfg->health_hz >= 0.0 && cfg->health_hz <= cfg->hz) || cfg->event_wait_ms > EGS_EVENT_WAIT_MAX)
        return EGS_E_INVALID;
    struct egs_core *core = calloc(1, sizeof(*core));
    if (core == NULL)
        return EGS_E_NOMEM;
    core->cfg = *cfg;
    /* Own copies of the paths: the caller's strings may not outlive this call. */
    egs_copy(core->nvml_path, sizeof(core->nvml_path),
             cfg->nvml_library && cfg->nvml_library[0] ? cfg->nvml_library : "libnvidia-ml.so.1");
    egs_copy(core->amdsmi_path, sizeof(core->amdsmi_path),
             cfg->amdsmi_library && cfg->amdsmi_library[0] ? cfg->amdsmi_library : "libamd_smi.so");
    core->cfg.nvml_library = core->nvml_path;
    core->cfg.amdsmi_library = core->amdsmi_path;
    if (core->cfg.event_wait_ms == 0)
        core->cfg.event_wait_ms = EGS_EVENT_WAIT_MS;
    core->slow_every = 1;
    if (cfg->slow_hz > 0.0) {
        long long every = llround(cfg->hz / cfg->slow_hz);
        core->slow_every = every < 1 ? 1u : every > 0x7fffffff ? 0x7fffffffu : (unsigned int)every;
    }
    core->proc_every = every_ticks(cfg->hz, cfg->process_hz);
    core->health_every = every_ticks(cfg->hz, cfg->health_hz);
    pthread_mutex_init(&core->life, NULL);
    pthread_mutex_init(&core->lock, NULL);
    pthread_mutex_init(&core->nap_mu, NULL);
    pthread_condattr_t nap_attr;
    pthread_condattr_init(&nap_attr);
    pthread_condattr_setclock(&nap_attr, CLOCK_MONOTONIC);
    pthread_cond_init(&core->nap, &nap_attr);
    pthread_condattr_destroy(&nap_attr);
    for (int i = 0; i < EGS_NBACKENDS; i++) {
        core->backends[i].id = i;
        core->backends[i].core = core;
        core->backends[i].info.state = EGS_BSTATE_UNAVAILABLE;
        egs_copy(core->backends[i].info.detail, sizeof(core->backends[i].info.detail), "not started");
    }
    *out = core;
    return EGS_OK;
}

/* Undoes open_backend on `b`: the vendor's events, the library's shutdown when its init
 * succeeded, the vendor state, the library itself. */
static void close_backend(struct egs_backend *b)
{
    if (b->impl != NULL) {
        const struct egs_vendor *v = b->vendor;
        if (v->close_events != NULL)
            v->close_events(b);
        if (b->initialised && b->roles[v->shutdown].fn != NULL)
            EGS_FN(b, v->shutdown, int (*)(void))();
        free(b->impl);
    }
    if (b->lib != NULL)
        dlclose(b->lib);
}

/* Shuts the vendor libraries down and unloads them. Called with no thread of ours running.
 * The backends are detached under the lock (queries then see a closed backend, its info and
 * resolved symbols kept) and closed after it is released: nvmlShutdown / amdsmi_shut_down can
 * take a long time, and no query should wait for them. Only the life mutex (held by the
 * callers) keeps another start or stop out meanwhile. */
static void close_backends(struct egs_core *core)
{
    struct egs_backend closing[EGS_NBACKENDS];
    pthread_mutex_lock(&core->lock);
    for (int i = 0; i < EGS_NBACKENDS; i++) {
        struct egs_backend *b = &core->backends[i];
        closing[i] = *b;
        b->vendor = NULL;
        b->lib = NULL;
        b->impl = NULL;
        b->roles = NULL;
        b->nroles = 0;
        b->read = NULL;
        b->wait_event = NULL;
        b->initialised = 0;
    }
    pthread_mutex_unlock(&core->lock);
    /* The copies keep b->core, so AMD SMI's close_events still finds this run's devices
     * (nothing frees the device table before the next start, which the life mutex keeps out). */
    for (int i = 0; i < EGS_NBACKENDS; i++)
        close_backend(&closing[i]);
}

/* One run's tables: what start builds privately and swaps into the core under the lock. */
struct run_tables {
    struct egs_dev *devs;
    unsigned int ndevs, devcap;
    struct egs_acc *acc;
    double *ring;
    unsigned long long *ring_head;
    unsigned int *ring_pos;
    unsigned int *late_hist, *fold_hist, *work_hist;
    struct egs_tick *ticks;
};

static void free_tables(struct run_tables *t)
{
    for (unsigned int i = 0; t->devs != NULL && i < t->ndevs; i++)
        free(t->devs[i].procs);
    free(t->devs);
    free(t->acc);
    free(t->ring);
    free(t->ring_head);
    free(t->ring_pos);
    free(t->late_hist);
    free(t->fold_hist);
    free(t->work_hist);
    free(t->ticks);
    memset(t, 0, sizeof(*t));
}

/* Exchanges the core's tables with *t; the caller holds core->lock. */
static void swap_tables(struct egs_core *core, struct run_tables *t)
{
    struct run_tables old = {
        core->devs, core->ndevs, core->devcap, core->acc, core->ring, core->ring_head,
        core->ring_pos, core->late_hist, core->fold_hist, core->work_hist, core->sampler_ticks,
    };
    core->devs = t->devs;
    core->ndevs = t->ndevs;
    core->devcap = t->devcap;
    core->acc = t->acc;
    core->ring = t->ring;
    core->ring_head = t->ring_head;
    core->ring_pos = t->ring_pos;
    core->late_hist = t->late_hist;
    core->fold_hist = t->fold_hist;
    core->work_hist = t->work_hist;
    core->sampler_ticks = t->ticks;
    *t = old;
}

static void free_buffers(struct egs_core *core)
{
    struct run_tables none;
    memset(&none, 0, sizeof(none));
    swap_tables(core, &none);
    free_tables(&none);
}

/* Opens one vendor library into `b`: the vendor state with its copy of the role table, dlopen
 * and symbol lookup, the entry points nothing works without, then the vendor's own init and
 * enumeration, and its events. Every outcome but out-of-memory is a backend state, with the
 * reason in b->info.detail; whatever was opened is left for close_backend. */
static int open_backend(struct egs_core *core, struct egs_backend *b, const struct egs_vendor *v,
                        const char *path)
{
    b->impl = calloc(1, v->state_size);
    if (b->impl == NULL)
        return EGS_E_NOMEM;
    b->vendor = v;
    b->roles = b->impl;
    b->nroles = v->nroles;
    memcpy(b->roles, v->roles, v->nroles * sizeof(*b->roles));

    dlerror();
    b->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (b->lib == NULL) {
        const char *why = dlerror();
        b->info.state = EGS_BSTATE_UNAVAILABLE;
        snprintf(b->info.detail, sizeof(b->info.detail), "cannot load %s: %s", v->what, why ? why : path);
        return EGS_OK;
    }
    resolve_roles(b);
    for (unsigned int k = 0; k < v->nneeded; k++) {
        const struct egs_role *r = &b->roles[v->needed[k]];
        if (r->fn == NULL) {
            b->info.state = EGS_BSTATE_ERROR;
            snprintf(b->info.detail, sizeof(b->info.detail), "%s exports no %s entry point (%s)",
                     path, r->role, r->candidates[0]);
            return EGS_OK;
        }
    }
    int rc = v->open(core, b);
    if (rc != EGS_OK || b->info.state == EGS_BSTATE_ERROR)
        return rc;
    b->read = v->read;
    b->info.state = EGS_BSTATE_OK;
    snprintf(b->info.detail, sizeof(b->info.detail), "%s, %u device(s)", v->what, b->info.ndevices);
    if (core->cfg.events && v->open_events(core, b))
        b->wait_event = v->wait_event;
    return EGS_OK;
}

/* Loads and enumerates both backends into `stage`, a core that no other thread can see, so
 * dlopen, nvmlInit / amdsmi_init (seconds on a big host), enumeration and event registration
 * run with no lock held. The vendor files only ever see `stage`; start moves the result into
 * the real core. Returns EGS_OK or EGS_E_NOMEM; `stage` is to be closed by the caller. */
static int open_backends(const struct egs_core *core, struct egs_core *stage)
{
    stage->cfg = core->cfg;
    egs_copy(stage->nvml_path, sizeof(stage->nvml_path), core->nvml_path);
    egs_copy(stage->amdsmi_path, sizeof(stage->amdsmi_path), core->amdsmi_path);
    stage->cfg.nvml_library = stage->nvml_path;
    stage->cfg.amdsmi_library = stage->amdsmi_path;
    const struct egs_vendor *vendors[EGS_NBACKENDS] = {&egs_nvml, &egs_amdsmi};
    const char *paths[EGS_NBACKENDS] = {stage->nvml_path, stage->amdsmi_path};
    const int wanted[EGS_NBACKENDS] = {stage->cfg.nvidia, stage->cfg.amd};
    for (int i = 0; i < EGS_NBACKENDS; i++) {
        struct egs_backend *b = &stage->backends[i];
        b->id = i;
        b->core = stage;
        b->info.state = EGS_BSTATE_UNAVAILABLE;
        egs_copy(b->info.library, EGS_TEXT, paths[i]);
    }
    for (int i = 0; i < EGS_NBACKENDS; i++) {
        struct egs_backend *b = &stage->backends[i];
        if (!wanted[i]) {
            egs_copy(b->info.detail, sizeof(b->info.detail), "disabled by configuration");
            continue;
        }
        int rc = open_backend(stage, b, vendors[i], paths[i]);
        if (rc != EGS_OK)
            return rc;
    }
    return EGS_OK;
}

/* Closes what open_backends left in `stage` (on a failed start) and frees it. */
static void discard_stage(struct egs_core *stage)
{
    for (int i = 0; i < EGS_NBACKENDS; i++)
        close_backend(&stage->backends[i]);
    free(stage->devs);
    free(stage);
}

/* The per-run buffers for `ndevs` devices, all allocated before any thread starts. */
static int alloc_tables(struct run_tables *t, unsigned int ndevs, unsigned int ring_len)
{
    size_t nacc = (size_t)ndevs * EGS_NFIELDS;
    size_t n = ndevs ? ndevs : 1;
    /* One cache line per accumulator, not two: the fold touches every one each tick. */
    if (posix_memalign((void **)&t->acc, 64, (nacc ? nacc : 1) * sizeof(*t->acc)) != 0)
        t->acc = NULL;
    t->ring_head = calloc(n, sizeof(*t->ring_head));
    t->ring_pos = calloc(n, sizeof(*t->ring_pos));
    t->late_hist = calloc(EGS_LATE_BUCKETS, sizeof(*t->late_hist));
    t->fold_hist = calloc(EGS_FOLD_BUCKETS, sizeof(*t->fold_hist));
    t->work_hist = calloc(EGS_WORK_BUCKETS, sizeof(*t->work_hist));
    t->ticks = calloc(n, sizeof(*t->ticks));
    size_t ring_bytes = (size_t)ndevs * ring_len * (1 + EGS_NFIELDS) * sizeof(double);
    if (ring_bytes > 0)
        t->ring = malloc(ring_bytes);
    if (t->acc == NULL || t->ring_head == NULL || t->ring_pos == NULL || t->late_hist == NULL ||
        t->fold_hist == NULL || t->work_hist == NULL || t->ticks == NULL || (ring_bytes > 0 && t->ring == NULL))
        return EGS_E_NOMEM;
    /* Touch the whole ring now: otherwise the sampler takes a page fault every few dozen
     * ticks per device as the ring first fills, in the middle of its timed loop. */
    if (t->ring != NULL)
        memset(t->ring, 0, ring_bytes);
    acc_reset(t->acc, nacc);
    return EGS_OK;
}

static void *sampler_main(void *arg);
static void *eventer_main(void *arg);

/* How long stop waits for the sampler and event threads together. A stop wakes the sampler
 * at once and an event wait lasts at most EGS_EVENT_WAIT_MAX, so anything past a few seconds is
 * a thread stuck inside a vendor call (a GPU that fell off the bus can hang one for minutes). */
#define EGS_JOIN_TIMEOUT_S 3

/* Sets the stop flag and wakes the sampler from its sleep (under nap_mu: the sampler checks
 * the flag under it before it waits, so the signal cannot fall between check and wait). */
static void request_stop(struct egs_core *core)
{
    pthread_mutex_lock(&core->nap_mu);
    atomic_store(&core->stop, 1);
    pthread_cond_broadcast(&core->nap);
    pthread_mutex_unlock(&core->nap_mu);
}

/* Sleeps until the CLOCK_MONOTONIC `deadline` or a stop, whichever comes first. */
static void nap_until(struct egs_core *core, const struct timespec *deadline)
{
    pthread_mutex_lock(&core->nap_mu);
    while (!stopping(core) && pthread_cond_timedwait(&core->nap, &core->nap_mu, deadline) != ETIMEDOUT)
        ;
    pthread_mutex_unlock(&core->nap_mu);
}

/* Joins `th` by the CLOCK_REALTIME `deadline`; on timeout detaches it and returns 1. */
static int join_by(pthread_t th, const struct timespec *deadline)
{
    int rc = pthread_timedjoin_np(th, NULL, deadline);
    if (rc == 0)
        return 0;
    pthread_detach(th);
    return 1;
}

/* Joins the threads of the run (stop flag already set). Threads that do not finish in time
 * are left running: they still use this core's tables and the vendor libraries, so the
 * caller must then neither close the backends nor free anything (see egs_core_stop). */
static unsigned int join_threads(struct egs_core *core)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += EGS_JOIN_TIMEOUT_S;
    unsigned int abandoned = 0;
    if (core->have_sampler)
        abandoned += join_by(core->sampler, &deadline);
    if (core->have_eventer)
        abandoned += join_by(core->eventer, &deadline);
    core->have_sampler = core->have_eventer = 0;
    return abandoned;
}

EGS_EXPORT int egs_core_start(struct egs_core *core)
{
    int rc = EGS_OK;
    if (core == NULL)
        return EGS_E_INVALID;
    pthread_mutex_lock(&core->life);
    /* A thread abandoned by an earlier stop still reads this core's tables: never rebuild
     * them under it. */
    if (core->running || core->abandoned) {
        rc = EGS_E_STATE;
        goto out;
    }
    struct egs_core *stage = calloc(1, sizeof(*stage));
    if (stage == NULL) {
        rc = EGS_E_NOMEM;
        goto out;
    }
    struct run_tables fresh;
    memset(&fresh, 0, sizeof(fresh));
    if ((rc = open_backends(core, stage)) != EGS_OK ||
        (rc = alloc_tables(&fresh, stage->ndevs, core->cfg.ring_len)) != EGS_OK) {
        free_tables(&fresh);
        discard_stage(stage);
        goto out;
    }
    fresh.devs = stage->devs;
    fresh.ndevs = stage->ndevs;
    fresh.devcap = stage->devcap;
    stage->devs = NULL;

    struct timespec real, mono;
    clock_gettime(CLOCK_REALTIME, &real);
    clock_gettime(CLOCK_MONOTONIC, &mono);

    /* The previous run's table stays readable until here; the swap is one short critical
     * section, so a concurrent query sees either the old run's description or the new one,
     * never half of each, and never waits for a vendor library. */
    pthread_mutex_lock(&core->lock);
    swap_tables(core, &fresh);
    for (int i = 0; i < EGS_NBACKENDS; i++) {
        core->backends[i] = stage->backends[i];
        core->backends[i].core = core;
    }
    for (unsigned int i = 0; i < core->ndevs; i++)
        core->devs[i].backend = &core->backends[core->devs[i].info.backend];
    core->ring_len = core->cfg.ring_len;
    core->ev_head = core->ev_count = 0;
    core->ev_dropped = 0;
    core->ticks = core->late_ticks = core->idle_slots = core->idle_pending = core->reads = 0;
    core->reads_fast = core->reads_slow = core->slow_ticks = 0;
    core->calls = core->buffered_reads = 0;
    core->process_passes = core->process_calls = 0;
    core->process_s = core->process_cpu_s = 0.0;
    core->health_passes = core->health_calls = 0;
    core->ring_lag_s = 0.0;
    core->read_s = core->fold_s = 0.0;
    core->thread_cpu_s = 0.0;
    core->have_sampler_clock = 0;
    core->realtime_offset = ts_seconds(&real) - ts_seconds(&mono);
    core->start_mono = now_mono();
    core->stop_mono = 0.0;
    pthread_mutex_unlock(&core->lock);
    free_tables(&fresh);            /* now the previous run's */
    free(stage);

    atomic_store(&core->stop, 0);
    if (pthread_create(&core->sampler, NULL, sampler_main, core) != 0) {
        rc = EGS_E_THREAD;
        goto fail;
    }
    core->have_sampler = 1;
    /* Named here, before start returns (`top -H`, `ps -L`, the daemon bench show them). */
    pthread_setname_np(core->sampler, "egs-sampler");
    pthread_mutex_lock(&core->lock);
    if (pthread_getcpuclockid(core->sampler, &core->sampler_clock) == 0)
        core->have_sampler_clock = 1;
    pthread_mutex_unlock(&core->lock);
    int want_events = 0;
    for (int i = 0; i < EGS_NBACKENDS; i++)
        want_events |= core->backends[i].wait_event != NULL;
    if (core->cfg.events && want_events) {
        if (pthread_create(&core->eventer, NULL, eventer_main, core) != 0) {
            rc = EGS_E_THREAD;
            goto fail;
        }
        core->have_eventer = 1;
        pthread_setname_np(core->eventer, "egs-events");
    }
    core->running = 1;
    goto out;

fail:
    request_stop(core);
    {
        /* The sampler may already be inside a vendor call: bounded, as in egs_core_stop. */
        unsigned int abandoned = join_threads(core);
        pthread_mutex_lock(&core->lock);
        core->have_sampler_clock = 0;
        core->abandoned += abandoned;
        pthread_mutex_unlock(&core->lock);
        if (abandoned == 0) {
            close_backends(core);
            pthread_mutex_lock(&core->lock);
            free_buffers(core);
            pthread_mutex_unlock(&core->lock);
        }
    }
out:
    pthread_mutex_unlock(&core->life);
    return rc;
}

EGS_EXPORT int egs_core_stop(struct egs_core *core)
{
    if (core == NULL)
        return EGS_E_INVALID;
    pthread_mutex_lock(&core->life);
    if (core->running) {
        /* The run ends when stop is asked: the wait for the event thread to come out of the
         * library (up to cfg.event_wait_ms) is not sampling time, so elapsed_s leaves it out. */
        pthread_mutex_lock(&core->lock);
        core->stop_mono = now_mono();
        pthread_mutex_unlock(&core->lock);
        request_stop(core);
        unsigned int abandoned = join_threads(core);
        pthread_mutex_lock(&core->lock);
        core->have_sampler_clock = 0;
        core->abandoned += abandoned;
        pthread_mutex_unlock(&core->lock);
        /* With a thread left inside a vendor call, shutting the library down or unloading it
         * would pull it from under that call (a crash, where a hang was the worst so far):
         * the libraries stay loaded and the tables stay allocated for the process's life. */
        if (abandoned == 0)
            close_backends(core);
        core->running = 0;
    }
    pthread_mutex_unlock(&core->life);
    return EGS_OK;
}

EGS_EXPORT int egs_core_running(struct egs_core *core)
{
    if (core == NULL)
        return 0;
    pthread_mutex_lock(&core->life);
    int running = core->running;
    pthread_mutex_unlock(&core->life);
    return running;
}

EGS_EXPORT void egs_core_free(struct egs_core *core)
{
    if (core == NULL)
        return;
    egs_core_stop(core);
    /* An abandoned thread still holds a pointer to this core and will take its lock when its
     * vendor call returns: leak the core rather than let that thread write freed memory. */
    pthread_mutex_lock(&core->life);
    unsigned int abandoned = core->abandoned;
    pthread_mutex_unlock(&core->life);
    if (abandoned > 0)
        return;
    free_buffers(core);
    pthread_mutex_destroy(&core->lock);
    pthread_mutex_destroy(&core->life);
    pthread_cond_destroy(&core->nap);
    pthread_mutex_destroy(&core->nap_mu);
    free(core);
}

/* --- per-process passes -------------------------------------------------------------------- */

struct egs_process *egs_proc_add(struct egs_proc_read *r, unsigned int pid)
{
    for (unsigned int k = 0; k < r->n; k++)
        if (r->procs[k].pid == pid)
            return &r->procs[k];
    if (r->n == r->cap) {
        unsigned int cap = r->cap ? r->cap * 2 : EGS_PROC_INITIAL;
        struct egs_process *grown = realloc(r->procs, cap * sizeof(*grown));
        if (grown == NULL)
            return NULL;
        r->procs = grown;
        r->cap = cap;
    }
    struct egs_process *p = &r->procs[r->n++];
    p->pid = pid;
    p->kinds = 0;
    p->used_memory = p->sm = p->mem = p->enc = p->dec = p->gfx_ns = p->enc_ns = NAN;
    return p;
}

void *egs_proc_scratch(struct egs_proc_read *r, size_t bytes)
{
    if (bytes > r->raw_cap) {
        void *grown = realloc(r->raw, bytes);
        if (grown == NULL)
            return NULL;
        r->raw = grown;
        r->raw_cap = bytes;
    }
    return r->raw;
}

void egs_proc_failed(struct egs_proc_read *r, int status, const char *symbol, const char *message)
{
    r->info.state = EGS_PLIST_ERROR;
    r->info.status = status;
    snprintf(r->info.detail, sizeof(r->info.detail), "%s: %s", symbol, message);
}

/* Reads every device's process list and publishes each as it is read (one short critical
 * section per device: the lists' buffers are swapped, not copied). Runs on the sampler thread
 * between ticks, so no lock is held across a vendor call. */
static void process_pass(struct egs_core *core, struct egs_proc_read *r)
{
    struct timespec w0, w1, c0, c1;
    unsigned long long calls = 0;
    const double window = fmax(EGS_PROC_WINDOW_S, core->proc_every / core->cfg.hz);
    clock_gettime(CLOCK_MONOTONIC, &w0);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
    for (unsigned int i = 0; i < core->ndevs && !stopping(core); i++) {
        struct egs_dev *d = &core->devs[i];
        const struct egs_vendor *v = d->backend->vendor;
        memset(&r->info, 0, sizeof(r->info));
        r->n = 0;
        r->info.ts = unix_time(core);
        r->since_us = (unsigned long long)((r->info.ts - window) * 1e6);
        if (d->lost)
            r->info.state = EGS_PLIST_LOST;
        else if (v == NULL || v->read_processes == NULL)
            r->info.state = EGS_PLIST_UNSUPPORTED;
        else
            v->read_processes(d->backend, d, r);
        if (r->info.state != EGS_PLIST_OK)
            r->n = 0;
        r->info.count = r->n;
        calls += r->info.calls;
        pthread_mutex_lock(&core->lock);
        struct egs_process *procs = d->procs;
        unsigned int pcap = d->pcap;
        d->procs = r->procs;
        d->pcap = r->cap;
        d->plist = r->info;
        pthread_mutex_unlock(&core->lock);
        r->procs = procs;
        r->cap = pcap;
    }
    clock_gettime(CLOCK_MONOTONIC, &w1);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
    pthread_mutex_lock(&core->lock);
    core->process_passes++;
    core->process_calls += calls;
    core->process_s += ts_seconds(&w1) - ts_seconds(&w0);
    core->process_cpu_s += ts_seconds(&c1) - ts_seconds(&c0);
    pthread_mutex_unlock(&core->lock);
}

/* Reads every device's health signals and publishes each (one short critical section per
 * device); on the sampler thread between ticks, like the per-process pass. */
static void health_pass(struct egs_core *core)
{
    unsigned long long calls = 0;
    for (unsigned int i = 0; i < core->ndevs && !stopping(core); i++) {
        struct egs_dev *d = &core->devs[i];
        const struct egs_vendor *v = d->backend->vendor;
        struct egs_health h;
        memset(&h, 0, sizeof(h));
        h.ts = unix_time(core);
        h.mig = -1;
        for (int k = 0; k < EGS_NHEALTH; k++)
            h.values[k] = NAN;
        if (!d->lost && v != NULL && v->read_health != NULL)
            v->read_health(d->backend, d, &h);
        calls += h.calls;
        pthread_mutex_lock(&core->lock);
        d->health = h;
        pthread_mutex_unlock(&core->lock);
    }
    pthread_mutex_lock(&core->lock);
    core->health_passes++;
    core->health_calls += calls;
    pthread_mutex_unlock(&core->lock);
}

/* --- the sampler ---------------------------------------------------------------------------- */

static void ring_advance(struct egs_core *core, unsigned int i)
{
    core->ring_head[i]++;
    core->ring_pos[i] = core->ring_pos[i] + 1 == core->ring_len ? 0 : core->ring_pos[i] + 1;
}

/* Folds device i's buffered samples (in time order) with their own timestamps: into the
 * accumulators, and into ring slots of their own (NaN for every other field; samples of one
 * timestamp share a slot). */
static void fold_samples(struct egs_core *core, unsigned int i, const struct egs_tick *t, double now_unix)
{
    struct egs_acc *restrict acc = &core->acc[(size_t)i * EGS_NFIELDS];
    double *slot = NULL;
    for (unsigned int k = 0; k < t->nsamples; k++) {
        const struct egs_sample *s = &t->samples[k];
        struct egs_acc *a = &acc[s->field];
        if (a->count == 0 || s->ts < a->first_ts)
            a->first_ts = s->ts;
        a->count++;
        a->sum += s->value;
        if (s->value < a->min)
            a->min = s->value;
        if (s->value > a->max)
            a->max = s->value;
        if (s->ts >= a->last_ts) {
            a->last = s->value;
            a->last_ts = s->ts;
        }
        if (now_unix - s->ts > core->ring_lag_s)
            core->ring_lag_s = now_unix - s->ts;
        if (core->ring == NULL)
            continue;
        if (slot == NULL || slot[0] != s->ts) {
            if (slot != NULL)
                ring_advance(core, i);
            slot = &core->ring[((size_t)i * core->ring_len + core->ring_pos[i]) * (1 + EGS_NFIELDS)];
            slot[0] = s->ts;
            for (int f = 0; f < EGS_NFIELDS; f++)
                slot[1 + f] = NAN;
        }
        slot[1 + s->field] = s->value;
    }
    if (slot != NULL)
        ring_advance(core, i);
}

static void fold_tick(struct egs_core *core, const struct egs_tick *ticks, double now_unix)
{
    for (unsigned int i = 0; i < core->ndevs; i++) {
        struct egs_dev *d = &core->devs[i];
        const struct egs_tick *t = &ticks[i];
        if (d->info.state == EGS_DSTATE_LOST)
            continue;
        /* restrict: ring and accumulators never overlap, so the compiler may keep the
         * accumulator in registers across the ring stores. */
        struct egs_acc *restrict acc = &core->acc[(size_t)i * EGS_NFIELDS];
        double *restrict slot = NULL;
        if (core->ring != NULL) {
            slot = &core->ring[((size_t)i * core->ring_len + core->ring_pos[i]) * (1 + EGS_NFIELDS)];
            slot[0] = now_unix;
        }
        for (int f = 0; f < EGS_NFIELDS; f++) {
            double v = NAN;
            switch (t->status[f]) {
            case EGS_R_OK:
                v = t->values[f];
                if (acc[f].count == 0)
                    acc[f].first_ts = now_unix;
                acc[f].count++;
                acc[f].sum += v;
                if (v < acc[f].min)
                    acc[f].min = v;
                if (v > acc[f].max)
                    acc[f].max = v;
                acc[f].last = v;
                acc[f].last_ts = now_unix;
                break;
            case EGS_R_UNSUPPORTED:
                d->info.unsupported |= 1u << f;
                break;
            case EGS_R_ERROR:
                acc[f].errors++;
                break;
            default:
                break;
            }
            if (slot != NULL)
                slot[1 + f] = v;
        }
        if (slot != NULL)
            ring_advance(core, i);
        if (t->nsamples > 0)
            fold_samples(core, i, t, now_unix);
        if (d->path_changed) {
            memcpy(d->info.paths, d->path, sizeof(d->info.paths));
            d->path_changed = 0;
        }
        if (t->lost) {
            d->info.state = EGS_DSTATE_LOST;
            egs_copy(d->info.lost_reason, sizeof(d->info.lost_reason), t->lost_reason);
            push_event_locked(core, EGS_EVENT_LOST, i, (unsigned long long)t->lost_code,
                              t->lost_reason);
        }
    }
}

/* Whole nanoseconds, so a deadline grid never drifts by rounding. */
static void add_ns(struct timespec *t, long long ns)
{
    t->tv_sec += (time_t)(ns / 1000000000LL);
    t->tv_nsec += (long)(ns % 1000000000LL);
    if (t->tv_nsec >= 1000000000L) {
        t->tv_sec++;
        t->tv_nsec -= 1000000000L;
    }
}

static double ts_diff(const struct timespec *a, const struct timespec *b)
{
    return (double)(a->tv_sec - b->tv_sec) + (double)(a->tv_nsec - b->tv_nsec) * 1e-9;
}

/* Asks for the cache lines this tick's fold will write (every accumulator and each device's
 * next ring slot) before the vendor reads start, so their misses overlap with the library's
 * work instead of adding to ours: after a sleep other processes have usually evicted them. */
static void prefetch_fold_state(const struct egs_core *core)
{
    const char *acc = (const char *)core->acc;
    size_t bytes = (size_t)core->ndevs * EGS_NFIELDS * sizeof(*core->acc);
    for (size_t off = 0; off < bytes; off += 64)
        __builtin_prefetch(acc + off, 1, 3);
    if (core->ring == NULL)
        return;
    const size_t slot_bytes = (1 + EGS_NFIELDS) * sizeof(double);
    for (unsigned int i = 0; i < core->ndevs; i++) {
        const char *slot = (const char *)&core->ring[((size_t)i * core->ring_len + core->ring_pos[i]) * (1 + EGS_NFIELDS)];
        /* A slot spans two or three lines depending on where it starts. */
        for (size_t off = 0; off < slot_bytes; off += 64)
            __builtin_prefetch(slot + off, 1, 3);
        __builtin_prefetch(slot + slot_bytes - 1, 1, 3);
    }
}

/* Buffered samples in time order (the fold merges equal timestamps into one ring slot). */
static int sample_order(const void *a, const void *b)
{
    const struct egs_sample *x = a, *y = b;
    if (x->ts != y->ts)
        return x->ts < y->ts ? -1 : 1;
    return x->field - y->field;
}

_Static_assert(EGS_ALL_FIELDS == (1u << EGS_NFIELDS) - 1, "EGS_ALL_FIELDS: one bit per field");

/* Whether a tick that is not a slow one has anything to read: a live device with a field of
 * `fast` that is neither unsupported nor served by its driver's sample buffer. */
static int fast_work(const struct egs_core *core, unsigned int fast)
{
    for (unsigned int i = 0; i < core->ndevs; i++) {
        const struct egs_dev *d = &core->devs[i];
        if (!d->lost && (fast & ~d->unsupported & ~d->buffered))
            return 1;
    }
    return 0;
}

static void *sampler_main(void *arg)
{
    struct egs_core *core = arg;
    const long long period_ns = (long long)llround(1e9 / core->cfg.hz);
    struct egs_tick *ticks = core->sampler_ticks;     /* allocated by start: cannot fail here */
    struct timespec deadline, now;
    double fold_s = 0.0;      /* not yet published to core->fold_s */
    long long work_ns = 0;    /* the previous tick's work, not yet in work_hist */
    const unsigned int all_fields = EGS_ALL_FIELDS;
    const unsigned int slow_fields = core->cfg.slow_fields;
    const unsigned long long slow_every = core->slow_every;
    unsigned long long slot = 0;        /* grid index of this tick (skipped slots counted) */
    unsigned long long next_slow = 0;   /* first grid slot at which the slow tier is due */
    const unsigned long long proc_every = core->proc_every;
    unsigned long long next_proc = 0;   /* likewise for the per-process pass */
    const unsigned long long health_every = core->health_every;
    unsigned long long next_health = 0; /* and the health pass */
    struct egs_proc_read procs;
    memset(&procs, 0, sizeof(procs));

    /* The default 50 us timer slack would be most of the lateness at 1 kHz; this thread's
     * wake-ups are the product, so ask for 1 us (per-thread, needs no privilege). */
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    while (!stopping(core)) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        double late = ts_diff(&now, &deadline);
        unsigned int reads_fast = 0, reads_slow = 0, calls = 0, buffered = 0;

        /* The slow tier is due on multiples of slow_every; a tick that runs after a skipped
         * multiple catches it up at once, as the fast tier does with its latest due slot. */
        int slow_due = slot >= next_slow;
        if (slow_due)
            next_slow = (slot / slow_every + 1) * slow_every;
        const unsigned int due = slow_due ? all_fields : all_fields & ~slow_fields;

        prefetch_fold_state(core);

        for (unsigned int i = 0; i < core->ndevs; i++) {
            struct egs_dev *d = &core->devs[i];
            struct egs_tick *t = &ticks[i];
            memset(t->status, EGS_R_SKIPPED, sizeof(t->status));
            t->lost = 0;
            t->calls = 0;
            t->nsamples = 0;
            if (d->lost)
                continue;
            /* Buffered fields are read on slow ticks only: their samples carry their own
             * timestamps, so reading more often would only fetch the same samples sooner. */
            t->want = due & ~d->unsupported & (slow_due ? ~0u : ~d->buffered);
            if (t->want == 0)
                continue;
            d->backend->read(d->backend, d, t);
            calls += t->calls;
            if (t->lost) {
                /* A read that failed because the device went away is not a value. */
                d->lost = 1;
                t->nsamples = 0;
                for (int f = 0; f < EGS_NFIELDS; f++)
                    if (t->status[f] == EGS_R_OK)
                        t->status[f] = EGS_R_SKIPPED;
            }
            if (t->nsamples > 1)
                qsort(t->samples, t->nsamples, sizeof(t->samples[0]), sample_order);
            for (unsigned int k = 0; k < t->nsamples; k++) {
                if (slow_fields & (1u << t->samples[k].field))
                    reads_slow++;
                else
                    reads_fast++;
            }
            buffered += t->nsamples;
            for (int f = 0; f < EGS_NFIELDS; f++) {
                if (t->status[f] != EGS_R_SKIPPED) {
                    if (slow_fields & (1u << f))
                        reads_slow++;
                    else
                        reads_fast++;
                }
                if (t->status[f] == EGS_R_UNSUPPORTED) {
                    d->unsupported |= 1u << f;
                    d->path[f] = EGS_PATH_NONE;
                    d->path_changed = 1;
                }
            }
        }

        struct timespec read_end, fold_end;
        clock_gettime(CLOCK_MONOTONIC, &read_end);
        double now_unix = ts_seconds(&now) + core->realtime_offset;
        pthread_mutex_lock(&core->lock);
        fold_tick(core, ticks, now_unix);
        core->ticks++;
        core->idle_slots += core->idle_pending;
        core->idle_pending = 0;
        core->reads += reads_fast + reads_slow;
        core->reads_fast += reads_fast;
        core->reads_slow += reads_slow;
        core->slow_ticks += (unsigned long long)slow_due;
        core->calls += calls;
        core->buffered_reads += buffered;
        long bucket = late > 0 ? (long)(late * 1e6) : 0;
        core->late_hist[bucket < EGS_LATE_BUCKETS ? bucket : EGS_LATE_BUCKETS - 1]++;
        core->read_s += ts_diff(&read_end, &now);
        if (core->ticks > 1) {
            /* The previous tick's fold: this one ends after the unlock. */
            long fb = (long)(fold_s * 1e9) / EGS_FOLD_BUCKET_NS;
            core->fold_hist[fb < EGS_FOLD_BUCKETS ? fb : EGS_FOLD_BUCKETS - 1]++;
            core->fold_s += fold_s;
            core->work_hist[egs_work_bucket(work_ns)]++;
        }
        pthread_mutex_unlock(&core->lock);
        clock_gettime(CLOCK_MONOTONIC, &fold_end);
        fold_s = ts_diff(&fold_end, &read_end);
        work_ns = (long long)(ts_diff(&fold_end, &now) * 1e9);

        /* The per-process pass, after the tick's own reads and fold so it never delays them;
         * a long pass makes the next ticks late, and they are counted as such. */
        if (proc_every > 0 && slot >= next_proc) {
            next_proc = (slot / proc_every + 1) * proc_every;
            process_pass(core, &procs);
            clock_gettime(CLOCK_MONOTONIC, &fold_end);
        }
        if (health_every > 0 && slot >= next_health) {
            next_health = (slot / health_every + 1) * health_every;
            health_pass(core);
            clock_gettime(CLOCK_MONOTONIC, &fold_end);
        }

        /* Next deadline on the fixed grid. If the thread was held up past it, the latest slot
         * that is already due runs at once (late, and measured as such); slots older than that
         * are skipped and counted rather than run back to back, so a stall never turns into a
         * burst of reads and ticks + skipped always equals elapsed x hz. */
        add_ns(&deadline, period_ns);
        slot++;
        double behind = ts_diff(&fold_end, &deadline);
        if (behind * 1e9 >= (double)period_ns) {
            long long skip = (long long)(behind * 1e9) / period_ns;
            pthread_mutex_lock(&core->lock);
            core->late_ticks += (unsigned long long)skip;
            pthread_mutex_unlock(&core->lock);
            add_ns(&deadline, skip * period_ns);
            slot += (unsigned long long)skip;
        }
        /* Slots with nothing due are not woken for: when every fast field of every live
         * device comes from a driver buffer (read on slow slots) or is unsupported, the next
         * slot worth waking for is the next slow, per-process or health one. At the defaults
         * on a driver with buffers that is one wake-up a second instead of gpu.hz. */
        if (!fast_work(core, all_fields & ~slow_fields)) {
            unsigned long long next = next_slow;
            if (proc_every > 0 && next_proc < next)
                next = next_proc;
            if (health_every > 0 && next_health < next)
                next = next_health;
            if (next > slot) {
                /* Counted as they pass (egs_sampler_get), for good by the next tick. */
                pthread_mutex_lock(&core->lock);
                core->idle_pending = next - slot;
                core->idle_from = ts_seconds(&deadline);
                pthread_mutex_unlock(&core->lock);
                add_ns(&deadline, (long long)(next - slot) * period_ns);
                slot = next;
            }
        }
        /* One sleep to the deadline, which a stop ends at once (request_stop). It used to be
         * slices of 50 ms so that stop stayed prompt: 20 wake-ups a second of an idle thread,
         * ~0.1 % of a core at the defaults, ten times the cost of the tick's own reads. */
        nap_until(core, &deadline);
    }
    struct timespec cpu;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu);
    pthread_mutex_lock(&core->lock);
    core->thread_cpu_s = ts_seconds(&cpu);
    core->fold_s += fold_s;
    pthread_mutex_unlock(&core->lock);
    free(procs.procs);
    free(procs.raw);
    return NULL;
}

/* Waits for vendor events with a short timeout per call, so stop() is prompt. */
/* Waits on each backend's event queue in turn, cfg.event_wait_ms a round shared between
 * them. A wait returns the moment an event comes, so the length only sets how often an idle
 * thread wakes and how long stop may wait for it (once every 50 ms cost ~0.09 % of a core on
 * the simulator, where each wake is also a scan of the scenario's faults). */
static void *eventer_main(void *arg)
{
    struct egs_core *core = arg;
    int waiting = 0;
    for (int i = 0; i < EGS_NBACKENDS; i++)
        waiting += core->backends[i].wait_event != NULL;
    if (waiting == 0)
        return NULL;
    int each_ms = (int)core->cfg.event_wait_ms / waiting;
    if (each_ms < 1)
        each_ms = 1;
    while (!stopping(core)) {
        for (int i = 0; i < EGS_NBACKENDS && !stopping(core); i++) {
            struct egs_backend *b = &core->backends[i];
            if (b->wait_event != NULL)
                b->wait_event(b, core, each_ms);
        }
    }
    return NULL;
}

/* --- queries ------------------------------------------------------------------------------ */

EGS_EXPORT int egs_backend_get(struct egs_core *core, int backend, struct egs_backend_info *out)
{
    if (core == NULL || out == NULL || backend < 0 || backend >= EGS_NBACKENDS)
        return EGS_E_INVALID;
    pthread_mutex_lock(&core->lock);
    *out = core->backends[backend].info;
    pthread_mutex_unlock(&core->lock);
    return EGS_OK;
}

EGS_EXPORT int egs_backend_symbol(struct egs_core *core, int backend, unsigned int i,
                                  struct egs_symbol_info *out)
{
    if (core == NULL || out == NULL || backend < 0 || backend >= EGS_NBACKENDS)
        return EGS_E_INVALID;
    int rc = EGS_OK;
    struct egs_backend *b = &core->backends[backend];
    pthread_mutex_lock(&core->lock);
    if (i >= b->info.nsymbols)
        rc = EGS_E_INVALID;
    else
        *out = b->resolved[i];
    pthread_mutex_unlock(&core->lock);
    return rc;
}

EGS_EXPORT int egs_device_count(struct egs_core *core, unsigned int *n)
{
    if (core == NULL || n == NULL)
        return EGS_E_INVALID;
    pthread_mutex_lock(&core->lock);
    *n = core->ndevs;
    pthread_mutex_unlock(&core->lock);
    return EGS_OK;
}

EGS_EXPORT int egs_device_get(struct egs_core *core, unsigned int index, struct egs_device_info *out)
{
    int rc = EGS_OK;
    if (core == NULL || out == NULL)
        return EGS_E_INVALID;
    pthread_mutex_lock(&core->lock);
    if (index >= core->ndevs)
        rc = EGS_E_INVALID;
    else
        *out = core->devs[index].info;
    pthread_mutex_unlock(&core->lock);
    return rc;
}

EGS_EXPORT int egs_drain(struct egs_core *core, struct egs_stats *out, unsigned int cap, unsigned int *n)
{
    int rc = EGS_OK;
    if (core == NULL || n == NULL || (out == NULL && cap > 0))
        return EGS_E_INVALID;
    pthread_mutex_lock(&core->lock);
    unsigned int total = core->ndevs * EGS_NFIELDS;
    *n = total;
    if (total > cap) {
        rc = EGS_E_SIZE;
        goto out;
    }
    for (unsigned int k = 0; k < total; k++) {
        const struct egs_acc *a = &core->acc[k];
        struct egs_stats *s = &out[k];
        s->device = k / EGS_NFIELDS;
        s->field = (int)(k % EGS_NFIELDS);
        s->count = a->count;
        s->sum = a->sum;
        s->min = a->min;
        s->max = a->max;
        s->last = a->last;
        s->first_ts = a->first_ts;
        s->last_ts = a->last_ts;
        s->errors = a->errors;
    }
    acc_reset(core->acc, total);
out:
    pthread_mutex_unlock(&core->lock);
    return rc;
}

struct ring_ref {
    double ts;
    const double *slot;
};

/* By time, and by position for equal times (the slot address grows with the write order
 * except across the ring's wrap, where only equal-time order could differ). */
static int ring_ref_order(const void *a, const void *b)
{
    const struct ring_ref *x = a, *y = b;
    if (x->ts != y->ts)
        return x->ts < y->ts ? -1 : 1;
    return x->slot < y->slot ? -1 : x->slot > y->slot;
}

EGS_EXPORT int egs_ring_read(struct egs_core *core, unsigned int device, double since,
                             double *timestamps, double *values, unsigned int cap, unsigned int *n)
{
    int rc = EGS_OK;
    if (core == NULL || n == NULL || ((timestamps == NULL || values == NULL) && cap > 0))
        return EGS_E_INVALID;
    pthread_mutex_lock(&core->lock);
    if (device >= core->ndevs) {
        rc = EGS_E_INVALID;
        goto out;
    }
    *n = 0;
    if (core->ring == NULL)
        goto out;
    unsigned long long head = core->ring_head[device];
    unsigned long long held = head < core->ring_len ? head : core->ring_len;
    const double *base = &core->ring[(size_t)device * core->ring_len * (1 + EGS_NFIELDS)];
    /* Slots are in time order but for buffered samples, folded up to ring_lag_s after they
     * were taken: find the first slot newer than `since` from the newest back, looking that
     * much further back, then hand out the slots newer than `since` sorted by time. */
    const double horizon = since - core->ring_lag_s;
    unsigned long long first = head - held;
    unsigned long long k = head;
    while (k > first && base[((k - 1) % core->ring_len) * (1 + EGS_NFIELDS)] > horizon)
        k--;
    if (core->ring_lag_s == 0.0) {
        unsigned long long want = head - k;
        if (want > cap) {
            /* Keep the newest `cap`: a flight recorder wants the moments before now. */
            k = head - cap;
            want = cap;
        }
        for (unsigned long long j = 0; j < want; j++) {
            const double *slot = &base[((k + j) % core->ring_len) * (1 + EGS_NFIELDS)];
            timestamps[j] = slot[0];
            memcpy(&values[j * EGS_NFIELDS], &slot[1], EGS_NFIELDS * sizeof(double));
        }
        *n = (unsigned int)want;
        goto out;
    }
    struct ring_ref *refs = malloc((size_t)(head - k + 1) * sizeof(*refs));
    if (refs == NULL) {
        rc = EGS_E_NOMEM;
        goto out;
    }
    size_t m = 0;
    for (unsigned long long j = k; j < head; j++) {
        const double *slot = &base[(j % core->ring_len) * (1 + EGS_NFIELDS)];
        if (slot[0] > since) {
            refs[m].ts = slot[0];
            refs[m].slot = slot;
            m++;
        }
    }
    qsort(refs, m, sizeof(*refs), ring_ref_order);
    size_t skip = m > cap ? m - cap : 0;   /* the newest `cap`, as above */
    for (size_t j = skip; j < m; j++) {
        timestamps[j - skip] = refs[j].ts;
        memcpy(&values[(j - skip) * EGS_NFIELDS], &refs[j].slot[1], EGS_NFIELDS * sizeof(double));
    }
    free(refs);
    *n = (unsigned int)(m - skip);
    goto out;
out:
    pthread_mutex_unlock(&core->lock);
    return rc;
}

EGS_EXPORT int egs_events_read(struct egs_core *core, struct egs_event *out, unsigned int cap, unsigned int *n)
{
    if (core == NULL || n == NULL || (out == NULL && cap > 0))
        return EGS_E_INVALID;
    pthread_mutex_lock(&core->lock);
    unsigned int take = core->ev_count < cap ? core->ev_count : cap;
    for (unsigned int j = 0; j < take; j++)
        out[j] = core->events[(core->ev_head + j) % EGS_EVENT_QUEUE];
    core->ev_head = (core->ev_head + take) % EGS_EVENT_QUEUE;
    core->ev_count -= take;
    *n = take;
    pthread_mutex_unlock(&core->lock);
    return EGS_OK;
}

/* The bucket holding the median of a histogram of n buckets; -1 when it is empty or absent. */
static long hist_median(const unsigned int *hist, long n)
{
    unsigned long long total = 0, seen = 0;
    for (long b = 0; hist != NULL && b < n; b++)
        total += hist[b];
    for (long b = 0; total > 0 && b < n; b++) {
        seen += hist[b];
        if (seen * 2 >= total)
            return b;
    }
    return -1;
}

EGS_EXPORT int egs_sampler_get(struct egs_core *core, struct egs_sampler_stats *out)
{
    if (core == NULL || out == NULL)
        return EGS_E_INVALID;
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&core->lock);
    out->ticks = core->ticks;
    out->late_ticks = core->late_ticks;
    out->reads = core->reads;
    out->reads_fast = core->reads_fast;
    out->reads_slow = core->reads_slow;
    out->slow_ticks = core->slow_ticks;
    out->calls = core->calls;
    out->buffered_reads = core->buffered_reads;
    out->process_passes = core->process_passes;
    out->process_calls = core->process_calls;
    out->process_s = core->process_s;
    out->process_cpu_s = core->process_cpu_s;
    out->health_passes = core->health_passes;
    out->health_calls = core->health_calls;
    out->slow_every = core->slow_every;
    out->events_dropped = core->ev_dropped;
    out->abandoned_threads = core->abandoned;
    out->thread_cpu_s = core->thread_cpu_s;
    out->read_s = core->read_s;
    out->fold_s = core->fold_s;
    if (core->have_sampler_clock) {
        /* Still running: the thread's own CPU clock, read from here. */
        struct timespec cpu;
        if (clock_gettime(core->sampler_clock, &cpu) == 0)
            out->thread_cpu_s = ts_seconds(&cpu);
    }
    double end = core->stop_mono > 0 ? core->stop_mono : now_mono();
    out->elapsed_s = core->start_mono > 0 ? end - core->start_mono : 0.0;
    unsigned long long passed = 0;  /* slots of the current idle stretch already behind us */
    if (core->idle_pending > 0 && end >= core->idle_from) {
        passed = (unsigned long long)((end - core->idle_from) * core->cfg.hz) + 1;
        if (passed > core->idle_pending)
            passed = core->idle_pending;
    }
    out->idle_slots = core->idle_slots + passed;
    out->achieved_hz = out->elapsed_s > 0 ? (double)(core->ticks + out->idle_slots) / out->elapsed_s : 0.0;
    long b = hist_median(core->fold_hist, EGS_FOLD_BUCKETS);
    if (b >= 0)
        out->fold_p50_us = (b + 0.5) * EGS_FOLD_BUCKET_NS / 1000.0;
    b = hist_median(core->work_hist, EGS_WORK_BUCKETS);
    if (b >= 0)
        out->tick_work_p50_us = egs_work_bucket_ns(b) / 1000.0;
    if (core->late_hist != NULL && core->ticks > 0) {
        unsigned long long seen = 0, want = (core->ticks * 99 + 99) / 100;
        for (long b = 0; b < EGS_LATE_BUCKETS; b++) {
            seen += core->late_hist[b];
            if (seen >= want) {
                out->tick_late_p99_us = (double)b;
                break;
            }
        }
    }
    pthread_mutex_unlock(&core->lock);
    return EGS_OK;
}

EGS_EXPORT int egs_processes_read(struct egs_core *core, unsigned int device, struct egs_process_list *info,
                                  struct egs_process *out, unsigned int cap, unsigned int *n)
{
    int rc = EGS_OK;
    if (core == NULL || info == NULL || n == NULL || (out == NULL && cap > 0))
        return EGS_E_INVALID;
    pthread_mutex_lock(&core->lock);
    if (device >= core->ndevs) {
        rc = EGS_E_INVALID;
        goto out;
    }
    const struct egs_dev *d = &core->devs[device];
    *info = d->plist;
    *n = d->plist.count;
    if (d->plist.count > cap) {
        rc = EGS_E_SIZE;
        goto out;
    }
    if (d->plist.count > 0)
        memcpy(out, d->procs, d->plist.count * sizeof(*out));
out:
    pthread_mutex_unlock(&core->lock);
    return rc;
}

EGS_EXPORT int egs_health_read(struct egs_core *core, unsigned int device, struct egs_health *out)
{
    int rc = EGS_OK;
    if (core == NULL || out == NULL)
        return EGS_E_INVALID;
    pthread_mutex_lock(&core->lock);
    if (device >= core->ndevs)
        rc = EGS_E_INVALID;
    else
        *out = core->devs[device].health;
    pthread_mutex_unlock(&core->lock);
    return rc;
}
