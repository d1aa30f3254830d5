/*
 * egs-sim-scenario: check scenario files the way the simulated libraries will read them.
 *
 * A scenario with a typo otherwise surfaces only as an init failure inside whatever test or
 * demo loads it. This tool runs the libraries' own parser (scenario.c) on files and reports
 * the first problem as "file:line: what", or with --json prints the scenario as the
 * simulators understood it, defaults filled in (tests compare that with Python's tomllib).
 *
 *   egs-sim-scenario FILE...          exit 0 when all are valid, 1 otherwise
 *   egs-sim-scenario --json FILE      the parsed scenario as JSON on stdout
 */
#include "scenario.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *const wave_names[] = {"constant", "sine", "ramp", "step", "sequence",
                                         "unsupported", "integral"};
static const char *const fault_names[] = {"lost", "unsupported", "xid", "slow"};

static void json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

/* A number, or null for NaN (a figure the scenario leaves out). */
static void json_number(double v)
{
    if (isnan(v))
        printf("null");
    else
        printf("%.17g", v);
}

static void json_wave(const struct sim_wave *w)
{
    static const char *const keys[][3] = {
        [SIM_WAVE_CONSTANT] = {"value", NULL, NULL},
        [SIM_WAVE_SINE] = {"mean", "amplitude", "period"},
        [SIM_WAVE_RAMP] = {"from", "to", "duration"},
        [SIM_WAVE_STEP] = {"before", "after", "at"},
        [SIM_WAVE_SEQUENCE] = {"interval", NULL, NULL},
    };
    printf("{\"wave\": \"%s\"", wave_names[w->kind]);
    if (w->kind <= SIM_WAVE_SEQUENCE)
        for (int i = 0; i < 3 && keys[w->kind][i]; i++)
            printf(", \"%s\": %.17g", keys[w->kind][i], w->p[i]);
    if (w->kind == SIM_WAVE_SEQUENCE) {
        printf(", \"values\": [");
        for (int i = 0; i < w->nvalues; i++)
            printf("%s%.17g", i ? ", " : "", w->values[i]);
        putchar(']');
    }
    putchar('}');
}

static void json_scenario(const struct sim_scenario *s)
{
    printf("{\"init_error\": %d, \"amd_init_error\": ", s->init_error);
    if (s->amd_init_error_set)
        printf("%d", s->amd_init_error);
    else
        printf("null");
    printf(", \"call_latency_us\": %ld, \"driver_version\": ", s->call_latency_us);
    json_string(s->driver_version);
    printf(", \"amd_driver_version\": ");
    json_string(s->amd_driver_version);
    printf(", \"gpus\": [");
    for (int i = 0; i < s->ngpus; i++) {
        const struct sim_gpu *g = &s->gpus[i];
        printf("%s{\"vendor\": \"%s\", \"name\": ", i ? ", " : "",
               g->vendor == SIM_VENDOR_AMD ? "amd" : "nvidia");
        json_string(g->name);
        printf(", \"uuid\": ");
        json_string(g->uuid);
        printf(", \"pci_bus_id\": ");
        json_string(g->pci_bus_id);
        printf(", \"memory_total_mib\": %llu, \"fields\": {", g->memory_total_mib);
        for (int f = 0; f < SIM_F_COUNT; f++) {
            printf("%s\"%s\": ", f ? ", " : "", sim_field_name(f));
            json_wave(&g->fields[f]);
        }
        printf("}, \"faults\": [");
        for (int k = 0; k < g->nfaults; k++) {
            const struct sim_fault *fl = &g->faults[k];
            printf("%s{\"at\": %.17g, \"kind\": \"%s\"", k ? ", " : "", fl->at,
                   fault_names[fl->kind]);
            if (fl->kind == SIM_FAULT_UNSUPPORTED)
                printf(", \"field\": \"%s\"", sim_field_name(fl->field));
            if (fl->kind == SIM_FAULT_XID)
                printf(", \"code\": %llu", fl->code);
            if (fl->kind == SIM_FAULT_SLOW)
                printf(", \"latency_us\": %ld", fl->latency_us);
            putchar('}');
        }
        printf("], \"process_list\": \"%s\", \"process_utilization\": \"%s\", \"compute_partition\": ",
               g->processes_unsupported ? "unsupported" : "supported",
               g->process_util_unsupported ? "unsupported" : "supported");
        json_string(g->compute_partition);
        printf(", \"memory_partition\": ");
        json_string(g->memory_partition);
        printf(", \"gpm\": \"%s\"", g->gpm_unsupported ? "unsupported" : "supported");
        printf(", \"processes\": [");
        int k = 0;
        for (int j = 0; j < s->nprocs; j++) {
            const struct sim_process *pr = &s->procs[j];
            static const char *const kinds[] = {"", "compute", "graphics", "both"};
            if (pr->gpu != g->index)
                continue;
            printf("%s{\"pid\": %u, \"kind\": \"%s\", \"memory_mib\": ", k++ ? ", " : "", pr->pid,
                   kinds[pr->kinds & 3]);
            json_number(pr->memory_mib);
            const double util[] = {pr->sm, pr->mem, pr->enc, pr->dec};
            const char *const names[] = {"sm", "mem", "enc", "dec"};
            for (int u = 0; u < 4; u++) {
                printf(", \"%s\": ", names[u]);
                json_number(util[u]);
            }
            printf(", \"name\": ");
            json_string(pr->name);
            putchar('}');
        }
        printf("], \"mig\": [");
        k = 0;
        for (int j = 0; j < s->nmig; j++) {
            const struct sim_mig *m = &s->migs[j];
            if (m->gpu != g->index)
                continue;
            printf("%s{\"instance\": %u, \"compute_instance\": %u, \"memory_total_mib\": %llu, "
                   "\"memory_used_mib\": %.17g, \"uuid\": ",
                   k++ ? ", " : "", m->instance, m->compute_instance, m->memory_total_mib, m->memory_used_mib);
            json_string(m->uuid);
            for (int q = 0; q < SIM_GPM_COUNT; q++) {
                printf(", \"%s\": ", sim_gpm_name(q));
                json_wave(&m->gpm[q]);
            }
            putchar('}');
        }
        printf("]}");
    }
    printf("]}\n");
}

int main(int argc, char **argv)
{
    static struct sim_scenario scn; /* large: keep it off the stack */
    char err[SIM_ERR_LEN];
    int json = 0, first = 1, bad = 0;

    if (argc > 1 && strcmp(argv[1], "--json") == 0) {
        json = 1;
        first = 2;
    }
    if (first >= argc || (json && argc != 3)) {
        fprintf(stderr, "usage: %s FILE...\n       %s --json FILE\n", argv[0], argv[0]);
        return 2;
    }
    for (int i = first; i < argc; i++) {
        if (sim_scenario_load(argv[i], &scn, err, sizeof err) != 0) {
            fprintf(stderr, "%s\n", err);
            bad = 1;
            continue;
        }
        if (json) {
            json_scenario(&scn);
        } else {
            int nv = 0;
            for (int g = 0; g < scn.ngpus; g++)
                nv += scn.gpus[g].vendor == SIM_VENDOR_NVIDIA;
            printf("%s: ok (%d NVIDIA, %d AMD GPU%s)\n", argv[i], nv, scn.ngpus - nv,
                   scn.ngpus - nv == 1 ? "" : "s");
        }
    }
    return bad;
}
