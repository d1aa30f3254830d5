/*
 * Concurrency stress for the simulated libraries, compiled by test_sanitizers.py together with
 * sim_nvml.c, sim_amdsmi.c, sim_lib.c and scenario.c under ThreadSanitizer or AddressSanitizer.
 *
 * It does what the agent does: sampler threads query every field of every device while
 * another thread waits on NVML events and AMD event notifications, and a third keeps taking
 * and dropping extra init references. Prints "events nvml=N amd=M errors=E" and exits 0
 * when every call returned a code the scenario allows.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef void *dev_t_;

typedef struct {
    dev_t_ device;
    unsigned long long type, data;
    unsigned int gi, ci;
} ev_t;

typedef struct {
    unsigned int field, scope;
    long long ts, lat;
    int type, ret;
    unsigned long long value;
} fv_t;

typedef struct {
    void *handle;
    uint32_t event;
    char message[256];
    uint8_t pad[4];
} __attribute__((packed)) amd_ev_t;

int nvmlInit_v2(void);
int nvmlShutdown(void);
int nvmlDeviceGetCount_v2(unsigned int *);
int nvmlDeviceGetHandleByIndex_v2(unsigned int, dev_t_ *);
int nvmlDeviceGetTemperature(dev_t_, int, unsigned int *);
int nvmlDeviceGetPowerUsage(dev_t_, unsigned int *);
int nvmlDeviceGetTotalEnergyConsumption(dev_t_, unsigned long long *);
int nvmlDeviceGetFieldValues(dev_t_, int, fv_t *);
int nvmlDeviceGetName(dev_t_, char *, unsigned int);
int nvmlEventSetCreate(void **);
int nvmlDeviceRegisterEvents(dev_t_, unsigned long long, void *);
int nvmlEventSetWait_v2(void *, ev_t *, unsigned int);
int nvmlEventSetFree(void *);

uint32_t amdsmi_init(uint64_t);
uint32_t amdsmi_shut_down(void);
uint32_t amdsmi_get_processor_handles(void *, uint32_t *, void **);
uint32_t amdsmi_get_temp_metric(void *, uint32_t, uint32_t, int64_t *);
uint32_t amdsmi_get_energy_count(void *, uint64_t *, float *, uint64_t *);
uint32_t amdsmi_init_gpu_event_notification(void *);
uint32_t amdsmi_set_gpu_event_notification_mask(void *, uint64_t);
uint32_t amdsmi_get_gpu_event_notification(int32_t, uint32_t *, amd_ev_t *);
uint32_t amdsmi_stop_gpu_event_notification(void *);

#define RUN_SECONDS 1.6
static dev_t_ nv[8];
static unsigned int n_nv;
static void *amd[8];
static uint32_t n_amd = 8;
static int errors, nv_events, amd_events;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void bad(const char *what, int rc)
{
    pthread_mutex_lock(&mu);
    if (errors++ < 10)
        fprintf(stderr, "unexpected rc %d from %s\n", rc, what);
    pthread_mutex_unlock(&mu);
}

/* NVML: 0, or 15 (GPU_IS_LOST) / 3 (NOT_SUPPORTED) where the scenario says so. */
static void *sampler(void *arg)
{
    double end = now() + RUN_SECONDS;
    (void)arg;
    while (now() < end) {
        for (unsigned int i = 0; i < n_nv; i++) {
            unsigned int u;
            unsigned long long e;
            char name[96];
            fv_t fv[2] = {{.field = 186}, {.field = 184}}; /* 184: defined, not simulated */
            int rc;
            if ((rc = nvmlDeviceGetTemperature(nv[i], 0, &u)) && rc != 15)
                bad("nvmlDeviceGetTemperature", rc);
            if ((rc = nvmlDeviceGetPowerUsage(nv[i], &u)) && rc != 15)
                bad("nvmlDeviceGetPowerUsage", rc);
            if ((rc = nvmlDeviceGetTotalEnergyConsumption(nv[i], &e)) && rc != 15)
                bad("nvmlDeviceGetTotalEnergyConsumption", rc);
            if ((rc = nvmlDeviceGetName(nv[i], name, sizeof name)) && rc != 15)
                bad("nvmlDeviceGetName", rc);
            rc = nvmlDeviceGetFieldValues(nv[i], 2, fv);
            if (rc && rc != 15)
                bad("nvmlDeviceGetFieldValues", rc);
            if (!rc && (fv[0].ret != 0 || fv[1].ret != 3))
                bad("nvmlDeviceGetFieldValues entry", fv[0].ret * 100 + fv[1].ret);
        }
        for (uint32_t i = 0; i < n_amd; i++) {
            int64_t t;
            uint64_t acc, ts;
            float res;
            uint32_t rc;
            if ((rc = amdsmi_get_temp_metric(amd[i], 0, 0, &t)) && rc != 31)
                bad("amdsmi_get_temp_metric", (int)rc);
            if ((rc = amdsmi_get_energy_count(amd[i], &acc, &res, &ts)) && rc != 31)
                bad("amdsmi_get_energy_count", (int)rc);
        }
    }
    return NULL;
}

