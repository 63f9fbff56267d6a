// Built without CUDA: no NCCL.
#include "parallel/parallel.h"

Collectives *collectives_nccl(Store *store, const RankInfo *info, double timeout_s, Error *err) {
    fail(err, "lora-train was built without CUDA, so NCCL collectives are unavailable");
    return NULL;
}

int nccl_version(void) { return 0; }
