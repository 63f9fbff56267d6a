// metrics.jsonl and the TensorBoard scalars of a run (rank 0 writes them).
//
// metrics.jsonl: one JSON object a line, per logged step
//   {"step", "epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s", "peak_memory_bytes",
//    "skipped_steps", "bad_steps"}
// and per evaluation
//   {"step", "eval_loss", "eval_perplexity", "eval_token_accuracy", "eval_answer_accuracy", "eval_label_tokens",
//    "eval_answers", "eval_seconds", "elapsed_s"}, robot runs adding "eval_action_accuracy", "eval_action_l1"
//   and "eval_action_tokens" (OpenVLA's action_accuracy and action_l1_loss)
// Non-finite numbers are null. The same scalars go to the event file as
// train/loss, train/lr, train/grad_norm, train/tokens_per_s, eval/loss,
// eval/perplexity, eval/token_accuracy and eval/answer_accuracy (eval/action_accuracy, eval/action_l1).
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

struct MetricsLog {
    FILE *file;
    char path[1100];
    double elapsed_before;
    EventWriter *events;
};

// ----------------------------------------------------------------------------
// keeping the rows of steps up to the resumed one

// The row's step and elapsed_s; false for a line that is no row (a torn last line).
static bool parse_row(const char *line, int *step, double *elapsed_s) {
    json_object *row = json_tokener_parse(line), *value;
    bool ok = row && json_object_is_type(row, json_type_object) && json_object_object_get_ex(row, "step", &value) &&
              json_object_is_type(value, json_type_int);
    if (ok) *step = json_object_get_int(value);
    if (ok && json_object_object_get_ex(row, "elapsed_s", &value)) *elapsed_s = json_object_get_double(value);
    json_object_put(row);
    return ok;
}

// Rewrites path with its rows of steps <= start_step (through a temporary file and a rename).
static bool keep_rows_through(const char *path, int start_step, double *elapsed_before, Error *err) {
    char *text, tmp[1200];
    size_t size;
    if (!read_file(path, &text, &size, err)) return false;
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *out = fopen(tmp, "w");
    if (!out) {
        free(text);
        return fail(err, "%s: %s", tmp, strerror(errno));
    }
    for (char *line = text, *end; *line; line = end + (*end != '\0')) {
        end = line + strcspn(line, "\n");
        char saved = *end;
        *end = '\0';
        int step;
        double elapsed_s = *elapsed_before;
        if (parse_row(line, &step, &elapsed_s) && step <= start_step) {
            fprintf(out, "%s\n", line);
            *elapsed_before = elapsed_s;
        }
        *end = saved;
    }
    free(text);
    if (fclose(out) != 0) return fail(err, "%s: writing failed: %s", tmp, strerror(errno));
    if (rename(tmp, path) != 0) return fail(err, "%s: renaming to %s failed: %s", tmp, path, strerror(errno));
    return true;
}

MetricsLog *metrics_open(const char *run_dir, int start_step, Error *err) {
    MetricsLog *log = checked_calloc(1, sizeof *log, "the metrics log", err);
    if (!log) return NULL;
    snprintf(log->path, sizeof log->path, "%s/%s", run_dir, METRICS_FILE);
    bool ok = start_step == 0 || !path_exists(log->path) ||
              keep_rows_through(log->path, start_step, &log->elapsed_before, err);
    if (ok && !(log->file = fopen(log->path, start_step == 0 ? "w" : "a")))
        ok = fail(err, "%s: %s", log->path, strerror(errno));
    if (ok && !(log->events = event_writer_open(run_dir, start_step, err))) ok = false;
    if (ok) return log;
    metrics_close(log, &(Error){{0}});
    return NULL;
}

double metrics_elapsed_before(const MetricsLog *log) { return log ? log->elapsed_before : 0; }

// ----------------------------------------------------------------------------
// rows

static void put_number(FILE *f, const char *key, double value) {
    if (isfinite(value)) fprintf(f, ", \"%s\": %.10g", key, value);
    else fprintf(f, ", \"%s\": null", key);
}

static bool end_row(MetricsLog *log, Error *err) {
    fputs("}\n", log->file);
    if (fflush(log->file) != 0 || ferror(log->file))
        return fail(err, "%s: writing failed: %s", log->path, strerror(errno));
    return event_writer_flush(log->events, err);
}

bool metrics_log_step(MetricsLog *log, const StepMetrics *m, Error *err) {
    if (!log) return true;
    FILE *f = log->file;
    fprintf(f, "{\"step\": %d, \"epoch\": %d", m->step, m->epoch);
    put_number(f, "loss", m->loss);
    put_number(f, "lr", m->lr);
    put_number(f, "grad_norm", m->grad_norm);
    put_number(f, "tokens", m->tokens);
    put_number(f, "tokens_per_s", m->tokens_per_s);
    put_number(f, "elapsed_s", m->elapsed_s);
    fprintf(f, ", \"peak_memory_bytes\": %llu, \"skipped_steps\": %d, \"bad_steps\": %d",
            (unsigned long long)m->peak_bytes, m->skipped_steps, m->bad_steps);
    EventWriter *events = log->events;
    return event_writer_scalar(events, "train/loss", m->step, m->loss, err) &&
           event_writer_scalar(events, "train/lr", m->step, m->lr, err) &&
           event_writer_scalar(events, "train/grad_norm", m->step, m->grad_norm, err) &&
           event_writer_scalar(events, "train/tokens_per_s", m->step, m->tokens_per_s, err) && end_row(log, err);
}

