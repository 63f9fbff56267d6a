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

void pinned_free(void *data) { cudaFreeHost(data); }
