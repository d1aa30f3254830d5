/*
 * native_run.c - runs the native core with no Python around it and prints what it read, as
 * one JSON object: backends (state, detail, symbols used), devices, per-field statistics in
 * the core's units, and the sampler's own figures. For hosts with a real driver but no
 * project virtualenv (a GPU box reached only for a measurement), next to bare_loop.c.
 *
 * build: cc -O2 -pthread -Inative -o native_run bench/native_run.c native/core.c native/nvml.c \
 *        native/amdsmi.c -ldl -lm
 * usage: native_run NVML_LIBRARY AMDSMI_LIBRARY SECONDS HZ
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "egs_core.h"

static const char *FIELD[EGS_NFIELDS] = {
    "utilization_percent", "memory_busy_percent", "memory_used_bytes", "memory_total_bytes",
    "temperature_celsius", "power_watts", "sm_clock_mhz", "memory_clock_mhz",
    "energy_joules", "fan_percent",
};

static void json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", *s);
        else
            putchar(*s);
    }
    putchar('"');
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s NVML_LIBRARY AMDSMI_LIBRARY SECONDS HZ\n", argv[0]);
        return 2;
    }
    struct egs_config cfg = {argv[1], argv[2], 1, 1, atof(argv[4]), 0, 1};
    struct egs_core *core = NULL;
    if (egs_core_new(&cfg, &core) != EGS_OK || egs_core_start(core) != EGS_OK) {
        fprintf(stderr, "native_run: the core did not start\n");
        return 1;
    }
    double seconds = atof(argv[3]);
    struct timespec pause = {(time_t)seconds, (long)((seconds - floor(seconds)) * 1e9)};
    struct egs_stats discard[256];
    unsigned int n = 0;
    egs_drain(core, discard, 256, &n);
    nanosleep(&pause, NULL);
    egs_core_stop(core);

    unsigned int ndev = 0;
    egs_device_count(core, &ndev);
    struct egs_stats *stats = calloc((size_t)ndev * EGS_NFIELDS + 1, sizeof(*stats));
    egs_drain(core, stats, ndev * EGS_NFIELDS, &n);

    printf("{\"backends\": {");
    for (int b = 0; b < EGS_NBACKENDS; b++) {
        struct egs_backend_info info;
        egs_backend_get(core, b, &info);
        printf("%s\"%s\": {\"state\": %d, \"detail\": ", b ? ", " : "", b ? "amd" : "nvidia", info.state);
        json_string(info.detail);
        printf(", \"driver_version\": ");
        json_string(info.driver_version);
        printf(", \"symbols\": {");
        for (unsigned int i = 0; i < info.nsymbols; i++) {
            struct egs_symbol_info sym;
            if (egs_backend_symbol(core, b, i, &sym) != EGS_OK)
                continue;
            printf("%s", i ? ", " : "");
            json_string(sym.role);
            printf(": ");
            json_string(sym.symbol);
        }
        printf("}}");
    }
    printf("}, \"devices\": [");
    for (unsigned int d = 0; d < ndev; d++) {
        struct egs_device_info info;
        egs_device_get(core, d, &info);
        printf("%s{\"index\": %u, \"name\": ", d ? ", " : "", info.index);
        json_string(info.name);
        printf(", \"uuid\": ");
        json_string(info.uuid);
        printf(", \"pci_bus_id\": ");
        json_string(info.pci_bus_id);
        printf(", \"state\": %d, \"unsupported_mask\": %u, \"fields\": {", info.state, info.unsupported);
        int first = 1;
        for (unsigned int k = 0; k < n; k++) {
            const struct egs_stats *s = &stats[k];
            if (s->device != d || s->count == 0)
                continue;
            printf("%s\"%s\": {\"count\": %llu, \"mean\": %.10g, \"min\": %.10g, \"max\": %.10g, \"last\": %.10g, "
                   "\"errors\": %llu}", first ? "" : ", ", FIELD[s->field], s->count, s->sum / (double)s->count,
                   s->min, s->max, s->last, s->errors);
            first = 0;
        }
        printf("}}");
    }
    struct egs_sampler_stats ss;
    egs_sampler_get(core, &ss);
    printf("], \"sampler\": {\"target_hz\": %g, \"achieved_hz\": %.2f, \"ticks\": %llu, \"late_ticks\": %llu, "
           "\"reads\": %llu, \"tick_late_p99_us\": %.0f, \"thread_cpu_s\": %.6f, \"cpu_ns_per_read\": %.1f}}\n",
           cfg.hz, ss.achieved_hz, ss.ticks, ss.late_ticks, ss.reads, ss.tick_late_p99_us, ss.thread_cpu_s,
           ss.reads ? ss.thread_cpu_s * 1e9 / (double)ss.reads : 0.0);
    free(stats);
    egs_core_free(core);
    return 0;
}
