// Helpers for tests that drive the trainer through its Config.
#pragma once
#include "test_util.h"

#include "trainer/trainer.h"

// config_set(config, fmt % value), failing the test with the key's message.
void config_set_or_fail(Config *config, const char *fmt, const char *value);
// Defaults, a tiny model created at dir/model, data at dir/data.jsonl,
// checkpoints in dir/out, then each of the n assignments ("key=value"),
// validated.
Config tiny_run_config(const char *dir, const char *const *assignments, size_t n);
// n {"text": ...} records of varying length.
void write_text_records(const char *path, int n);

// Each step's loss, by 1-based step; SIGTERM raised after signal_at_step
// (0 = never). Pass record_loss as TrainControl.on_step, the recorder as its context.
#define RECORDER_MAX_STEPS 64
typedef struct LossRecorder {
    double losses[RECORDER_MAX_STEPS + 1];
    int signal_at_step;
} LossRecorder;
void record_loss(void *context, int step, double loss);

// The bytes of adapter_dir/adapter_model.safetensors (malloc'd; *size its length); fails the test if unreadable.
char *adapter_file_bytes(const char *adapter_dir, size_t *size);
// Largest ||a - b|| / ||b|| (L2) over the tensors of two adapter folders'
// adapter_model.safetensors; *max_abs: the largest |a - b| / max|b| too.
double adapter_difference(const char *adapter_a, const char *adapter_b, double *max_abs);

// n LLaVA records at path over the shared JPEG fixtures (two questions, four images).
void write_llava_records(const char *path, int n);
// n LLaVA records in dir/records.json over the shared JPEG fixtures (two
// questions, four images), and a config training a tiny random Llama and CLIP
// tower on them (model, tower and checkpoints under dir), then each of the
// assignments, validated. False when ../shared/fixtures/images/jpeg is missing.
bool vlm_run_config(const char *dir, int n_records, const char *const *assignments, size_t n, Config *config);
