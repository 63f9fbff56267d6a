// The CUDA backend's own host waits for the device inside a step (the upload
// staging's throttle) poll a check while they wait: the compute stream may
// wait behind a collective (parallel/cuda/nccl.c orders it so), and a
// collective of a hung peer would otherwise hold the host forever. NCCL
// installs one that aborts the communicator on its error or timeout, so the
// device goes on, and reports the failure at its next `wait`.
#pragma once
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

// check(context, waiting_since) -> false once it has ended what the device
// waits on (the wait then goes on until the device gets there, without asking
// again). NULL: waits block as before. One per process, as the CUDA context.
typedef bool (*CudaWaitCheck)(void *context, double waiting_since);
void ops_cuda_set_wait_check(CudaWaitCheck check, void *context);

#ifdef __cplusplus
}
#endif
