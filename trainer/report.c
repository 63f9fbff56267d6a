// `lora-train report RUN_DIR... [--out FILE]`: one line per run from its
// metrics.jsonl (steps, best and final eval loss, tokens/s, peak memory, wall
// time, skipped steps) and one PNG comparing the runs' curves.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "train_private.h"

#define REPORT_RUNS_MAX 16

static void format_hms(double seconds, char *text, size_t size) {
    long s = isfinite(seconds) ? (long)(seconds + 0.5) : 0;
    snprintf(text, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
}

// "1.8072 (100)", or "-" without evaluations.
static void format_best_eval(const RunHistory *h, char *text, size_t size) {
    int best = -1;
    for (int i = 0; i < h->n_evals; i++)
        if (isfinite(h->eval_loss[i]) && (best < 0 || h->eval_loss[i] < h->eval_loss[best])) best = i;
    if (best < 0) snprintf(text, size, "-");
    else snprintf(text, size, "%.4f (%d)", h->eval_loss[best], h->eval_step[best]);
}

static void print_row(const char *name, const RunHistory *h) {
    char best[48], final[32], peak[32], wall[32];
    format_best_eval(h, best, sizeof best);
    if (h->n_evals > 0) snprintf(final, sizeof final, "%.4f", h->eval_loss[h->n_evals - 1]);
    else snprintf(final, sizeof final, "-");
    format_bytes(h->peak_bytes, peak, sizeof peak);
    int last = h->n_steps - 1;
    format_hms(last >= 0 ? h->elapsed_s[last] : 0, wall, sizeof wall);
    printf("%-32s %7d %10.4f %20s %12s %10.0f %12s %10s %8d\n", name, last >= 0 ? h->step[last] : 0,
           last >= 0 ? h->loss[last] : NAN, best, final, last >= 0 ? h->tokens_per_s[last] : NAN, peak, wall,
           h->skipped_steps + h->bad_steps);
}

static int usage(void) {
    fprintf(stderr, "usage: lora-train report RUN_DIR [RUN_DIR...] [--out FILE.png]\n"
                    "  a table of the runs (from each RUN_DIR/metrics.jsonl) and a plot comparing their losses\n"
                    "  (--out, default report.png)\n");
    return 2;
}

int report_main(int argc, char **argv) {
    const char *out = "report.png", *dirs[REPORT_RUNS_MAX];
    int n_runs = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) out = argv[++i];
        else if (argv[i][0] == '-') return usage();
        else if (n_runs == REPORT_RUNS_MAX) return fprintf(stderr, "lora-train report: at most %d runs\n", REPORT_RUNS_MAX), 2;
        else dirs[n_runs++] = argv[i];
    }
    if (n_runs == 0) return usage();
    RunHistory runs[REPORT_RUNS_MAX];
    Error err;
    for (int r = 0; r < n_runs; r++) {
        if (history_read(dirs[r], &runs[r], &err)) continue;
        fprintf(stderr, "lora-train report: %s\n", err.message);
        for (int k = 0; k < r; k++) history_free(&runs[k]);
        return 1;
    }
    printf("%-32s %7s %10s %20s %12s %10s %12s %10s %8s\n", "run", "steps", "last loss", "best eval (step)",
           "final eval", "tokens/s", "peak memory", "wall time", "skipped");
    for (int r = 0; r < n_runs; r++) print_row(dirs[r], &runs[r]);
    bool ok = plot_comparison_png(runs, dirs, n_runs, out, &err);
    if (ok) printf("comparison plot: %s\n", out);
    else fprintf(stderr, "lora-train report: %s\n", err.message);
    for (int r = 0; r < n_runs; r++) history_free(&runs[r]);
    return ok ? 0 : 1;
}
