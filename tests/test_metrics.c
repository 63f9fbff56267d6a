// What a run writes for people to read, checked by independent readers: a
// run interrupted after step 5 and resumed from its step-2 checkpoint leaves
// metrics.jsonl with exactly one row per step and per evaluation, with the
// losses the steps had; tensorboard's own TFRecord reader (which checks every
// CRC) and EventAccumulator read the event files back with the same values,
// one per step after the resume, and a damaged byte fails the CRC check;
// loss.png decodes (the project's PNG reader and Pillow) to 1000 x 600 with
// the loss curves' colours inside the plot area; `lora-train report` tables
// the run (and refuses a folder without metrics, or a damaged row, by name)
// and draws its comparison PNG.
#include "run_util.h"

#include <json-c/json.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/metrics.h"
#include "vision/vision.h"
#include "trainer/trainer.h"

#define TOTAL_STEPS 8
#define EVAL_EVERY 2

static void test_crc32c_known_values(void **state) {
    assert_int_equal(crc32c("123456789", 9), 0xe3069283u); // the Castagnoli check value
    assert_int_equal(crc32c("", 0), 0);
}

// Losses by step: run 1 to step 5 (SIGTERM), run 2 from step-000002 to the end.
typedef struct RunLosses {
    double first[RECORDER_MAX_STEPS + 1], resumed[RECORDER_MAX_STEPS + 1];
} RunLosses;

static Config metrics_config(const char *dir) {
    char path[2048];
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    write_text_records(path, 40);
    snprintf(path, sizeof path, "%s/held_out.jsonl", dir);
    write_text_records(path, 4);
    const char *recipe[] = {"data.max_seq_len=32", "lora.target=all", "train.micro_batch=2", "train.max_steps=8",
                            "train.lr=3e-3", "train.log_every=1", "checkpoint.every_steps=2", "train.backend=cpu"};
    Config config = tiny_run_config(dir, recipe, sizeof recipe / sizeof recipe[0]);
    config_set_or_fail(&config, "data.eval_path=%s", path);
    config_set_or_fail(&config, "train.eval_every=%s", "2");
    return config;
}

static void interrupted_and_resumed_run(const char *dir, RunLosses *losses) {
    Config config = metrics_config(dir);
    LossRecorder first = {.signal_at_step = 5}, resumed = {0};
    TrainControl control = {.on_step = record_loss, .context = &first};
    TrainSummary summary;
    Error err;
    if (!train_run_with(&config, &control, &summary, &err)) fail_msg("%s", err.message);
    assert_true(summary.interrupted);
    char checkpoint[2048];
    snprintf(checkpoint, sizeof checkpoint, "%s/out/step-000002", dir);
    control = (TrainControl){.on_step = record_loss, .context = &resumed, .resume = checkpoint};
    if (!train_run_with(&config, &control, &summary, &err)) fail_msg("%s", err.message);
    assert_false(summary.interrupted);
    memcpy(losses->first, first.losses, sizeof losses->first);
    memcpy(losses->resumed, resumed.losses, sizeof losses->resumed);
}

static double expected_loss(const RunLosses *losses, int step) {
    return step <= 2 ? losses->first[step] : losses->resumed[step];
}

static json_object *field(json_object *row, const char *key) {
    json_object *value;
    if (!json_object_object_get_ex(row, key, &value)) fail_msg("a row without \"%s\"", key);
    return value;
}

// metrics.jsonl: steps 1..8 once each with their losses, evaluations after 2, 4, 6, 8 once each.
static void check_metrics_file(const char *dir, const RunLosses *losses) {
    char path[2048], *text;
    size_t size;
    Error err;
    snprintf(path, sizeof path, "%s/out/metrics.jsonl", dir);
    if (!read_file(path, &text, &size, &err)) fail_msg("%s", err.message);
    int step_rows[TOTAL_STEPS + 1] = {0}, eval_rows[TOTAL_STEPS + 1] = {0}, last_step = 0;
    double last_elapsed = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        json_object *row = json_tokener_parse(line);
        if (!row) fail_msg("metrics.jsonl: not JSON: %s", line);
        int step = json_object_get_int(field(row, "step"));
        assert_in_range(step, 1, TOTAL_STEPS);
        assert_true(step >= last_step);
        last_step = step;
        double elapsed = json_object_get_double(field(row, "elapsed_s"));
        assert_true(elapsed >= last_elapsed);
        last_elapsed = elapsed;
        json_object *value;
        if (json_object_object_get_ex(row, "eval_loss", &value)) {
            eval_rows[step]++;
            assert_true(json_object_get_double(value) > 0);
            assert_int_equal(json_object_get_int(field(row, "eval_label_tokens")) > 0, 1);
        } else {
            step_rows[step]++;
            double loss = json_object_get_double(field(row, "loss"));
            assert_true(fabs(loss - expected_loss(losses, step)) <= 1e-9 * fabs(loss));
            assert_true(json_object_get_double(field(row, "lr")) > 0);
            assert_true(json_object_get_int64(field(row, "peak_memory_bytes")) > 0);
        }
        json_object_put(row);
    }
    free(text);
    for (int step = 1; step <= TOTAL_STEPS; step++) {
        assert_int_equal(step_rows[step], 1);
        assert_int_equal(eval_rows[step], step % EVAL_EVERY == 0);
    }
}

