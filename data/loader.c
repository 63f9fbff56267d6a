// StepLoader: one table of functions per loader kind (DataLoader in
// dataloader.c, VlmLoader in vlm_loader.c, RobotLoader in robot_loader.c),
// so the trainer draws steps without knowing which data it has.
#include "data.h"
#include "data_private.h"

#include <stdlib.h>

struct StepLoader {
    const StepLoaderKind *kind;
    void *impl;
};

StepLoader *step_loader_wrap(const StepLoaderKind *kind, void *impl, Error *err) {
    if (!impl) return NULL;
    StepLoader *loader = checked_calloc(1, sizeof *loader, "a step loader", err);
    if (!loader) {
        kind->destroy(impl);
        return NULL;
    }
    *loader = (StepLoader){.kind = kind, .impl = impl};
    return loader;
}

void step_loader_destroy(StepLoader *loader) {
    if (!loader) return;
    loader->kind->destroy(loader->impl);
    free(loader);
}

const StepBatch *step_loader_next(StepLoader *loader, Error *err) { return loader->kind->next(loader->impl, err); }

void step_loader_position(const StepLoader *loader, int *epoch, int64_t *step_in_epoch) {
    loader->kind->position(loader->impl, epoch, step_in_epoch);
}

void step_loader_seek(StepLoader *loader, int epoch, int64_t step_in_epoch) {
    loader->kind->seek(loader->impl, epoch, step_in_epoch);
}

int64_t step_loader_steps_per_epoch(const StepLoader *loader) { return loader->kind->steps_per_epoch(loader->impl); }

int64_t step_loader_steps_for_epochs(StepLoader *loader, int n_epochs) {
    return loader->kind->steps_for_epochs(loader->impl, n_epochs);
}

int64_t step_loader_samples(const StepLoader *loader) { return loader->kind->samples(loader->impl); }

int64_t step_loader_truncated(const StepLoader *loader) { return loader->kind->truncated(loader->impl); }
