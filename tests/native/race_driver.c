/*
 * race_driver.c - drives the core from three caller threads (drain, ring, events, stats,
 * descriptions) while its sampler and event threads run and the main thread restarts it
 * twenty times. test_thread_safety.py builds it with -fsanitize=thread together with the
 * core's sources and fails on any report.
 *
 * usage: race_driver NVML_LIBRARY AMDSMI_LIBRARY
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

#include "egs_core.h"

static struct egs_core *core;
static atomic_int done;

static void *poker(void *arg)
{
    static __thread double ts[500], values[500 * EGS_NFIELDS];
    struct egs_stats stats[64];
    struct egs_event events[16];
    struct egs_sampler_stats s;
    struct egs_device_info d;
    struct egs_backend_info b;
    struct egs_symbol_info sym;
    unsigned int n;
    (void)arg;
    while (!atomic_load(&done)) {
        egs_drain(core, stats, 64, &n);
        egs_ring_read(core, 0, 0.0, ts, values, 500, &n);
        egs_events_read(core, events, 16, &n);
        egs_sampler_get(core, &s);
        egs_device_get(core, 0, &d);
        egs_backend_get(core, EGS_BACKEND_NVIDIA, &b);
        egs_backend_symbol(core, EGS_BACKEND_NVIDIA, 3, &sym);
        usleep(1000);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s NVML_LIBRARY AMDSMI_LIBRARY\n", argv[0]);
        return 2;
    }
    struct egs_config cfg = {argv[1], argv[2], 1, 1, 1000.0, 500, 1};
    pthread_t t[3];
    if (egs_core_new(&cfg, &core) != EGS_OK || egs_core_start(core) != EGS_OK)
        return 1;
    for (int i = 0; i < 3; i++)
        pthread_create(&t[i], NULL, poker, NULL);
    for (int k = 0; k < 20; k++) {
        usleep(50000);
        egs_core_stop(core);
        if (egs_core_start(core) != EGS_OK)
            return 1;
    }
    usleep(500000);
    atomic_store(&done, 1);
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    struct egs_sampler_stats s;
    egs_sampler_get(core, &s);
    printf("ticks %llu\n", s.ticks);
    egs_core_free(core);
    return 0;
}
