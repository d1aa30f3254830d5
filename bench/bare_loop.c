/*
 * bare_loop.c - the floor for bench/sampler.py: what the NVML reads cost with no agent around
 * them. It makes exactly the calls the core makes per device and tick (utilisation, memory
 * v2, temperature V, field values for POWER_INSTANT, SM and memory clocks, energy, fan: ten
 * field values from eight calls) in a tight loop, and prints the thread CPU nanoseconds per
 * field value. bench/sampler.py compiles it on the fly against nothing: NVML is dlopen'ed.
 *
 * With HZ, each round waits for the next slot of an absolute HZ grid first (clock_nanosleep,
 * TIMER_ABSTIME), as the core's sampler does: the reads plus the sleeping and waking, with no
 * agent code, which is the fair floor for a paced sampler on a given machine.
 *
 * usage: bare_loop LIBRARY ROUNDS [HZ]
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <time.h>

#include "work_hist.h"  /* native/: the core's buckets for a tick's work */

typedef int (*fn_void)(void);
typedef int (*fn_count)(unsigned int *);
typedef int (*fn_handle)(unsigned int, void **);
typedef int (*fn_ptr)(void *, void *);
typedef int (*fn_clock)(void *, int, unsigned int *);
typedef int (*fn_uint)(void *, unsigned int *);
typedef int (*fn_ull)(void *, unsigned long long *);
typedef int (*fn_fields)(void *, int, void *);

struct temperature { unsigned int version; int sensor; int value; };
struct memory_v2 { unsigned int version; unsigned long long total, reserved, free, used; };
struct field_value {
    unsigned int id, scope;
    long long ts, latency;
    int type, ret;
    unsigned long long value;
};

static void *need(void *lib, const char *name)
{
    void *fn = dlsym(lib, name);
    if (fn == NULL) {
        fprintf(stderr, "bare_loop: %s lacks %s\n", "library", name);
        exit(2);
    }
    return fn;
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s LIBRARY ROUNDS [HZ]\n", argv[0]);
        return 2;
    }
    long rounds = atol(argv[2]);
    long period_ns = argc == 4 ? (long)(1e9 / atof(argv[3])) : 0;
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        fprintf(stderr, "bare_loop: %s\n", dlerror());
        return 2;
    }
    fn_count count = need(lib, "nvmlDeviceGetCount_v2");
    fn_handle handle = need(lib, "nvmlDeviceGetHandleByIndex_v2");
    fn_ptr util = need(lib, "nvmlDeviceGetUtilizationRates");
    fn_ptr memory = need(lib, "nvmlDeviceGetMemoryInfo_v2");
    fn_ptr temp = need(lib, "nvmlDeviceGetTemperatureV");
    fn_fields fields = need(lib, "nvmlDeviceGetFieldValues");
    fn_clock clock = need(lib, "nvmlDeviceGetClockInfo");
    fn_ull energy = need(lib, "nvmlDeviceGetTotalEnergyConsumption");
    fn_uint fan = need(lib, "nvmlDeviceGetFanSpeed");
    if (((fn_void)need(lib, "nvmlInit_v2"))() != 0) {
        fprintf(stderr, "bare_loop: nvmlInit_v2 failed\n");
        return 1;
    }
    unsigned int n = 0;
    count(&n);
    void **devs = calloc(n ? n : 1, sizeof(*devs));
    for (unsigned int i = 0; i < n; i++)
        handle(i, &devs[i]);

    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);  /* as the core does */
    volatile double sink = 0;
    struct timespec a, b, deadline, woke, done;
    unsigned int *work = calloc(EGS_WORK_BUCKETS, sizeof(*work));
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    for (long r = 0; r < rounds; r++) {
        if (period_ns > 0) {
            deadline.tv_nsec += period_ns;
            while (deadline.tv_nsec >= 1000000000L) {
                deadline.tv_sec++;
                deadline.tv_nsec -= 1000000000L;
            }
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL);
        }
        clock_gettime(CLOCK_MONOTONIC, &woke);
        for (unsigned int i = 0; i < n; i++) {
            unsigned int u[2], mhz = 0, pct = 0;
            unsigned long long mj = 0;
            struct memory_v2 m = {.version = (unsigned int)sizeof(m) | (2u << 24)};
            struct temperature t = {.version = (unsigned int)sizeof(t) | (1u << 24)};
            struct field_value fv = {.id = 186};
            util(devs[i], u);
            memory(devs[i], &m);
            temp(devs[i], &t);
            fields(devs[i], 1, &fv);
            clock(devs[i], 1, &mhz);
            sink += mhz;
            clock(devs[i], 2, &mhz);
            energy(devs[i], &mj);
            fan(devs[i], &pct);
            sink += u[0] + u[1] + (double)m.used + (double)m.total + t.value + (double)fv.value + mhz +
                    (double)mj + pct;
        }
        clock_gettime(CLOCK_MONOTONIC, &done);
        work[egs_work_bucket((long long)(done.tv_sec - woke.tv_sec) * 1000000000LL + (done.tv_nsec - woke.tv_nsec))]++;
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    double ns = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
    double reads = (double)rounds * n * 10;
    double work_p50 = 0;
    for (long k = 0, seen = 0; k < EGS_WORK_BUCKETS && rounds > 0; k++) {
        seen += work[k];
        if (seen * 2 >= rounds) {
            work_p50 = egs_work_bucket_ns(k);
            break;
        }
    }
    printf("{\"gpus\": %u, \"reads\": %.0f, \"cpu_ns\": %.0f, \"ns_per_read\": %.3f, \"round_work_p50_ns\": %.1f}\n",
           n, reads, ns, reads > 0 ? ns / reads : 0.0, work_p50);
    free(work);
    free(devs);
    return 0;
}
