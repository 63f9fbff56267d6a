// The progress line of `lora-train`: under a pseudo-terminal (script(1)) one
// line redrawn in place (carriage return, erase to end of line, the bar with
// step/total, loss, tokens/s, ETA and memory) instead of the per-step log
// lines, other messages on lines of their own; in a pipe the plain log lines
// and no terminal control sequence.
#include "run_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// A 4-step recipe on a tiny random model, written to dir/run.yaml.
static void write_recipe(const char *dir) {
    char path[2048];
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    write_text_records(path, 40);
    snprintf(path, sizeof path, "%s/run.yaml", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "model: {path: %s/model, create_if_missing: tiny}\n"
            "data: {path: %s/data.jsonl, max_seq_len: 32}\n"
            "train: {micro_batch: 2, max_steps: 4, log_every: 1, backend: cpu}\n"
            "checkpoint: {dir: %s/out}\n",
            dir, dir, dir);
    assert_int_equal(fclose(f), 0);
}

static char *run_and_capture(const char *dir, const char *command_format) {
    char command[4096], path[2048], *text;
    size_t size;
    snprintf(path, sizeof path, "%s/output.txt", dir);
    snprintf(command, sizeof command, command_format, dir, path);
    assert_int_equal(run_command(command), 0);
    Error err;
    if (!read_file(path, &text, &size, &err)) fail_msg("%s", err.message);
    return text;
}

static void test_progress_line_on_a_terminal(void **state) {
    if (run_command("command -v script > /dev/null") != 0) skip();
    const char *dir = make_temp_dir("progress-tty");
    write_recipe(dir);
    char *text = run_and_capture(dir, "script -q -e -c \"$LORA_TRAIN_BIN --config %s/run.yaml\" /dev/null "
                                      "< /dev/null > %s 2>&1");
    assert_non_null(strstr(text, "\r\033[K[######..................] step 1/4 | loss "));
    char *last = strstr(text, "\r\033[K[########################] step 4/4 | loss ");
    assert_non_null(last);
    assert_non_null(strstr(last, " tok/s | eta 0:00:00 | peak "));
    assert_null(strstr(text, "| lr ")); // no per-step log line
    assert_non_null(strstr(text, "\r\033[Ksaved checkpoint")); // the bar cleared before another message
    free(text);
}

static void test_log_lines_in_a_pipe(void **state) {
    const char *dir = make_temp_dir("progress-pipe");
    write_recipe(dir);
    char *text = run_and_capture(dir, "$LORA_TRAIN_BIN --config %s/run.yaml 2>&1 | cat > %s");
    for (int step = 1; step <= 4; step++) {
        char line[64];
        snprintf(line, sizeof line, "\nstep %d/4 | loss ", step);
        assert_non_null(strstr(text, line));
    }
    assert_null(strchr(text, '\r'));
    assert_null(strchr(text, '\033'));
    free(text);
}

// Preparation says how far it is (LORA_TRAIN_PROGRESS_DELAY=0: every job,
// however short): the dataset read and the model's tensors loaded, in a pipe
// a line each ending at 100%, on a terminal redrawn in place; with the
// default delay a job this short says nothing.
static void test_preparation_progress(void **state) {
    const char *quiet_dir = make_temp_dir("progress-quiet");
    write_recipe(quiet_dir);
    char *quiet = run_and_capture(quiet_dir, "$LORA_TRAIN_BIN --config %s/run.yaml 2>&1 | cat > %s");
    assert_null(strstr(quiet, "(tensors): "));
    const char *dir = make_temp_dir("progress-prepare");
    write_recipe(dir);
    char *piped = run_and_capture(dir, "LORA_TRAIN_PROGRESS_DELAY=0 $LORA_TRAIN_BIN --config %s/run.yaml 2>&1 | "
                                       "cat > %s");
    char reading[2048], loading[2048];
    snprintf(reading, sizeof reading, "reading %s/data.jsonl: 100%% (", dir);
    snprintf(loading, sizeof loading, "loading %s/model (tensors): 100%% (", dir);
    assert_non_null(strstr(piped, reading));
    assert_non_null(strstr(piped, loading));
    assert_null(strchr(piped, '\r'));
    if (run_command("command -v script > /dev/null") == 0) {
        const char *tty_dir = make_temp_dir("progress-prepare-tty");
        write_recipe(tty_dir);
        char *tty = run_and_capture(tty_dir, "script -q -e -c \"LORA_TRAIN_PROGRESS_DELAY=0 $LORA_TRAIN_BIN --config "
                                             "%s/run.yaml\" /dev/null < /dev/null > %s 2>&1");
        snprintf(loading, sizeof loading, "\r\033[Kloading %s/model (tensors): ", tty_dir);
        assert_non_null(strstr(tty, loading));
        free(tty);
    }
    free(quiet), free(piped);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_progress_line_on_a_terminal),
        cmocka_unit_test(test_log_lines_in_a_pipe),
        cmocka_unit_test(test_preparation_progress),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