bool metrics_log_eval(MetricsLog *log, const EvalMetrics *m, Error *err) {
    if (!log) return true;
    FILE *f = log->file;
    fprintf(f, "{\"step\": %d", m->step);
    put_number(f, "eval_loss", m->loss);
    put_number(f, "eval_perplexity", m->perplexity);
    put_number(f, "eval_token_accuracy", m->token_accuracy);
    put_number(f, "eval_answer_accuracy", m->answer_accuracy);
    fprintf(f, ", \"eval_label_tokens\": %lld, \"eval_answers\": %lld", (long long)m->label_tokens,
            (long long)m->answers);
    if (m->has_actions) {
        put_number(f, "eval_action_accuracy", m->action_accuracy);
        put_number(f, "eval_action_l1", m->action_l1);
        fprintf(f, ", \"eval_action_tokens\": %lld", (long long)m->action_tokens);
    }
    put_number(f, "eval_seconds", m->seconds);
    put_number(f, "elapsed_s", m->elapsed_s);
    EventWriter *events = log->events;
    bool actions_ok = !m->has_actions ||
                      (event_writer_scalar(events, "eval/action_accuracy", m->step, m->action_accuracy, err) &&
                       event_writer_scalar(events, "eval/action_l1", m->step, m->action_l1, err));
    return actions_ok && event_writer_scalar(events, "eval/loss", m->step, m->loss, err) &&
           event_writer_scalar(events, "eval/perplexity", m->step, m->perplexity, err) &&
           event_writer_scalar(events, "eval/token_accuracy", m->step, m->token_accuracy, err) &&
           event_writer_scalar(events, "eval/answer_accuracy", m->step, m->answer_accuracy, err) && end_row(log, err);
}

bool metrics_close(MetricsLog *log, Error *err) {
    if (!log) return true;
    bool ok = !log->file || fclose(log->file) == 0 || fail(err, "%s: closing failed: %s", log->path, strerror(errno));
    ok = event_writer_close(log->events, err) && ok;
    free(log);
    return ok;
}

// ----------------------------------------------------------------------------
// reading metrics.jsonl back

static double number_or_nan(json_object *row, const char *key) {
    json_object *value;
    if (!json_object_object_get_ex(row, key, &value) || json_object_is_type(value, json_type_null)) return NAN;
    return json_object_get_double(value);
}

// Arrays for up to n rows of each kind.
static bool allocate_history(RunHistory *h, size_t n, Error *err) {
    h->step = calloc(n, sizeof(int));
    h->eval_step = calloc(n, sizeof(int));
    double **columns[] = {&h->loss,      &h->lr,  &h->tokens_per_s, &h->elapsed_s, &h->eval_loss, &h->eval_token_accuracy,
                          &h->eval_answer_accuracy};
    bool ok = h->step && h->eval_step;
    for (size_t c = 0; c < sizeof columns / sizeof *columns; c++) ok = (*columns[c] = calloc(n, sizeof(double))) && ok;
    return ok || fail(err, "out of memory for %zu rows of metrics", n);
}

static void add_row(RunHistory *h, json_object *row, int step) {
    json_object *value;
    if (json_object_object_get_ex(row, "eval_loss", &value)) {
        h->eval_step[h->n_evals] = step;
        h->eval_loss[h->n_evals] = number_or_nan(row, "eval_loss");
        h->eval_token_accuracy[h->n_evals] = number_or_nan(row, "eval_token_accuracy");
        h->eval_answer_accuracy[h->n_evals++] = number_or_nan(row, "eval_answer_accuracy");
        return;
    }
    int i = h->n_steps++;
    h->step[i] = step;
    h->loss[i] = number_or_nan(row, "loss");
    h->lr[i] = number_or_nan(row, "lr");
    h->tokens_per_s[i] = number_or_nan(row, "tokens_per_s");
    h->elapsed_s[i] = number_or_nan(row, "elapsed_s");
    double peak = number_or_nan(row, "peak_memory_bytes");
    if (peak > (double)h->peak_bytes) h->peak_bytes = (uint64_t)peak;
    h->skipped_steps = (int)number_or_nan(row, "skipped_steps");
    h->bad_steps = (int)number_or_nan(row, "bad_steps");
}

static bool parse_history(const char *path, char *text, RunHistory *h, Error *err) {
    int line_number = 0;
    for (char *line = text, *end; *line; line = end) {
        end = line + strcspn(line, "\n");
        if (*end) *end++ = '\0';
        line_number++;
        json_object *row = json_tokener_parse(line), *step;
        bool ok = row && json_object_object_get_ex(row, "step", &step) && json_object_is_type(step, json_type_int);
        if (ok) add_row(h, row, json_object_get_int(step));
        json_object_put(row);
        if (!ok) return fail(err, "%s:%d: not a metrics row (a JSON object with an integer \"step\")", path, line_number);
    }
    return true;
}

bool history_read(const char *run_dir, RunHistory *history, Error *err) {
    *history = (RunHistory){0};
    char path[1200], *text;
    size_t size;
    snprintf(path, sizeof path, "%s/%s", run_dir, METRICS_FILE);
    if (!path_exists(path)) return fail(err, "%s: no such file (is %s a lora-train run folder?)", path, run_dir);
    if (!read_file(path, &text, &size, err)) return false;
    size_t n_lines = 1;
    for (size_t i = 0; i < size; i++) n_lines += text[i] == '\n';
    bool ok = allocate_history(history, n_lines, err) && parse_history(path, text, history, err);
    free(text);
    if (!ok) history_free(history);
    return ok;
}

void history_free(RunHistory *h) {
    free(h->step);
    free(h->loss);
    free(h->lr);
    free(h->tokens_per_s);
    free(h->elapsed_s);
    free(h->eval_step);
    free(h->eval_loss);
    free(h->eval_token_accuracy);
    free(h->eval_answer_accuracy);
    *h = (RunHistory){0};
}