// Whether python3 imports module; under CI (scripts/python_env.sh installs it) a missing one fails the test.
static bool python_has(const char *module) {
    char command[256];
    snprintf(command, sizeof command, "python3 -c 'import %s' 2>/dev/null", module);
    if (run_command(command) == 0) return true;
    const char *ci = getenv("CI");
    if (ci && strcmp(ci, "true") == 0) fail_msg("CI: python3 has no %s (scripts/python_env.sh installs it)", module);
    print_message("python3 with %s is not available\n", module);
    return false;
}

static json_object *read_events(const char *run_dir, const char *out_dir) {
    char command[4096], path[2048];
    snprintf(path, sizeof path, "%s/events.json", out_dir);
    snprintf(command, sizeof command, "python3 scripts/read_tfevents.py %s > %s 2> %s/events.err", run_dir, path,
             out_dir);
    if (run_command(command) != 0) return NULL;
    json_object *events = json_object_from_file(path);
    if (!events) fail_msg("%s: not JSON", path);
    return events;
}

// EventAccumulator's train/loss and eval/loss: one value per step, as metrics.jsonl (as float32).
static void check_scalars(json_object *events, const RunLosses *losses) {
    json_object *scalars = field(events, "scalars"), *train = field(scalars, "train/loss");
    assert_int_equal(json_object_array_length(train), TOTAL_STEPS);
    for (int i = 0; i < TOTAL_STEPS; i++) {
        json_object *point = json_object_array_get_idx(train, (size_t)i);
        assert_int_equal(json_object_get_int(json_object_array_get_idx(point, 0)), i + 1);
        double value = json_object_get_double(json_object_array_get_idx(point, 1));
        assert_true(value == (double)(float)expected_loss(losses, i + 1));
    }
    json_object *eval = field(scalars, "eval/loss");
    assert_int_equal(json_object_array_length(eval), TOTAL_STEPS / EVAL_EVERY);
    for (const char *const *tag = (const char *const[]){"train/lr", "train/grad_norm", "train/tokens_per_s",
                                                        "eval/perplexity", "eval/token_accuracy",
                                                        "eval/answer_accuracy", NULL};
         *tag; tag++)
        assert_non_null(field(scalars, *tag));
    // the raw records hold the interrupted process's steps 3-5 too: the accumulator dropped them
    int raw_losses = 0;
    json_object *raw = field(events, "raw");
    for (size_t i = 0; i < json_object_array_length(raw); i++)
        raw_losses += strcmp(json_object_get_string(json_object_array_get_idx(json_object_array_get_idx(raw, i), 1)),
                             "train/loss") == 0;
    assert_int_equal(raw_losses, TOTAL_STEPS + 3);
    assert_int_equal(json_object_array_length(field(events, "files")), 2);
}

// One byte of an event's data flipped in a copy of the first file: the reader's CRC check refuses it.
static void check_damage_is_caught(const char *run_dir, const char *dir, json_object *events) {
    char damaged[2048], source[4096], command[8192], *data;
    size_t size;
    Error err;
    snprintf(damaged, sizeof damaged, "%s/damaged", dir);
    assert_true(make_dirs(damaged, &err));
    const char *name = json_object_get_string(json_object_array_get_idx(field(events, "files"), 0));
    snprintf(source, sizeof source, "%s/%s", run_dir, name);
    if (!read_file(source, &data, &size, &err)) fail_msg("%s", err.message);
    data[size / 2] ^= 0x20;
    snprintf(source, sizeof source, "%s/%s", damaged, name);
    FILE *f = fopen(source, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, size, f), size);
    assert_int_equal(fclose(f), 0);
    free(data);
    assert_null(read_events(damaged, damaged));
    snprintf(command, sizeof command, "grep -q 'crc32 check' %s/events.err", damaged);
    assert_int_equal(run_command(command), 0);
}

// Pixels inside the plot area within 40 of colour (r, g, b) in every channel.
static int count_colour(const Image *image, int r, int g, int b) {
    int count = 0;
    for (int y = 50; y < PLOT_HEIGHT - 60; y++)
        for (int x = 80; x < PLOT_WIDTH - 90; x++) {
            const uint8_t *p = image->pixels + ((size_t)y * image->width + x) * 3;
            count += abs(p[0] - r) < 40 && abs(p[1] - g) < 40 && abs(p[2] - b) < 40;
        }
    return count;
}

