/*
 * amd_no_metrics_shim.c - an AMD SMI whose device does not fill the metrics table.
 *
 * Linked in front of the simulated libamd_smi.so (as amd_io_lost_shim.c is), it answers
 * amdsmi_get_gpu_metrics_info with NOT_SUPPORTED, as AMD SMI does on parts without a
 * firmware metrics table; every narrow call is the simulator's.
 */
#define AMDSMI_STATUS_NOT_SUPPORTED 2

int amdsmi_get_gpu_metrics_info(void *processor, void *metrics)
{
    (void)processor;
    (void)metrics;
    return AMDSMI_STATUS_NOT_SUPPORTED;
}
