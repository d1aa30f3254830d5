/*
 * Scenario file parser and waveform evaluation for the simulated vendor libraries.
 *
 * The parser accepts a small, documented subset of TOML (README.md, "Scenario format"): the four
 * table headers the format uses, `key = value` lines, numbers, basic strings, one-line arrays of
 * numbers and one-line inline tables. Anything else is rejected with "file:line: what" rather
 * than guessed at, because a scenario that silently means something else makes a test pass
 * for the wrong reason. No heap is used: the result is a fixed-size struct.
 */
#define _POSIX_C_SOURCE 200809L
#include "scenario.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_FILE_BYTES (1 << 20)
#define MAX_LINE 4096
#define MAX_STR 255
#define MAX_ITEMS 12   /* keys in one inline table */
#define SIM_PI 3.14159265358979323846

static const char *const field_names[SIM_F_COUNT] = {
    "temperature", "power", "utilization", "memory_busy", "memory_used_mib",
    "sm_clock", "memory_clock", "fan", "energy",
    "clock_reasons", "ecc_corrected", "ecc_uncorrected", "retired_sbe", "retired_dbe", "retired_pending",
    "remapped_correctable", "remapped_uncorrectable", "remap_pending", "remap_failure", "power_limit",
    "pcie_tx_kbps", "pcie_rx_kbps", "pcie_replays", "nvlink_tx_kibps", "nvlink_rx_kibps",
    "bad_pages", "indep_throttle_status", "bad_page_threshold",
};

static const char *const gpm_names[SIM_GPM_COUNT] = {"graphics_util", "sm_util", "sm_occupancy", "dram_bw_util"};

const char *sim_gpm_name(int k)
{
    return (k >= 0 && k < SIM_GPM_COUNT) ? gpm_names[k] : NULL;
}

const char *sim_field_name(int field)
{
    return (field >= 0 && field < SIM_F_COUNT) ? field_names[field] : NULL;
}