static void *listener(void *arg)
{
    void *set;
    double end = now() + RUN_SECONDS;
    (void)arg;
    if (nvmlEventSetCreate(&set))
        bad("nvmlEventSetCreate", -1);
    for (unsigned int i = 0; i < n_nv; i++)
        nvmlDeviceRegisterEvents(nv[i], 0x8, set);
    for (uint32_t i = 0; i < n_amd; i++) {
        amdsmi_init_gpu_event_notification(amd[i]);
        amdsmi_set_gpu_event_notification_mask(amd[i], ~0ull);
    }
    while (now() < end) {
        ev_t ev;
        amd_ev_t aev[4];
        uint32_t n = 4;
        int rc = nvmlEventSetWait_v2(set, &ev, 20);
        if (rc == 0)
            nv_events++;
        else if (rc != 10)
            bad("nvmlEventSetWait_v2", rc);
        uint32_t arc = amdsmi_get_gpu_event_notification(20, &n, aev);
        if (arc == 0)
            amd_events += (int)n;
        else if (arc != 40)
            bad("amdsmi_get_gpu_event_notification", (int)arc);
    }
    for (uint32_t i = 0; i < n_amd; i++)
        amdsmi_stop_gpu_event_notification(amd[i]);
    nvmlEventSetFree(set);
    return NULL;
}

/* Extra init references come and go while the others work; the base reference stays. */
static void *refcounter(void *arg)
{
    double end = now() + RUN_SECONDS;
    (void)arg;
    while (now() < end) {
        if (nvmlInit_v2() || nvmlShutdown())
            bad("nvmlInit_v2/nvmlShutdown", -1);
        if (amdsmi_init(2) || amdsmi_shut_down())
            bad("amdsmi_init/amdsmi_shut_down", -1);
    }
    return NULL;
}

int main(void)
{
    pthread_t t[5];
    if (nvmlInit_v2() || nvmlDeviceGetCount_v2(&n_nv) || n_nv > 8) {
        fprintf(stderr, "nvml init failed\n");
        return 2;
    }
    for (unsigned int i = 0; i < n_nv; i++)
        nvmlDeviceGetHandleByIndex_v2(i, &nv[i]);
    if (amdsmi_init(2) || amdsmi_get_processor_handles(NULL, &n_amd, amd)) {
        fprintf(stderr, "amdsmi init failed\n");
        return 2;
    }
    pthread_create(&t[0], NULL, sampler, NULL);
    pthread_create(&t[1], NULL, sampler, NULL);
    pthread_create(&t[2], NULL, sampler, NULL);
    pthread_create(&t[3], NULL, listener, NULL);
    pthread_create(&t[4], NULL, refcounter, NULL);
    for (int i = 0; i < 5; i++)
        pthread_join(t[i], NULL);
    nvmlShutdown();
    amdsmi_shut_down();
    printf("events nvml=%d amd=%d errors=%d\n", nv_events, amd_events, errors);
    return errors ? 1 : 0;
}
