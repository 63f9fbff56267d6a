// Pinned host memory through the CUDA runtime.
#include <cuda_runtime.h>

#include "offload/pinned.h"

void *pinned_alloc(size_t bytes, const char *what, Error *err) {
    void *data = NULL;
    cudaError_t rc = cudaHostAlloc(&data, bytes, cudaHostAllocDefault);
    if (rc != cudaSuccess) {
        fail(err, "cudaHostAlloc of %zu bytes for %s: %s", bytes, what, cudaGetErrorString(rc));
        return NULL;
    }
    return data;
}

// Copies queued into or out of the buffer finish first: cudaFreeHost need not wait for them.
void pinned_free(void *data) {
    if (!data) return;
    (void)cudaDeviceSynchronize();  // offload frees without reporting; a failed device fails elsewhere
    cudaFreeHost(data);
}
