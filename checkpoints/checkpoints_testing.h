// checkpoints: entry points for the tests alone (not part of the module's
// public face): one-call save and load of a one-rank checkpoint, and fault
// injection into the writes, fsyncs, renames and removals of a save.
#pragma once
#include "checkpoints.h"

// checkpoint_image_create + checkpoint_write.
bool checkpoint_save(const char *run_dir, const CheckpointSource *source, char *path, size_t path_size, Error *err);
// checkpoint_load_shard of the whole buffer.
bool checkpoint_load(const char *dir, Model *model, float *adam_m, float *adam_v, bool moments_on_host,
                     TrainerState *state, Error *err);
// The nth_write-th write(2) of a checkpoint file from now fails with
// errno_value (0 = none).
void checkpoint_inject_write_failure(int nth_write, int errno_value);
// The nth_operation-th write, fsync, rename or removal of checkpoint files
// and folders from now (0 = none) fails with errno_value, or with
// errno_value 0 SIGKILLs the process.
void checkpoint_inject_fault(int nth_operation, int errno_value);
