// trainer (private): what a run writes for people to read (rank 0), in its
// folder beside the checkpoints: metrics.jsonl, a TensorBoard event file,
// loss.png.
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "../core/core.h"

#define METRICS_FILE "metrics.jsonl"

// One logged optimizer step.
typedef struct StepMetrics {
    int step;               // 1-based
    int epoch;
    double loss, lr, grad_norm;
    double tokens;          // tokens the step processed (padding included, all ranks)
    double tokens_per_s;    // since this process started training
    double elapsed_s;       // wall time of the run, resumed processes included
    uint64_t peak_bytes;    // the backend's peak allocation so far
    int skipped_steps, bad_steps;
} StepMetrics;

// One evaluation on the held-out data.
typedef struct EvalMetrics {
    int step;
    double loss, perplexity, token_accuracy, answer_accuracy;
    int64_t label_tokens, answers;
    double seconds, elapsed_s;
    bool has_actions;                // robot runs: the action metrics below are logged
    double action_accuracy, action_l1;
    int64_t action_tokens;
} EvalMetrics;

// ----------------------------------------------------------------------------
// TensorBoard event files (tfevents.c): TFRecord framing (length, masked
// CRC-32C of the length, an Event protobuf, its masked CRC-32C), Events with
// one scalar Summary.Value (tag, simple_value) each

typedef struct EventWriter EventWriter;

// Creates run_dir/events.out.tfevents.<seconds>.<host>.<pid>.<n> with the
// file_version event and a SessionLog START at start_step + 1, by which
// TensorBoard drops the folder's older files' events from that step on: those
// of the steps an interrupted process ran past its checkpoint, or all of an
// earlier run's in the same folder when this one starts afresh.
EventWriter *event_writer_open(const char *run_dir, int start_step, Error *err);
bool event_writer_scalar(EventWriter *writer, const char *tag, int64_t step, double value, Error *err);
// Flushes the file (a reader sees every event written so far).
bool event_writer_flush(EventWriter *writer, Error *err);
bool event_writer_close(EventWriter *writer, Error *err);

// ----------------------------------------------------------------------------
// metrics.jsonl and the event file together (metrics.c)

typedef struct MetricsLog MetricsLog;

// Opens the run folder's logs for a run continuing after start_step: rows
// of metrics.jsonl for later steps (written by a process that stopped past
// its last checkpoint) are dropped, earlier ones kept, so a resumed run has
// one row per step; a new run (start_step 0) starts the file afresh.
MetricsLog *metrics_open(const char *run_dir, int start_step, Error *err);
// Run time before this process: elapsed_s of the last row kept.
double metrics_elapsed_before(const MetricsLog *log);
bool metrics_log_step(MetricsLog *log, const StepMetrics *step, Error *err);
bool metrics_log_eval(MetricsLog *log, const EvalMetrics *eval, Error *err);
bool metrics_close(MetricsLog *log, Error *err);

// ----------------------------------------------------------------------------
// reading a run back (metrics.c) and drawing it (plot.c, cairo)

// A run's metrics.jsonl: its logged steps and its evaluations, in file order.
typedef struct RunHistory {
    int n_steps;
    int *step;                       // (n_steps,)
    double *loss, *lr, *tokens_per_s, *elapsed_s;
    uint64_t peak_bytes;             // the largest peak_memory_bytes
    int skipped_steps, bad_steps;    // of the last row
    int n_evals;
    int *eval_step;                  // (n_evals,)
    double *eval_loss, *eval_token_accuracy, *eval_answer_accuracy;
} RunHistory;

// Reads run_dir/metrics.jsonl; a line that is not a row is an error naming the file and line.
bool history_read(const char *run_dir, RunHistory *history, Error *err);
void history_free(RunHistory *history);

#define PLOT_WIDTH 1000
#define PLOT_HEIGHT 600

// loss.png: training loss (raw, thin, and smoothed), eval loss (points),
// learning rate on its own right-hand axis, ticks, labels, the title.
bool plot_loss_png(const RunHistory *history, const char *title, const char *path, Error *err);
// The runs' smoothed training losses (solid) and eval losses (dashed with points), one colour per run.
bool plot_comparison_png(const RunHistory *runs, const char *const *names, int n_runs, const char *path, Error *err);
