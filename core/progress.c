// core: progress lines for long preparation (core.h).
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "core.h"

static bool quiet;

void progress_set_quiet(bool on) { quiet = on; }

static double delay_seconds(void) {
    const char *text = getenv("LORA_TRAIN_PROGRESS_DELAY");
    return text && text[0] ? atof(text) : PROGRESS_DELAY_S;
}

void progress_begin(Progress *p, const char *what, double total, bool bytes) {
    double now = time_seconds();
    *p = (Progress){.what = what, .total = total > 0 ? total : 1, .start = now, .next_draw = now + delay_seconds(),
                    .bytes = bytes, .terminal = isatty(STDERR_FILENO) == 1};
}

// "what: 45% (3.20 / 7.10 GB, 12 s)", "(0.4 / 1.0 MB, 0 s)" or "(4500 / 10000, 12 s)"
static void say(Progress *p, double done, bool last) {
    double percent = 100.0 * done / p->total, elapsed = time_seconds() - p->start;
    char amount[64];
    bool gigabytes = p->total >= 1e9;
    double unit = gigabytes ? 1e9 : 1e6;
    if (p->bytes) snprintf(amount, sizeof amount, "%.*f / %.*f %s", gigabytes ? 2 : 1, done / unit, gigabytes ? 2 : 1,
                           p->total / unit, gigabytes ? "GB" : "MB");
    else snprintf(amount, sizeof amount, "%.0f / %.0f", done, p->total);
    fprintf(stderr, "%s%s: %3.0f%% (%s, %.0f s)%s", p->terminal ? "\r\033[K" : "", p->what, percent, amount, elapsed,
            p->terminal && !last ? "" : "\n");
    fflush(stderr);
    p->shown = true;
}

void progress_update(Progress *p, double done) {
    if (quiet) return;
    double now = time_seconds();
    if (now < p->next_draw) return;
    int tenths = (int)(10.0 * done / p->total);
    if (!p->terminal && p->shown && tenths <= p->tenths_said) return;
    p->tenths_said = tenths;
    p->next_draw = now + 0.25;
    say(p, done, false);
}

void progress_end(Progress *p) {
    if (!quiet && p->shown) say(p, p->total, true);
}