static void check_loss_png(const char *run_dir, const char *dir) {
    char path[4096], command[16384];
    snprintf(path, sizeof path, "%s/loss.png", run_dir);
    Image image;
    Error err;
    if (!image_decode_file(path, &image, &err)) fail_msg("%s", err.message);
    assert_int_equal(image.width, PLOT_WIDTH);
    assert_int_equal(image.height, PLOT_HEIGHT);
    int smoothed = count_colour(&image, 31, 97, 184), eval = count_colour(&image, 230, 107, 13);
    print_message("loss.png: %d pixels of the smoothed loss, %d of the eval loss\n", smoothed, eval);
    assert_true(smoothed > 500);
    assert_true(eval > 100);
    image_free(&image);
    if (!python_has("PIL")) return;
    snprintf(command, sizeof command,
             "python3 -c \"from PIL import Image; im = Image.open('%s'); im.load(); "
             "assert im.size == (%d, %d), im.size; colours = im.convert('RGB').crop((80, 50, %d, %d)).getcolors(1 << 24); "
             "n = sum(count for count, colour in colours if colour != (255, 255, 255)); print('Pillow: non-white pixels in the plot area', n); "
             "assert n > 5000\" > %s/pillow.log 2>&1",
             path, PLOT_WIDTH, PLOT_HEIGHT, PLOT_WIDTH - 90, PLOT_HEIGHT - 60, dir);
    assert_int_equal(run_command(command), 0);
}

static void read_text(const char *path, char **text) {
    size_t size;
    Error err;
    if (!read_file(path, text, &size, &err)) fail_msg("%s", err.message);
}

static void check_report(const char *run_dir, const char *dir) {
    char command[8192], path[4096];
    snprintf(command, sizeof command, "$LORA_TRAIN_BIN report %s %s --out %s/report.png > %s/report.txt 2>&1", run_dir,
             run_dir, dir, dir);
    assert_int_equal(run_command(command), 0);
    snprintf(path, sizeof path, "%s/report.txt", dir);
    char *table;
    read_text(path, &table);
    print_message("%s", table);
    char *row = strstr(table, run_dir);
    assert_non_null(row);
    int steps;
    assert_int_equal(sscanf(row + strlen(run_dir), "%d", &steps), 1);
    assert_int_equal(steps, TOTAL_STEPS);
    assert_non_null(strstr(row, "(8)")); // the best eval loss is the last one's
    free(table);
    snprintf(path, sizeof path, "%s/report.png", dir);
    Image image;
    Error err;
    if (!image_decode_file(path, &image, &err)) fail_msg("%s", err.message);
    assert_int_equal(image.width, PLOT_WIDTH);
    assert_true(count_colour(&image, 230, 107, 13) > 500); // the second run's colour, drawn over the first
    image_free(&image);

    snprintf(command, sizeof command, "$LORA_TRAIN_BIN report %s > %s/report.txt 2>&1", dir, dir);
    assert_int_equal(run_command(command), 1);
    snprintf(path, sizeof path, "%s/report.txt", dir);
    read_text(path, &table);
    assert_non_null(strstr(table, "metrics.jsonl: no such file"));
    free(table);
    snprintf(command, sizeof command, "mkdir -p %s/torn && head -c 100 %s/metrics.jsonl > %s/torn/metrics.jsonl && "
             "$LORA_TRAIN_BIN report %s/torn > %s/report.txt 2>&1", dir, run_dir, dir, dir, dir);
    assert_int_equal(run_command(command), 1);
    read_text(path, &table);
    assert_non_null(strstr(table, "torn/metrics.jsonl:1: not a metrics row"));
    free(table);
}

static void test_metrics_and_events_across_resume(void **state) {
    const char *dir = make_temp_dir("metrics");
    RunLosses losses;
    interrupted_and_resumed_run(dir, &losses);
    check_metrics_file(dir, &losses);
    char run_dir[2048];
    snprintf(run_dir, sizeof run_dir, "%s/out", dir);
    check_loss_png(run_dir, dir);
    check_report(run_dir, dir);
    if (!python_has("tensorboard")) skip();
    json_object *events = read_events(run_dir, dir);
    if (!events) {
        char command[4096];
        snprintf(command, sizeof command, "cat %s/events.err", dir);
        run_command(command);
        fail_msg("scripts/read_tfevents.py failed on %s", run_dir);
    }
    check_scalars(events, &losses);
    check_damage_is_caught(run_dir, dir, events);
    json_object_put(events);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c_known_values),
        cmocka_unit_test(test_metrics_and_events_across_resume),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
