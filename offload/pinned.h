// offload's private page-locked host allocation (cudaHostAlloc); without
// CUDA, pinned_alloc fails saying so.
#pragma once
#include <stddef.h>

#include "../core/core.h"

void *pinned_alloc(size_t bytes, const char *what, Error *err);
void pinned_free(void *data);