static int field_by_name(const char *name)
{
    for (int i = 0; i < SIM_F_COUNT; i++)
        if (strcmp(field_names[i], name) == 0)
            return i;
    return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* Values                                                                                     */

enum vtype { V_NUM, V_STR, V_ARRAY, V_TABLE };

struct value;

struct item {
    char key[64];
    struct value *val;
};

struct value {
    int type;
    double num;
    char str[MAX_STR + 1];
    int nnums;
    double nums[SIM_MAX_SEQ];
    int nitems;
    struct item items[MAX_ITEMS];
};

/* Inline table members live in a small pool so `struct value` stays non-recursive in size. */
struct parser {
    const char *path;
    int line;
    char *err;
    size_t errlen;
    struct value pool[MAX_ITEMS];
    int npool;
};

static int fail(struct parser *p, const char *fmt, ...)
{
    int n = snprintf(p->err, p->errlen, "%s:%d: ", p->path, p->line);
    if (n < 0 || (size_t)n >= p->errlen)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

static const char *skip_ws(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

static int is_key_char(char c)
{
    return isalnum((unsigned char)c) || c == '_' || c == '-';
}

static const char *parse_key(struct parser *p, const char *s, char *key, size_t keylen)
{
    size_t n = 0;
    if (*s == '"' || *s == '\'') {
        fail(p, "quoted keys are not supported; write the key bare");
        return NULL;
    }
    while (is_key_char(s[n]))
        n++;
    if (n == 0) {
        fail(p, "expected a key, found '%.20s'", s);
        return NULL;
    }
    if (s[n] == '.') {
        fail(p, "dotted keys are not supported; use a [table] or an inline table");
        return NULL;
    }
    if (n >= keylen) {
        fail(p, "key too long");
        return NULL;
    }
    memcpy(key, s, n);
    key[n] = '\0';
    return s + n;
}

static const char *digits(const char *s)
{
    const char *start = s;
    while (isdigit((unsigned char)*s))
        s++;
    return s > start ? s : NULL;
}

/*
 * TOML's decimal integer and float forms (without underscores, inf and nan), so whatever this
 * parser accepts other TOML readers accept too: [+-] (0 | [1-9][0-9]*) [. [0-9]+] [eE [+-] [0-9]+].
 */
static int toml_decimal(const char *s)
{
    if (*s == '+' || *s == '-')
        s++;
    if (*s == '0' && isdigit((unsigned char)s[1]))
        return 0;
    if (!(s = digits(s)))
        return 0;
    if (*s == '.' && !(s = digits(s + 1)))
        return 0;
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '+' || *s == '-')
            s++;
        if (!(s = digits(s)))
            return 0;
    }
    return *s == '\0';
}

static const char *parse_number(struct parser *p, const char *s, double *out)
{
    char buf[64];
    size_t n = 0;
    while (s[n] && (isdigit((unsigned char)s[n]) || strchr("+-.eE", s[n])))
        n++;
    if (n == 0) {
        if (strncmp(s, "true", 4) == 0 || strncmp(s, "false", 5) == 0)
            fail(p, "booleans are not used by any key of the scenario format");
        else if (s[0] == '\'')
            fail(p, "literal 'strings' are not supported; use \"double quotes\"");
        else
            fail(p, "expected a value (number, \"string\", [numbers] or { table }), found '%.20s'", s);
        return NULL;
    }
    if (s[n] == '_' || isalpha((unsigned char)s[n])) {
        fail(p, "malformed number '%.20s' (underscores, hex, inf and nan are not supported)", s);
        return NULL;
    }
    if (n >= sizeof buf) {
        fail(p, "number too long");
        return NULL;
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
    if (!toml_decimal(buf)) {
        fail(p, "malformed number '%s' (TOML decimal: [+-]digits[.digits][e[+-]digits], "
                "no leading zeros)", buf);
        return NULL;
    }
    char *end = NULL;
    errno = 0;
    double v = strtod(buf, &end);
    if (end != buf + n || errno == ERANGE || !isfinite(v)) {
        fail(p, "malformed number '%s'", buf);
        return NULL;
    }
    *out = v;
    return s + n;
}

static const char *parse_string(struct parser *p, const char *s, char *out)
{
    size_t n = 0;
    s++; /* opening quote */
    for (;;) {
        char c = *s;
        if (c == '\0') {
            fail(p, "unterminated string (strings must end on the same line)");
            return NULL;
        }
        if (c == '"')
            break;
        if (c == '\\') {
            s++;
            switch (*s) {
            case '"': c = '"'; break;
            case '\\': c = '\\'; break;
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            default:
                fail(p, "unsupported escape '\\%c' in string", *s ? *s : ' ');
                return NULL;
            }
        }
        if (n >= MAX_STR) {
            fail(p, "string longer than %d bytes", MAX_STR);
            return NULL;
        }
        out[n++] = c;
        s++;
    }
    out[n] = '\0';
    return s + 1;
}

static const char *parse_value(struct parser *p, const char *s, struct value *v, int allow_table);

static const char *parse_array(struct parser *p, const char *s, struct value *v)
{
    v->type = V_ARRAY;
    v->nnums = 0;
    s = skip_ws(s + 1);
    if (*s == ']')
        return s + 1;
    for (;;) {
        if (v->nnums >= SIM_MAX_SEQ) {
            fail(p, "array longer than %d values", SIM_MAX_SEQ);
            return NULL;
        }
        s = parse_number(p, skip_ws(s), &v->nums[v->nnums]);
        if (!s)
            return NULL;
        v->nnums++;
        s = skip_ws(s);
        if (*s == ',') {
            s = skip_ws(s + 1);
            if (*s == ']') /* trailing comma, as TOML allows */
                return s + 1;
            continue;
        }
        if (*s == ']')
            return s + 1;
        fail(p, "expected ',' or ']' in array (arrays hold numbers and end on the same line)");
        return NULL;
    }
}

static const char *parse_table(struct parser *p, const char *s, struct value *v)
{
    v->type = V_TABLE;
    v->nitems = 0;
    s = skip_ws(s + 1);
    if (*s == '}')
        return s + 1;
    for (;;) {
        if (v->nitems >= MAX_ITEMS || p->npool >= MAX_ITEMS) {
            fail(p, "inline table with more than %d keys", MAX_ITEMS);
            return NULL;
        }
        struct item *it = &v->items[v->nitems];
        s = parse_key(p, skip_ws(s), it->key, sizeof it->key);
        if (!s)
            return NULL;
        for (int i = 0; i < v->nitems; i++)
            if (strcmp(v->items[i].key, it->key) == 0) {
                fail(p, "duplicate key '%s' in inline table", it->key);
                return NULL;
            }
        s = skip_ws(s);
        if (*s != '=') {
            fail(p, "expected '=' after '%s'", it->key);
            return NULL;
        }
        it->val = &p->pool[p->npool++];
        s = parse_value(p, skip_ws(s + 1), it->val, 0);
        if (!s)
            return NULL;
        v->nitems++;
        s = skip_ws(s);
        if (*s == ',') {
            s++;
            continue;
        }
        if (*s == '}')
            return s + 1;
        fail(p, "expected ',' or '}' in inline table (inline tables end on the same line)");
        return NULL;
    }
}

static const char *parse_value(struct parser *p, const char *s, struct value *v, int allow_table)
{
    memset(v, 0, offsetof(struct value, nums));
    if (*s == '"') {
        v->type = V_STR;
        return parse_string(p, s, v->str);
    }
    if (*s == '[') {
        if (s[1] == '[') {
            fail(p, "nested arrays are not supported");
            return NULL;
        }
        return parse_array(p, s, v);
    }
    if (*s == '{') {
        if (!allow_table) {
            fail(p, "nested inline tables are not supported");
            return NULL;
        }
        return parse_table(p, s, v);
    }
    v->type = V_NUM;
    return parse_number(p, s, &v->num);
}

/* ------------------------------------------------------------------------------------------ */
/* Interpreting values                                                                        */

static const char *type_name(int t)
{
    switch (t) {
    case V_NUM: return "a number";
    case V_STR: return "a string";
    case V_ARRAY: return "an array";
    default: return "an inline table";
    }
}

static int want_num(struct parser *p, const char *key, const struct value *v, double *out)
{
    if (v->type != V_NUM)
        return fail(p, "'%s' must be a number, got %s", key, type_name(v->type));
    *out = v->num;
    return 0;
}

static int want_int(struct parser *p, const char *key, const struct value *v, double lo, double hi,
                    long long *out)
{
    double d = 0;
    if (want_num(p, key, v, &d))
        return -1;
    if (d != floor(d) || d < lo || d > hi)
        return fail(p, "'%s' must be an integer in [%.0f, %.0f], got %g", key, lo, hi, d);
    *out = (long long)d;
    return 0;
}

static int want_str(struct parser *p, const char *key, const struct value *v, char *out, size_t len)
{
    if (v->type != V_STR)
        return fail(p, "'%s' must be a \"string\", got %s", key, type_name(v->type));
    if (strlen(v->str) >= len)
        return fail(p, "'%s' is longer than %zu bytes", key, len - 1);
    strcpy(out, v->str);
    return 0;
}

static const struct value *table_get(const struct value *t, const char *key)
{
    for (int i = 0; i < t->nitems; i++)
        if (strcmp(t->items[i].key, key) == 0)
            return t->items[i].val;
    return NULL;
}

/* Every key of inline table `t` must be in the NULL-terminated `allowed`. */
static int table_only(struct parser *p, const char *what, const struct value *t,
                      const char *const *allowed)
{
    for (int i = 0; i < t->nitems; i++) {
        int ok = 0;
        for (const char *const *a = allowed; *a; a++)
            if (strcmp(*a, t->items[i].key) == 0)
                ok = 1;
        if (!ok)
            return fail(p, "unknown key '%s' in %s", t->items[i].key, what);
    }
    return 0;
}

static int table_num(struct parser *p, const char *field, const struct value *t, const char *key,
                     double *out)
{
    const struct value *v = table_get(t, key);
    if (!v)
        return fail(p, "field '%s': this wave needs '%s'", field, key);
    if (v->type != V_NUM)
        return fail(p, "field '%s': '%s' must be a number, got %s", field, key, type_name(v->type));
    *out = v->num;
    return 0;
}

static int parse_wave(struct parser *p, const char *field, const struct value *v, struct sim_wave *w)
{
    memset(w, 0, sizeof *w);
    if (v->type == V_NUM) {
        w->kind = SIM_WAVE_CONSTANT;
        w->p[0] = v->num;
        return 0;
    }
    if (v->type == V_STR) {
        if (strcmp(v->str, "unsupported") == 0) {
            w->kind = SIM_WAVE_UNSUPPORTED;
            return 0;
        }
        return fail(p, "field '%s': the only string value is \"unsupported\", got \"%s\"",
                    field, v->str);
    }
    if (v->type != V_TABLE)
        return fail(p, "field '%s' must be a number, \"unsupported\" or a { wave = ... } table",
                    field);
    const struct value *kind = table_get(v, "wave");
    if (!kind || kind->type != V_STR)
        return fail(p, "field '%s': a wave table needs wave = \"sine\"|\"ramp\"|\"step\"|\"sequence\"",
                    field);
    char what[MAX_STR + 96];
    snprintf(what, sizeof what, "the %s wave of '%s'", kind->str, field);
    if (strcmp(kind->str, "sine") == 0) {
        static const char *const keys[] = {"wave", "mean", "amplitude", "period", NULL};
        w->kind = SIM_WAVE_SINE;
        if (table_only(p, what, v, keys) || table_num(p, field, v, "mean", &w->p[0]) ||
            table_num(p, field, v, "amplitude", &w->p[1]) ||
            table_num(p, field, v, "period", &w->p[2]))
            return -1;
        if (w->p[2] <= 0)
            return fail(p, "field '%s': period must be > 0", field);
    } else if (strcmp(kind->str, "ramp") == 0) {
        static const char *const keys[] = {"wave", "from", "to", "duration", NULL};
        w->kind = SIM_WAVE_RAMP;
        if (table_only(p, what, v, keys) || table_num(p, field, v, "from", &w->p[0]) ||
            table_num(p, field, v, "to", &w->p[1]) ||
            table_num(p, field, v, "duration", &w->p[2]))
            return -1;
        if (w->p[2] <= 0)
            return fail(p, "field '%s': duration must be > 0", field);
    } else if (strcmp(kind->str, "step") == 0) {
        static const char *const keys[] = {"wave", "before", "after", "at", NULL};
        w->kind = SIM_WAVE_STEP;
        if (table_only(p, what, v, keys) || table_num(p, field, v, "before", &w->p[0]) ||
            table_num(p, field, v, "after", &w->p[1]) || table_num(p, field, v, "at", &w->p[2]))
            return -1;
        if (w->p[2] < 0)
            return fail(p, "field '%s': at must be >= 0", field);
    } else if (strcmp(kind->str, "sequence") == 0) {
        static const char *const keys[] = {"wave", "values", "interval", NULL};
        w->kind = SIM_WAVE_SEQUENCE;
        if (table_only(p, what, v, keys) || table_num(p, field, v, "interval", &w->p[0]))
            return -1;
        if (w->p[0] <= 0)
            return fail(p, "field '%s': interval must be > 0", field);
        const struct value *vals = table_get(v, "values");
        if (!vals || vals->type != V_ARRAY || vals->nnums == 0)
            return fail(p, "field '%s': a sequence needs values = [n, ...] with at least one number",
                        field);
        w->nvalues = vals->nnums;
        memcpy(w->values, vals->nums, sizeof(double) * (size_t)vals->nnums);
    } else {
        return fail(p, "field '%s': unknown wave \"%s\" (sine, ramp, step or sequence)", field,
                    kind->str);
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Sections                                                                                   */

enum section { SEC_NONE, SEC_SIM, SEC_GPU, SEC_FIELDS, SEC_FAULT, SEC_PROCESS, SEC_MIG };

struct state {
    int section;
    unsigned seen;          /* keys already set in the current table, as a bitmask */
    int saw_sim;
    int gpu_has_fields;
    int fault_has_kind;
    struct sim_gpu *gpu;
    struct sim_fault *fault;
    unsigned fault_seen;
    struct sim_process *proc;
    unsigned proc_seen;
    struct sim_mig *mig;
    unsigned mig_seen;
};

static int key_index(const char *const *keys, const char *key)
{
    for (int i = 0; keys[i]; i++)
        if (strcmp(keys[i], key) == 0)
            return i;
    return -1;
}

static int mark_seen(struct parser *p, unsigned *seen, int idx, const char *key)
{
    if (*seen & (1u << idx))
        return fail(p, "duplicate key '%s'", key);
    *seen |= 1u << idx;
    return 0;
}

static void gpu_defaults(struct sim_gpu *g, int index)
{
    static const double defaults[SIM_F_COUNT] = {45, 60, 0, 0, 0, 1000, 800, 30, 0};
    memset(g, 0, sizeof *g);
    g->index = index;
    g->vendor = SIM_VENDOR_NVIDIA;
    g->memory_total_mib = 16384;
    for (int f = 0; f < SIM_F_COUNT; f++) {
        g->fields[f].kind = SIM_WAVE_CONSTANT;
        g->fields[f].p[0] = defaults[f];
    }
    g->fields[SIM_F_ENERGY].kind = SIM_WAVE_INTEGRAL;
    for (int f = SIM_F_CLOCK_REASONS; f < SIM_F_COUNT; f++)
        g->fields[f].kind = SIM_WAVE_UNSUPPORTED;
}

static int parse_bus_id(const char *s, struct sim_gpu *g)
{
    unsigned dom, bus, dev, fn;
    char tail;
    if (sscanf(s, "%x:%x:%x.%x%c", &dom, &bus, &dev, &fn, &tail) != 4)
        return -1;
    if (bus > 0xff || dev > 0x1f || fn > 7)
        return -1;
    g->pci_domain = dom;
    g->pci_bus = bus;
    g->pci_device = dev;
    g->pci_function = fn;
    /* NVML's canonical form: 8-digit domain, upper-case hex. */
    snprintf(g->pci_bus_id, sizeof g->pci_bus_id, "%08X:%02X:%02X.%X", dom, bus, dev, fn);
    return 0;
}

static int sim_key(struct parser *p, struct sim_scenario *s, struct state *st, const char *key,
                   const struct value *v)
{
    static const char *const keys[] = {"init_error", "call_latency_us", "driver_version",
                                       "amd_init_error", "amd_driver_version", NULL};
    int idx = key_index(keys, key);
    long long n;
    if (idx < 0)
        return fail(p, "unknown key '%s' in [sim] (init_error, amd_init_error, call_latency_us, "
                       "driver_version, amd_driver_version)", key);
    if (mark_seen(p, &st->seen, idx, key))
        return -1;
    switch (idx) {
    case 0:
        if (want_int(p, key, v, 0, 1e6, &n))
            return -1;
        s->init_error = (int)n;
        return 0;
    case 1:
        if (want_int(p, key, v, 0, 10e6, &n))
            return -1;
        s->call_latency_us = (long)n;
        return 0;
    case 2:
        return want_str(p, key, v, s->driver_version, sizeof s->driver_version);
    case 4:
        return want_str(p, key, v, s->amd_driver_version, sizeof s->amd_driver_version);
    default:
        if (want_int(p, key, v, 0, 1e6, &n))
            return -1;
        s->amd_init_error = (int)n;
        s->amd_init_error_set = 1;
        return 0;
    }
}

/* An AMD partition mode: one of `modes` (each at most 4 characters), copied into `out`
 * (a sim_gpu partition field). */
static int partition_mode(struct parser *p, const char *key, const struct value *v, const char *const *modes,
                          const char *which, char out[8])
{
    char buf[SIM_NAME_LEN];
    int n;
    if (want_str(p, key, v, buf, sizeof buf))
        return -1;
    if ((n = key_index(modes, buf)) < 0)
        return fail(p, "%s must be %s, got \"%s\"", key, which, buf);
    memcpy(out, modes[n], strlen(modes[n]) + 1);
    return 0;
}

static int gpu_key(struct parser *p, struct state *st, const char *key, const struct value *v)
{
    static const char *const keys[] = {"vendor", "name", "uuid", "pci_bus_id", "memory_total_mib",
                                       "process_list", "process_utilization", "compute_partition",
                                       "memory_partition", "gpm", NULL};
    static const char *const compute_modes[] = {"SPX", "DPX", "TPX", "QPX", "CPX", NULL};
    static const char *const memory_modes[] = {"NPS1", "NPS2", "NPS4", "NPS8", NULL};
    struct sim_gpu *g = st->gpu;
    char buf[SIM_NAME_LEN];
    long long n;
    int idx = key_index(keys, key);
    if (idx < 0)
        return fail(p, "unknown key '%s' in [[gpu]] (vendor, name, uuid, pci_bus_id, "
                       "memory_total_mib, process_list, process_utilization, compute_partition, "
                       "memory_partition, gpm; fields go under [gpu.fields])",
                    key);
    if (mark_seen(p, &st->seen, idx, key))
        return -1;
    switch (idx) {
    case 0:
        if (want_str(p, key, v, buf, sizeof buf))
            return -1;
        if (strcmp(buf, "nvidia") == 0)
            g->vendor = SIM_VENDOR_NVIDIA;
        else if (strcmp(buf, "amd") == 0)
            g->vendor = SIM_VENDOR_AMD;
        else
            return fail(p, "vendor must be \"nvidia\" or \"amd\", got \"%s\"", buf);
        return 0;
    case 1:
        return want_str(p, key, v, g->name, sizeof g->name);
    case 2:
        return want_str(p, key, v, g->uuid, sizeof g->uuid);
    case 3:
        if (want_str(p, key, v, buf, sizeof buf))
            return -1;
        if (parse_bus_id(buf, g))
            return fail(p, "pci_bus_id must look like \"00000000:00:08.0\" (domain:bus:device.function"
                           " in hex), got \"%s\"", buf);
        return 0;
    case 4:
        if (want_int(p, key, v, 1, 16 * 1024 * 1024, &n))
            return -1;
        g->memory_total_mib = (unsigned long long)n;
        return 0;
    case 7:
        return partition_mode(p, key, v, compute_modes, "SPX, DPX, TPX, QPX or CPX", g->compute_partition);
    case 8:
        return partition_mode(p, key, v, memory_modes, "NPS1, NPS2, NPS4 or NPS8", g->memory_partition);
    default:
        /* Only "unsupported" can be said: by default both are supported. */
        if (want_str(p, key, v, buf, sizeof buf))
            return -1;
        if (strcmp(buf, "unsupported") != 0)
            return fail(p, "%s can only be \"unsupported\", got \"%s\"", key, buf);
        if (idx == 5)
            g->processes_unsupported = 1;
        else if (idx == 6)
            g->process_util_unsupported = 1;
        else
            g->gpm_unsupported = 1;
        return 0;
    }
}

static int process_key(struct parser *p, struct state *st, const char *key, const struct value *v)
{
    static const char *const keys[] = {"pid", "kind", "memory_mib", "sm", "mem", "enc", "dec", "name",
                                       NULL};
    struct sim_process *pr = st->proc;
    char buf[64];
    long long n;
    int idx = key_index(keys, key);
    if (idx < 0)
        return fail(p, "unknown key '%s' in [[gpu.processes]] (pid, kind, memory_mib, sm, mem, enc, "
                       "dec, name)", key);
    if (mark_seen(p, &st->seen, idx, key))
        return -1;
    switch (idx) {
    case 0:
        if (want_int(p, key, v, 1, 4194304, &n))
            return -1;
        pr->pid = (unsigned int)n;
        return 0;
    case 1:
        if (want_str(p, key, v, buf, sizeof buf))
            return -1;
        if (strcmp(buf, "compute") == 0)
            pr->kinds = SIM_PROC_COMPUTE;
        else if (strcmp(buf, "graphics") == 0)
            pr->kinds = SIM_PROC_GRAPHICS;
        else if (strcmp(buf, "both") == 0)
            pr->kinds = SIM_PROC_COMPUTE | SIM_PROC_GRAPHICS;
        else
            return fail(p, "process kind must be \"compute\", \"graphics\" or \"both\", got \"%s\"", buf);
        return 0;
    case 2:
        if (v->type == V_STR && strcmp(v->str, "unknown") == 0) {
            pr->memory_mib = NAN;
            return 0;
        }
        if (want_num(p, key, v, &pr->memory_mib))
            return -1;
        if (pr->memory_mib < 0)
            return fail(p, "memory_mib must be >= 0 (or \"unknown\")");
        return 0;
    case 7:
        return want_str(p, key, v, pr->name, sizeof pr->name);
    default: {
        double *slot[] = {&pr->sm, &pr->mem, &pr->enc, &pr->dec};
        if (want_num(p, key, v, slot[idx - 3]))
            return -1;
        if (*slot[idx - 3] < 0 || *slot[idx - 3] > 100)
            return fail(p, "%s must be a percentage (0..100)", key);
        return 0;
    }
    }
}

static int fields_key(struct parser *p, struct state *st, const char *key, const struct value *v)
{
    int f = field_by_name(key);
    if (f < 0)
        return fail(p, "unknown field '%s' in [gpu.fields] (temperature, power, utilization, "
                       "memory_busy, memory_used_mib, sm_clock, memory_clock, fan, energy, clock_reasons, "
                       "ecc_corrected, ecc_uncorrected, retired_sbe, retired_dbe, retired_pending, "
                       "remapped_correctable, remapped_uncorrectable, remap_pending, remap_failure, "
                       "power_limit, pcie_tx_kbps, pcie_rx_kbps, pcie_replays, nvlink_tx_kibps, nvlink_rx_kibps, bad_pages, "
                       "indep_throttle_status, bad_page_threshold)", key);
    if (mark_seen(p, &st->seen, f, key))
        return -1;
    return parse_wave(p, key, v, &st->gpu->fields[f]);
}

static int fault_key(struct parser *p, struct state *st, const char *key, const struct value *v)
{
    static const char *const keys[] = {"at", "kind", "field", "code", "latency_us", NULL};
    struct sim_fault *fl = st->fault;
    char buf[64];
    long long n;
    int idx = key_index(keys, key);
    if (idx < 0)
        return fail(p, "unknown key '%s' in [[gpu.faults]] (at, kind, field, code, latency_us)", key);
    if (mark_seen(p, &st->seen, idx, key))
        return -1;
    switch (idx) {
    case 0:
        if (want_num(p, key, v, &fl->at))
            return -1;
        if (fl->at < 0)
            return fail(p, "'at' must be >= 0 seconds");
        return 0;
    case 1:
        if (want_str(p, key, v, buf, sizeof buf))
            return -1;
        if (strcmp(buf, "lost") == 0)
            fl->kind = SIM_FAULT_LOST;
        else if (strcmp(buf, "unsupported") == 0)
            fl->kind = SIM_FAULT_UNSUPPORTED;
        else if (strcmp(buf, "xid") == 0)
            fl->kind = SIM_FAULT_XID;
        else if (strcmp(buf, "slow") == 0)
            fl->kind = SIM_FAULT_SLOW;
        else
            return fail(p, "fault kind must be \"lost\", \"unsupported\", \"xid\" or \"slow\", got \"%s\"",
                        buf);
        return 0;
    case 2:
        if (want_str(p, key, v, buf, sizeof buf))
            return -1;
        fl->field = field_by_name(buf);
        if (fl->field < 0)
            return fail(p, "unknown field \"%s\" in fault", buf);
        return 0;
    case 3:
        if (want_int(p, key, v, 0, 4294967295.0, &n))
            return -1;
        fl->code = (unsigned long long)n;
        return 0;
    default:
        if (want_int(p, key, v, 0, 10e6, &n))
            return -1;
        fl->latency_us = (long)n;
        return 0;
    }
}

/* A finished [[gpu.faults]] table must carry what its kind needs. */
static int check_fault(struct parser *p, struct state *st)
{
    unsigned seen = st->fault_seen;
    const struct sim_fault *fl = st->fault;
    if (!fl)
        return 0;
    if (!(seen & (1u << 0)))
        return fail(p, "the [[gpu.faults]] table above has no 'at'");
    if (!(seen & (1u << 1)))
        return fail(p, "the [[gpu.faults]] table above has no 'kind'");
    if (fl->kind == SIM_FAULT_UNSUPPORTED && !(seen & (1u << 2)))
        return fail(p, "the \"unsupported\" fault above needs field = \"...\"");
    if (fl->kind == SIM_FAULT_XID && !(seen & (1u << 3)))
        return fail(p, "the \"xid\" fault above needs code = N");
    /* AMD SMI has no XIDs: on an AMD GPU the code is the event notification type. */
    if (fl->kind == SIM_FAULT_XID && st->gpu->vendor == SIM_VENDOR_AMD &&
        (fl->code < 1 || fl->code > 13))
        return fail(p, "on an AMD GPU an \"xid\" fault's code is an AMD SMI event type, 1 (VMFAULT)"
                       " to 13 (PROCESS_END); got %llu", fl->code);
    if (fl->kind == SIM_FAULT_SLOW && !(seen & (1u << 4)))
        return fail(p, "the \"slow\" fault above needs latency_us = N");
    return 0;
}

static int mig_key(struct parser *p, struct state *st, const char *key, const struct value *v)
{
    static const char *const keys[] = {"instance", "memory_total_mib", "memory_used_mib", "uuid",
                                       "compute_instance", NULL};
    struct sim_mig *m = st->mig;
    long long n;
    int idx = key_index(keys, key);
    for (int k = 0; idx < 0 && k < SIM_GPM_COUNT; k++)
        if (strcmp(key, gpm_names[k]) == 0) {
            if (mark_seen(p, &st->seen, 5 + k, key))
                return -1;
            return parse_wave(p, key, v, &m->gpm[k]);
        }
    if (idx < 0)
        return fail(p, "unknown key '%s' in [[gpu.mig]] (instance, memory_total_mib, memory_used_mib, uuid, "
                    "compute_instance, graphics_util, sm_util, sm_occupancy, dram_bw_util)", key);
    if (mark_seen(p, &st->seen, idx, key))
        return -1;
    switch (idx) {
    case 0:
        if (want_int(p, key, v, 0, 14, &n))
            return -1;
        m->instance = (unsigned int)n;
        return 0;
    case 1:
        if (want_int(p, key, v, 1, 16 * 1024 * 1024, &n))
            return -1;
        m->memory_total_mib = (unsigned long long)n;
        return 0;
    case 2:
        if (want_num(p, key, v, &m->memory_used_mib))
            return -1;
        if (m->memory_used_mib < 0)
            return fail(p, "memory_used_mib must be >= 0");
        return 0;
    case 4:
        if (want_int(p, key, v, 0, 7, &n))
            return -1;
        m->compute_instance = (unsigned int)n;
        return 0;
    default:
        return want_str(p, key, v, m->uuid, sizeof m->uuid);
    }
}

/* A finished [[gpu.mig]] table must say which instance and how large; GPM figures belong to
 * the GPU instance, so only its first table may give them. */
static int check_mig(struct parser *p, const struct sim_scenario *s, struct state *st)
{
    if (st->mig && (st->mig_seen & 3u) != 3u)
        return fail(p, "the [[gpu.mig]] table above needs instance and memory_total_mib");
    if (st->mig && (st->mig_seen & (((1u << SIM_GPM_COUNT) - 1) << 5)))
        for (const struct sim_mig *o = s->migs; o < st->mig; o++)
            if (o->gpu == st->mig->gpu && o->instance == st->mig->instance)
                return fail(p, "the [[gpu.mig]] table above gives GPM figures for GPU instance %u, whose "
                               "first table is earlier: give them there (they are the GPU instance's)",
                            st->mig->instance);
    return 0;
}

/* A finished [[gpu.processes]] table must name its process. */
static int check_process(struct parser *p, struct state *st)
{
    if (st->proc && !(st->proc_seen & 1u))
        return fail(p, "the [[gpu.processes]] table above has no 'pid'");
    return 0;
}

static int finish_gpu(struct sim_gpu *g)
{
    if (!g)
        return 0;
    if (g->name[0] == '\0')
        snprintf(g->name, sizeof g->name, "%s",
                 g->vendor == SIM_VENDOR_NVIDIA ? "Tesla P100-PCIE-16GB" : "AMD FirePro S7150");
    if (g->uuid[0] == '\0') {
        if (g->vendor == SIM_VENDOR_NVIDIA)
            snprintf(g->uuid, sizeof g->uuid, "GPU-5e0c0000-0000-4000-8000-%012x", g->index);
        else
            snprintf(g->uuid, sizeof g->uuid, "a1000000-0000-4000-8000-%012x", g->index);
    }
    if (g->pci_bus_id[0] == '\0') {
        char buf[SIM_BUSID_LEN];
        snprintf(buf, sizeof buf, "00000000:%02X:00.0", (unsigned)(0x10 + g->index) & 0xff);
        parse_bus_id(buf, g);
    }
    return 0;
}

static int handle_header(struct parser *p, struct sim_scenario *s, struct state *st, char *line)
{
    int array = line[1] == '[';
    size_t len = strlen(line);
    char *name = line + (array ? 2 : 1);
    if (array ? (len < 4 || strcmp(line + len - 2, "]]") != 0) : line[len - 1] != ']')
        return fail(p, "malformed table header '%s'", line);
    line[len - (array ? 2 : 1)] = '\0';
    name = (char *)skip_ws(name);
    for (char *e = name + strlen(name); e > name && (e[-1] == ' ' || e[-1] == '\t');)
        *--e = '\0';

    if (check_fault(p, st) || check_process(p, st) || check_mig(p, s, st))
        return -1;
    st->fault = NULL;
    st->proc = NULL;
    st->mig = NULL;
    st->seen = 0;
    if (!array && strcmp(name, "sim") == 0) {
        if (st->saw_sim)
            return fail(p, "[sim] appears twice");
        st->saw_sim = 1;
        st->section = SEC_SIM;
        return 0;
    }
    if (array && strcmp(name, "gpu") == 0) {
        if (s->ngpus >= SIM_MAX_GPUS)
            return fail(p, "more than %d [[gpu]] tables", SIM_MAX_GPUS);
        finish_gpu(st->gpu);
        st->gpu = &s->gpus[s->ngpus];
        gpu_defaults(st->gpu, s->ngpus);
        s->ngpus++;
        st->gpu_has_fields = 0;
        st->section = SEC_GPU;
        return 0;
    }
    if (!array && strcmp(name, "gpu.fields") == 0) {
        if (!st->gpu)
            return fail(p, "[gpu.fields] before any [[gpu]]");
        if (st->gpu_has_fields)
            return fail(p, "[gpu.fields] appears twice for this [[gpu]]");
        st->gpu_has_fields = 1;
        st->section = SEC_FIELDS;
        return 0;
    }
    if (array && strcmp(name, "gpu.faults") == 0) {
        if (!st->gpu)
            return fail(p, "[[gpu.faults]] before any [[gpu]]");
        if (st->gpu->nfaults >= SIM_MAX_FAULTS)
            return fail(p, "more than %d faults on one GPU", SIM_MAX_FAULTS);
        st->fault = &st->gpu->faults[st->gpu->nfaults++];
        memset(st->fault, 0, sizeof *st->fault);
        st->fault_seen = 0;
        st->section = SEC_FAULT;
        return 0;
    }
    if (array && strcmp(name, "gpu.processes") == 0) {
        if (!st->gpu)
            return fail(p, "[[gpu.processes]] before any [[gpu]]");
        if (s->nprocs >= SIM_MAX_PROCS)
            return fail(p, "more than %d [[gpu.processes]] tables", SIM_MAX_PROCS);
        st->proc = &s->procs[s->nprocs++];
        memset(st->proc, 0, sizeof *st->proc);
        st->proc->gpu = st->gpu->index;
        st->proc->kinds = SIM_PROC_COMPUTE;
        st->proc->sm = st->proc->mem = st->proc->enc = st->proc->dec = NAN;
        st->proc_seen = 0;
        st->section = SEC_PROCESS;
        return 0;
    }
    if (array && strcmp(name, "gpu.mig") == 0) {
        if (!st->gpu)
            return fail(p, "[[gpu.mig]] before any [[gpu]]");
        if (st->gpu->vendor != SIM_VENDOR_NVIDIA)
            return fail(p, "[[gpu.mig]] on a GPU that is not vendor = \"nvidia\" (put vendor first)");
        int on_gpu = 0;
        for (int i = 0; i < s->nmig; i++)
            on_gpu += s->migs[i].gpu == st->gpu->index;
        if (on_gpu >= SIM_MIG_PER_GPU || s->nmig >= SIM_MAX_MIG)
            return fail(p, "more than %d [[gpu.mig]] tables on one GPU (or %d in the file)", SIM_MIG_PER_GPU,
                        SIM_MAX_MIG);
        st->mig = &s->migs[s->nmig++];
        memset(st->mig, 0, sizeof *st->mig);
        st->mig->gpu = st->gpu->index;
        for (int k = 0; k < SIM_GPM_COUNT; k++)
            st->mig->gpm[k].kind = SIM_WAVE_UNSUPPORTED;
        st->mig_seen = 0;
        st->section = SEC_MIG;
        return 0;
    }
    return fail(p, "unknown table %s%s%s (the format has [sim], [[gpu]], [gpu.fields], "
                   "[[gpu.faults]], [[gpu.processes]], [[gpu.mig]])", array ? "[[" : "[", name, array ? "]]" : "]");
}

/* Cuts a trailing comment, honouring '#' inside strings. */
static void strip_comment(char *line)
{
    int in_str = 0;
    for (char *c = line; *c; c++) {
        if (in_str && *c == '\\' && c[1]) {
            c++;
            continue;
        }
        if (*c == '"')
            in_str = !in_str;
        else if (*c == '#' && !in_str) {
            *c = '\0';
            return;
        }
    }
}

static int handle_line(struct parser *p, struct sim_scenario *s, struct state *st, char *line)
{
    strip_comment(line);
    char *b = (char *)skip_ws(line);
    size_t len = strlen(b);
    while (len && (b[len - 1] == ' ' || b[len - 1] == '\t' || b[len - 1] == '\r'))
        b[--len] = '\0';
    if (len == 0)
        return 0;
    if (b[0] == '[')
        return handle_header(p, s, st, b);

    char key[64];
    const char *c = parse_key(p, b, key, sizeof key);
    if (!c)
        return -1;
    c = skip_ws(c);
    if (*c != '=')
        return fail(p, "expected '=' after key '%s'", key);
    c = skip_ws(c + 1);
    if (*c == '\0')
        return fail(p, "missing value after '%s ='", key);
    struct value v;
    p->npool = 0;
    c = parse_value(p, c, &v, 1);
    if (!c)
        return -1;
    c = skip_ws(c);
    if (*c != '\0')
        return fail(p, "unexpected text after the value of '%s': '%.20s'", key, c);

    switch (st->section) {
    case SEC_SIM:
        return sim_key(p, s, st, key, &v);
    case SEC_GPU:
        return gpu_key(p, st, key, &v);
    case SEC_FIELDS:
        return fields_key(p, st, key, &v);
    case SEC_FAULT:
        if (fault_key(p, st, key, &v))
            return -1;
        st->fault_seen = st->seen;
        return 0;
    case SEC_PROCESS:
        if (process_key(p, st, key, &v))
            return -1;
        st->proc_seen = st->seen;
        return 0;
    case SEC_MIG:
        if (mig_key(p, st, key, &v))
            return -1;
        st->mig_seen = st->seen;
        return 0;
    default:
        return fail(p, "key '%s' outside any table (start with [sim] or [[gpu]])", key);
    }
}

/*
 * TOML files are UTF-8 without control characters other than tab and line ends; checking this
 * up front keeps "accepted here" a subset of "valid TOML". Returns the 1-based line of the
 * first offence, or 0.
 */
static int check_text(const unsigned char *b, size_t n, const char **why)
{
    int line = 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = b[i];
        if (c == '\n') {
            line++;
            continue;
        }
        if (c == '\r' && i + 1 < n && b[i + 1] == '\n')
            continue;
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            *why = "control character (only tab and line ends are allowed)";
            return line;
        }
        if (c < 0x80)
            continue;
        /* A UTF-8 sequence: lead byte, then 1-3 continuation bytes; no overlongs or surrogates. */
        int extra = c >= 0xf0 && c <= 0xf4 ? 3 : c >= 0xe0 && c <= 0xef ? 2 : c >= 0xc2 && c <= 0xdf ? 1 : -1;
        if (extra < 0 || i + (size_t)extra >= n) {
            *why = "invalid UTF-8";
            return line;
        }
        unsigned int cp = c & (0x3f >> extra);
        for (int k = 1; k <= extra; k++) {
            if ((b[i + k] & 0xc0) != 0x80) {
                *why = "invalid UTF-8";
                return line;
            }
            cp = (cp << 6) | (b[i + k] & 0x3f);
        }
        if ((extra == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (extra == 3 && (cp < 0x10000 || cp > 0x10ffff))) {
            *why = "invalid UTF-8";
            return line;
        }
        i += (size_t)extra;
    }
    return 0;
}

static void scenario_init(struct sim_scenario *s, const char *path)
{
    memset(s, 0, sizeof *s);
    snprintf(s->path, sizeof s->path, "%s", path);
    snprintf(s->driver_version, sizeof s->driver_version, "%s", "535.154.05");
    snprintf(s->amd_driver_version, sizeof s->amd_driver_version, "%s", "6.10.5");
}

int sim_scenario_load(const char *path, struct sim_scenario *out, char *err, size_t errlen)
{
    struct parser p = {.path = path, .line = 0, .err = err, .errlen = errlen};
    struct state st = {0};
    char *buf = NULL;
    int rc = -1;
    FILE *f = fopen(path, "rb");

    scenario_init(out, path);
    if (!f) {
        snprintf(err, errlen, "%s:0: cannot open scenario: %s", path, strerror(errno));
        goto out;
    }
    buf = malloc(MAX_FILE_BYTES + 1);
    if (!buf) {
        snprintf(err, errlen, "%s:0: out of memory", path);
        goto out;
    }
    size_t n = fread(buf, 1, MAX_FILE_BYTES + 1, f);
    if (ferror(f)) {
        snprintf(err, errlen, "%s:0: read error", path);
        goto out;
    }
    if (n > MAX_FILE_BYTES) {
        snprintf(err, errlen, "%s:0: scenario larger than %d bytes", path, MAX_FILE_BYTES);
        goto out;
    }
    buf[n] = '\0';
    const char *why = NULL;
    int bad_line = check_text((const unsigned char *)buf, n, &why);
    if (bad_line) {
        snprintf(err, errlen, "%s:%d: %s", path, bad_line, why);
        goto out;
    }

    char *cur = buf;
    while (*cur) {
        char *nl = strchr(cur, '\n');
        char *next = nl ? nl + 1 : cur + strlen(cur);
        if (nl)
            *nl = '\0';
        p.line++;
        if (strlen(cur) > MAX_LINE) {
            fail(&p, "line longer than %d bytes", MAX_LINE);
            goto out;
        }
        if (handle_line(&p, out, &st, cur))
            goto out;
        cur = next;
    }
    if (check_fault(&p, &st) || check_process(&p, &st) || check_mig(&p, out, &st))
        goto out;
    finish_gpu(st.gpu);
    /* MIG device UUIDs, where not given: derived from the parent's and the instance. */
    for (int i = 0; i < out->nmig; i++) {
        struct sim_mig *m = &out->migs[i];
        char parent[SIM_UUID_LEN];
        if (m->uuid[0] != '\0')
            continue;
        memcpy(parent, out->gpus[m->gpu].uuid, sizeof parent);
        snprintf(m->uuid, sizeof m->uuid, "MIG-%.60s-%u", parent, m->instance);
    }
    rc = 0;
out:
    free(buf);
    if (f)
        fclose(f);
    return rc;
}

void sim_scenario_default(struct sim_scenario *s)
{
    scenario_init(s, "(built-in)");
    s->ngpus = 2;

    struct sim_gpu *n = &s->gpus[0];
    gpu_defaults(n, 0);
    n->vendor = SIM_VENDOR_NVIDIA;
    n->memory_total_mib = 16280;
    n->fields[SIM_F_TEMPERATURE] = (struct sim_wave){.kind = SIM_WAVE_SINE, .p = {55, 8, 60}};
    n->fields[SIM_F_POWER] = (struct sim_wave){.kind = SIM_WAVE_SINE, .p = {120, 40, 45}};
    n->fields[SIM_F_UTILIZATION] = (struct sim_wave){.kind = SIM_WAVE_SINE, .p = {50, 40, 30}};
    n->fields[SIM_F_MEMORY_BUSY] = (struct sim_wave){.kind = SIM_WAVE_CONSTANT, .p = {20}};
    n->fields[SIM_F_MEMORY_USED_MIB] = (struct sim_wave){.kind = SIM_WAVE_CONSTANT, .p = {4096}};
    n->fields[SIM_F_SM_CLOCK] = (struct sim_wave){.kind = SIM_WAVE_CONSTANT, .p = {1328}};
    n->fields[SIM_F_MEMORY_CLOCK] = (struct sim_wave){.kind = SIM_WAVE_CONSTANT, .p = {715}};
    finish_gpu(n);

    struct sim_gpu *a = &s->gpus[1];
    gpu_defaults(a, 1);
    a->vendor = SIM_VENDOR_AMD;
    a->memory_total_mib = 8192;
    a->fields[SIM_F_TEMPERATURE] = (struct sim_wave){.kind = SIM_WAVE_SINE, .p = {50, 6, 50}};
    a->fields[SIM_F_POWER] = (struct sim_wave){.kind = SIM_WAVE_SINE, .p = {90, 30, 40}};
    a->fields[SIM_F_UTILIZATION] = (struct sim_wave){.kind = SIM_WAVE_SINE, .p = {40, 30, 25}};
    a->fields[SIM_F_MEMORY_USED_MIB] = (struct sim_wave){.kind = SIM_WAVE_CONSTANT, .p = {2048}};
    a->fields[SIM_F_SM_CLOCK] = (struct sim_wave){.kind = SIM_WAVE_CONSTANT, .p = {1200}};
    a->fields[SIM_F_MEMORY_CLOCK] = (struct sim_wave){.kind = SIM_WAVE_CONSTANT, .p = {1250}};
    a->fields[SIM_F_FAN] = (struct sim_wave){.kind = SIM_WAVE_UNSUPPORTED};
    finish_gpu(a);
}

int sim_scenario_from_env(const char *lib, struct sim_scenario *out)
{
    const char *path = getenv("EGS_SIM_SCENARIO");
    char err[SIM_ERR_LEN];
    if (!path || !*path) {
        sim_scenario_default(out);
        return 0;
    }
    if (sim_scenario_load(path, out, err, sizeof err) == 0)
        return 0;
    fprintf(stderr, "egs-sim: %s: %s\n", lib, err);
    return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* Time and waveforms                                                                         */

double sim_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void sim_sleep_us(long us)
{
    if (us <= 0)
        return;
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

double sim_wave_eval(const struct sim_wave *w, double t)
{
    const double *p = w->p;
    switch (w->kind) {
    case SIM_WAVE_CONSTANT:
        return p[0];
    case SIM_WAVE_SINE:
        return p[0] + p[1] * sin(2.0 * SIM_PI * t / p[2]);
    case SIM_WAVE_RAMP:
        return t >= p[2] ? p[1] : p[0] + (p[1] - p[0]) * (t / p[2]);
    case SIM_WAVE_STEP:
        return t < p[2] ? p[0] : p[1];
    case SIM_WAVE_SEQUENCE: {
        long long k = (long long)floor(t / p[0]);
        return w->values[k % w->nvalues];
    }
    default:
        return 0.0;
    }
}

double sim_wave_integral(const struct sim_wave *w, double t)
{
    const double *p = w->p;
    if (t <= 0)
        return 0.0;
    switch (w->kind) {
    case SIM_WAVE_CONSTANT:
        return p[0] * t;
    case SIM_WAVE_SINE:
        return p[0] * t + p[1] * p[2] / (2.0 * SIM_PI) * (1.0 - cos(2.0 * SIM_PI * t / p[2]));
    case SIM_WAVE_RAMP:
        if (t < p[2])
            return p[0] * t + (p[1] - p[0]) * t * t / (2.0 * p[2]);
        return (p[0] + p[1]) * p[2] / 2.0 + p[1] * (t - p[2]);
    case SIM_WAVE_STEP:
        return t < p[2] ? p[0] * t : p[0] * p[2] + p[1] * (t - p[2]);
    case SIM_WAVE_SEQUENCE: {
        long long k = (long long)floor(t / p[0]);
        long long n = w->nvalues;
        double cycle = 0.0, head = 0.0;
        for (long long i = 0; i < n; i++) {
            cycle += w->values[i];
            if (i < k % n)
                head += w->values[i];
        }
        return p[0] * ((double)(k / n) * cycle + head) + w->values[k % n] * (t - (double)k * p[0]);
    }
    default:
        return 0.0;
    }
}

int sim_gpu_lost(const struct sim_gpu *g, double t)
{
    for (int i = 0; i < g->nfaults; i++)
        if (g->faults[i].kind == SIM_FAULT_LOST && t >= g->faults[i].at)
            return 1;
    return 0;
}

int sim_gpu_field(const struct sim_gpu *g, int field, double t, double *out)
{
    const struct sim_wave *w = &g->fields[field];
    double v;
    if (w->kind == SIM_WAVE_UNSUPPORTED)
        return -1;
    for (int i = 0; i < g->nfaults; i++)
        if (g->faults[i].kind == SIM_FAULT_UNSUPPORTED && g->faults[i].field == field &&
            t >= g->faults[i].at)
            return -1;
    if (w->kind == SIM_WAVE_INTEGRAL) {
        /* Without a power reading there is nothing to integrate. */
        if (g->fields[SIM_F_POWER].kind == SIM_WAVE_UNSUPPORTED)
            return -1;
        v = sim_wave_integral(&g->fields[SIM_F_POWER], t);
    } else {
        v = sim_wave_eval(w, t);
    }
    if (v < 0)
        v = 0;
    if ((field == SIM_F_UTILIZATION || field == SIM_F_MEMORY_BUSY || field == SIM_F_FAN) && v > 100)
        v = 100;
    *out = v;
    return 0;
}

long sim_query_latency_us(const struct sim_scenario *s, const struct sim_gpu *g, double t)
{
    long us = s->call_latency_us;
    double latest = -1;
    for (int i = 0; g && i < g->nfaults; i++)
        if (g->faults[i].kind == SIM_FAULT_SLOW && t >= g->faults[i].at && g->faults[i].at >= latest) {
            latest = g->faults[i].at;
            us = s->call_latency_us + g->faults[i].latency_us;
        }
    return us;
}
