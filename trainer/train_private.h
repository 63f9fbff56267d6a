// trainer: the state of one training run, shared by train.c (set-up and the
// loop) and run_guard.c (checkpoints, resume, disk guard, signals).
#pragma once
#include <signal.h>

#include "checkpoints/checkpoints.h"
#include "data/data.h"
#include "distributed.h"
#include "trainer.h"

typedef struct Run {
    const Config *config;
    const TrainControl *control;
    const Ops *ops;
    Model *model;
    AdapterInfo adapter_info; // base model path and key layout, for every adapter written
    Tokenizer *tokenizer;
    Dataset *dataset;
    DataLoader *loader;
    DistContext dist;
    Zero *zero;
    LrSchedule schedule;
    int total_steps;
    bool is_rank0;         // logs and writes adapters and checkpoints
    char *config_yaml;     // saved in every checkpoint, compared on resume
    TrainerState progress; // losses and step counts so far (position fields filled at save time)
} Run;

// Set by SIGINT / SIGTERM while train_run_with runs.
extern volatile sig_atomic_t stop_signal;
void stop_signals_install(void);
void stop_signals_restore(void);

// Refuses to start (unless control->allow_low_disk) when keep_last
// checkpoints plus the final adapter exceed the free space of checkpoint.dir.
bool check_disk_for_run(Run *run, Error *err);
// Saves a checkpoint whose next step is next_step (the data loader is at its
// position): disk guard first, then the atomic verified write, then keep_last.
// Every rank calls it (each writes its optimizer shard); path is set on all.
bool save_checkpoint(Run *run, int next_step, char *path, size_t path_size, Error *err);
// Loads control->resume into the model, optimizer, loader and progress;
// *start_step receives the step to continue from.
bool resume_from_checkpoint(Run *run, int *start_step, Error *err);

// The model the run creates for config (train.c), for plan to measure.
ModelOptions train_model_options(const Config *config, const Ops *ops, const LlamaConfig *llama);
// "1.50 GiB", "3.20 MiB" or "512 bytes".
void format_bytes(uint64_t bytes, char *text, size_t size);
// Checkpoints a run of total_steps keeps on disk at once (every_steps, keep_last).
int checkpoints_kept(const Config *config, int total_steps);
// The whole run's disk need: the kept checkpoints of checkpoint_bytes each and the final adapter.
uint64_t run_disk_bytes(const Config *config, int total_steps, uint64_t checkpoint_bytes, size_t n_params);
