// Built without CUDA: no pinned memory.
#include <stdlib.h>

#include "offload/pinned.h"

void *pinned_alloc(size_t bytes, const char *what, Error *err) {
    fail(err, "pinned host memory for %s needs CUDA; lora-train was built without it", what);
    return NULL;
}

void pinned_free(void *data) { free(data); }
