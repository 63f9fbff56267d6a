#include "run_util.h"

#include <signal.h>
#include <stdio.h>

void config_set_or_fail(Config *config, const char *fmt, const char *value) {
    char assignment[2048];
    snprintf(assignment, sizeof assignment, fmt, value);
    Error err;
    if (!config_set(config, assignment, &err)) fail_msg("%s: %s", assignment, err.message);
}

Config tiny_run_config(const char *dir, const char *const *assignments, size_t n) {
    Config config;
    config_defaults(&config);
    config_set_or_fail(&config, "model.path=%s/model", dir);
    config_set_or_fail(&config, "model.create_if_missing=%s", "tiny");
    config_set_or_fail(&config, "data.path=%s/data.jsonl", dir);
    config_set_or_fail(&config, "checkpoint.dir=%s/out", dir);
    for (size_t i = 0; i < n; i++) config_set_or_fail(&config, "%s", assignments[i]);
    Error err;
    if (!config_validate(&config, &err)) fail_msg("%s", err.message);
    return config;
}

void write_text_records(const char *path, int n) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < n; i++) fprintf(f, "{\"text\": \"record %d says %.*s\"}\n", i, 3 + i % 17, "abcdefghijklmnopqrstuvwxyz");
    assert_int_equal(fclose(f), 0);
}

void record_loss(void *context, int step, double loss) {
    LossRecorder *recorder = context;
    assert_in_range(step, 1, RECORDER_MAX_STEPS);
    recorder->losses[step] = loss;
    if (step == recorder->signal_at_step) raise(SIGTERM);
}
