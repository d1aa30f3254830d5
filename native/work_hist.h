/*
 * work_hist.h - the log-linear histogram of a tick's work (wake-up to the end of its fold):
 * EGS_WORK_SUB buckets per power of two of nanoseconds, 1.6 % wide from 64 ns to 2^40 ns.
 * Shared with bench/bare_loop.c, whose paced rounds are bucketed the same way so the two
 * medians compare like for like.
 */
#ifndef EGS_WORK_HIST_H
#define EGS_WORK_HIST_H

#include <math.h>

#define EGS_WORK_SUB       64
#define EGS_WORK_BUCKETS   ((40 - 5) * EGS_WORK_SUB)

/* The bucket of `ns` nanoseconds. */
static inline long egs_work_bucket(long long ns)
{
    if (ns < EGS_WORK_SUB)
        return ns < 0 ? 0 : (long)ns;
    int e = 63 - __builtin_clzll((unsigned long long)ns);  /* >= 6 */
    long b = (long)(e - 5) * EGS_WORK_SUB + (long)((ns >> (e - 6)) & (EGS_WORK_SUB - 1));
    return b < EGS_WORK_BUCKETS ? b : EGS_WORK_BUCKETS - 1;
}

/* The middle of bucket b, in nanoseconds. */
static inline double egs_work_bucket_ns(long b)
{
    if (b < EGS_WORK_SUB)
        return (double)b + 0.5;
    int e = (int)(b / EGS_WORK_SUB) + 5;
    double width = ldexp(1.0, e - 6);
    return (double)(EGS_WORK_SUB + b % EGS_WORK_SUB) * width + width / 2;
}

#endif
