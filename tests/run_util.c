#include "run_util.h"

#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "checkpoints/checkpoints.h"

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

char *adapter_file_bytes(const char *adapter_dir, size_t *size) {
    char path[PATH_MAX], *data;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", adapter_dir);
    Error err;
    if (!read_file(path, &data, size, &err)) fail_msg("%s", err.message);
    return data;
}

double adapter_difference(const char *adapter_a, const char *adapter_b, double *max_abs) {
    char path_a[1024], path_b[1024];
    snprintf(path_a, sizeof path_a, "%s/adapter_model.safetensors", adapter_a);
    snprintf(path_b, sizeof path_b, "%s/adapter_model.safetensors", adapter_b);
    Error err;
    SafetensorsFile *a = safetensors_open(path_a, &err), *b = a ? safetensors_open(path_b, &err) : NULL;
    if (!b) fail_msg("%s", err.message);
    assert_int_equal(safetensors_count(a), safetensors_count(b));
    double worst = 0;
    *max_abs = 0;
    for (int i = 0; i < safetensors_count(b); i++) {
        const char *name = safetensors_name(b, i);
        Tensor ta, tb;
        if (!safetensors_get(a, name, &ta, &err) || !safetensors_get(b, name, &tb, &err)) fail_msg("%s", err.message);
        int64_t n = tensor_numel(&tb);
        assert_int_equal(tensor_numel(&ta), n);
        const float *xa = ta.data, *xb = tb.data;
        double diff2 = 0, norm2 = 0, diff_max = 0, scale = 0;
        for (int64_t k = 0; k < n; k++) {
            double d = (double)xa[k] - xb[k];
            diff2 += d * d;
            norm2 += (double)xb[k] * xb[k];
            diff_max = fmax(diff_max, fabs(d));
            scale = fmax(scale, fabs((double)xb[k]));
        }
        worst = fmax(worst, sqrt(diff2 / norm2));
        *max_abs = fmax(*max_abs, diff_max / scale);
    }
    safetensors_close(a);
    safetensors_close(b);
    return worst;
}

void write_llava_records(const char *path, int n) {
    static const char *const files[] = {"video-001.jpeg", "video-001.progressive.jpeg", "video-001.q50.420.jpeg",
                                        "video-001.cmyk.jpeg"};
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "[\n");
    for (int i = 0; i < n; i++)
        fprintf(f,
                "%s{\"id\": \"%d\", \"image\": \"%s\", \"conversations\": [{\"from\": \"human\", \"value\": "
                "\"<image>\\n%s\"}, {\"from\": \"gpt\", \"value\": \"%s\"}]}\n",
                i ? "," : "", i, files[i % 4], i % 2 ? "Which file?" : "What is it?", i % 2 ? files[i % 4] : "a frame");
    fprintf(f, "]\n");
    assert_int_equal(fclose(f), 0);
}

bool vlm_run_config(const char *dir, int n_records, const char *const *assignments, size_t n, Config *config) {
    const char *fixture = shared_fixture("images/jpeg");
    char images[PATH_MAX], path[PATH_MAX];
    if (!fixture || !realpath(fixture, images)) return false;
    snprintf(path, sizeof path, "%s/records.json", dir);
    write_llava_records(path, n_records);
    config_defaults(config);
    config_set_or_fail(config, "model.path=%s/model", dir);
    config_set_or_fail(config, "model.create_if_missing=%s", "tiny");
    config_set_or_fail(config, "data.path=%s", path);
    config_set_or_fail(config, "data.images=%s", images);
    config_set_or_fail(config, "vision.tower=%s/tower.safetensors", dir);
    config_set_or_fail(config, "checkpoint.dir=%s/out", dir);
    for (size_t i = 0; i < n; i++) config_set_or_fail(config, "%s", assignments[i]);
    Error err;
    if (!config_validate(config, &err)) fail_msg("%s", err.message);
    return true;
}
