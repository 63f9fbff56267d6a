// Loss curves as PNG, drawn with cairo: loss.png of one run, and the
// comparison `lora-train report` draws. Layout (pixels): the plot area inside
// margins, loss on the left axis, the learning rate on the right one, steps
// along the bottom, "nice" ticks (1, 2, 5 x 10^k), a legend in the top right.
#include <cairo.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

#define MARGIN_LEFT 80
#define MARGIN_RIGHT 90
#define MARGIN_TOP 50
#define MARGIN_BOTTOM 60
#define TARGET_TICKS 6
#define SMOOTHING 0.9 // exponential moving average weight, debiased as TensorBoard's

typedef struct Rgb {
    double r, g, b;
} Rgb;

static const Rgb RAW_LOSS = {0.65, 0.78, 0.93}, SMOOTH_LOSS = {0.12, 0.38, 0.72}, EVAL_LOSS = {0.90, 0.42, 0.05},
                 LEARNING_RATE = {0.20, 0.60, 0.25}, AXES = {0.15, 0.15, 0.15}, GRID = {0.90, 0.90, 0.90};
static const Rgb RUN_COLOURS[] = {{0.12, 0.38, 0.72}, {0.90, 0.42, 0.05}, {0.20, 0.60, 0.25},
                                  {0.75, 0.15, 0.20}, {0.50, 0.30, 0.70}, {0.45, 0.45, 0.45}};

// A value range mapped onto a pixel range.
typedef struct Axis {
    double lo, hi;       // values
    double from, to;     // pixels (y: from the bottom up)
} Axis;

static double to_pixel(const Axis *axis, double value) {
    return axis->from + (value - axis->lo) / (axis->hi - axis->lo) * (axis->to - axis->from);
}

// 1, 2 or 5 x 10^k: about TARGET_TICKS steps over range.
static double nice_tick(double range) {
    double raw = range / TARGET_TICKS, magnitude = pow(10, floor(log10(raw))), normal = raw / magnitude;
    return (normal < 1.5 ? 1 : normal < 3 ? 2 : normal < 7 ? 5 : 10) * magnitude;
}

// Widens [lo, hi] to whole ticks (a flat series gets a band around it).
static void snap_to_ticks(Axis *axis) {
    if (!(axis->hi > axis->lo)) {
        double pad = fabs(axis->lo) * 0.1 + 1e-9;
        axis->lo -= pad;
        axis->hi += pad;
    }
    double tick = nice_tick(axis->hi - axis->lo);
    axis->lo = floor(axis->lo / tick) * tick;
    axis->hi = ceil(axis->hi / tick) * tick;
}

static void set_colour(cairo_t *cr, Rgb colour) { cairo_set_source_rgb(cr, colour.r, colour.g, colour.b); }

static void draw_text(cairo_t *cr, const char *text, double x, double y, double align_x, double align_y) {
    cairo_text_extents_t extents;
    cairo_text_extents(cr, text, &extents);
    cairo_move_to(cr, x - align_x * extents.width - extents.x_bearing, y - align_y * extents.height - extents.y_bearing);
    cairo_show_text(cr, text);
}

static void tick_label(double value, double tick, char *text, size_t size) {
    if (fabs(value) < tick * 1e-6) value = 0;
    if (tick >= 1 && fabs(value) < 1e6) snprintf(text, size, "%.0f", value);
    else if (tick >= 0.01 && fabs(value) < 1e3) snprintf(text, size, "%.*f", tick >= 0.1 ? 1 : 2, value);
    else snprintf(text, size, "%.1e", value);
}

// Ticks, labels and grid lines of one axis; side: 'b'ottom, 'l'eft or 'r'ight.
static void draw_ticks(cairo_t *cr, const Axis *axis, char side, double grid_from, double grid_to) {
    double tick = nice_tick(axis->hi - axis->lo);
    for (double value = axis->lo; value <= axis->hi + tick * 1e-6; value += tick) {
        double at = to_pixel(axis, value);
        char label[32];
        tick_label(value, tick, label, sizeof label);
        if (side != 'r') {
            set_colour(cr, GRID);
            cairo_set_line_width(cr, 1);
            if (side == 'b') cairo_move_to(cr, at, grid_from), cairo_line_to(cr, at, grid_to);
            else cairo_move_to(cr, grid_from, at), cairo_line_to(cr, grid_to, at);
            cairo_stroke(cr);
        }
        set_colour(cr, AXES);
        if (side == 'b') draw_text(cr, label, at, PLOT_HEIGHT - MARGIN_BOTTOM + 8, 0.5, 0);
        if (side == 'l') draw_text(cr, label, MARGIN_LEFT - 8, at, 1, 0.5);
        if (side == 'r') draw_text(cr, label, PLOT_WIDTH - MARGIN_RIGHT + 8, at, 0, 0.5);
    }
}

static void draw_frame(cairo_t *cr, const char *title, const char *left_label, const char *right_label) {
    set_colour(cr, AXES);
    cairo_set_line_width(cr, 1.5);
    cairo_rectangle(cr, MARGIN_LEFT, MARGIN_TOP, PLOT_WIDTH - MARGIN_LEFT - MARGIN_RIGHT,
                    PLOT_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM);
    cairo_stroke(cr);
    cairo_set_font_size(cr, 18);
    draw_text(cr, title, PLOT_WIDTH / 2.0, 18, 0.5, 0);
    cairo_set_font_size(cr, 14);
    draw_text(cr, "step", (MARGIN_LEFT + PLOT_WIDTH - MARGIN_RIGHT) / 2.0, PLOT_HEIGHT - 22, 0.5, 0);
    double middle = (MARGIN_TOP + PLOT_HEIGHT - MARGIN_BOTTOM) / 2.0;
    cairo_save(cr);
    cairo_translate(cr, 20, middle);
    cairo_rotate(cr, -M_PI / 2);
    draw_text(cr, left_label, 0, 0, 0.5, 0.5);
    cairo_restore(cr);
    if (!right_label) return;
    cairo_save(cr);
    cairo_translate(cr, PLOT_WIDTH - 18, middle);
    cairo_rotate(cr, M_PI / 2);
    draw_text(cr, right_label, 0, 0, 0.5, 0.5);
    cairo_restore(cr);
}

// A polyline through the finite points; dashed or not; with points or not.
static void draw_series(cairo_t *cr, const Axis *x, const Axis *y, const int *steps, const double *values, int n,
                        Rgb colour, double width, bool dashed, bool points) {
    set_colour(cr, colour);
    cairo_set_line_width(cr, width);
    double dash = 6;
    cairo_set_dash(cr, &dash, dashed ? 1 : 0, 0);
    bool drawing = false;
    for (int i = 0; i < n; i++) {
        if (!isfinite(values[i])) {
            drawing = false;
            continue;
        }
        double px = to_pixel(x, steps[i]), py = to_pixel(y, values[i]);
        if (drawing) cairo_line_to(cr, px, py);
        else cairo_move_to(cr, px, py);
        drawing = true;
    }
    cairo_stroke(cr);
    cairo_set_dash(cr, NULL, 0, 0);
    for (int i = 0; points && i < n; i++) {
        if (!isfinite(values[i])) continue;
        cairo_arc(cr, to_pixel(x, steps[i]), to_pixel(y, values[i]), 4, 0, 2 * M_PI);
        cairo_fill(cr);
    }
}

static void legend_entry(cairo_t *cr, int row, const char *label, Rgb colour, bool dashed) {
    double x = PLOT_WIDTH - MARGIN_RIGHT - 230, y = MARGIN_TOP + 18 + 20 * row;
    set_colour(cr, colour);
    cairo_set_line_width(cr, 3);
    double dash = 6;
    cairo_set_dash(cr, &dash, dashed ? 1 : 0, 0);
    cairo_move_to(cr, x, y);
    cairo_line_to(cr, x + 30, y);
    cairo_stroke(cr);
    cairo_set_dash(cr, NULL, 0, 0);
    set_colour(cr, AXES);
    cairo_set_font_size(cr, 13);
    draw_text(cr, label, x + 38, y, 0, 0.5);
}

// Debiased exponential moving average (TensorBoard's smoothing), skipping non-finite values.
static void smooth(const double *values, int n, double *out) {
    double average = 0, weight = 0;
    for (int i = 0; i < n; i++) {
        if (isfinite(values[i])) {
            average = SMOOTHING * average + (1 - SMOOTHING) * values[i];
            weight = SMOOTHING * weight + (1 - SMOOTHING);
        }
        out[i] = weight > 0 ? average / weight : NAN;
    }
}

static void extend(Axis *axis, const double *values, int n) {
    for (int i = 0; i < n; i++) {
        if (!isfinite(values[i])) continue;
        if (values[i] < axis->lo) axis->lo = values[i];
        if (values[i] > axis->hi) axis->hi = values[i];
    }
}

static Axis step_axis(const RunHistory *runs, int n_runs) {
    Axis x = {.lo = 0, .hi = 1, .from = MARGIN_LEFT, .to = PLOT_WIDTH - MARGIN_RIGHT};
    for (int r = 0; r < n_runs; r++) {
        for (int i = 0; i < runs[r].n_steps; i++) x.hi = fmax(x.hi, runs[r].step[i]);
        for (int i = 0; i < runs[r].n_evals; i++) x.hi = fmax(x.hi, runs[r].eval_step[i]);
    }
    snap_to_ticks(&x);
    return x;
}

static Axis empty_value_axis(void) {
    return (Axis){.lo = INFINITY, .hi = -INFINITY, .from = PLOT_HEIGHT - MARGIN_BOTTOM, .to = MARGIN_TOP};
}

static void finish_value_axis(Axis *axis) {
    if (!isfinite(axis->lo)) axis->lo = 0, axis->hi = 1;
    snap_to_ticks(axis);
}

// The image surface, white; *cr draws on it.
static cairo_surface_t *blank_canvas(cairo_t **cr) {
    cairo_surface_t *surface = cairo_image_surface_create(CAIRO_FORMAT_RGB24, PLOT_WIDTH, PLOT_HEIGHT);
    *cr = cairo_create(surface);
    cairo_set_source_rgb(*cr, 1, 1, 1);
    cairo_paint(*cr);
    cairo_select_font_face(*cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    return surface;
}

// Writes the PNG through a temporary name, so a reader never sees half of it.
static bool finish_png(cairo_surface_t *surface, cairo_t *cr, const char *path, Error *err) {
    char tmp[1200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    cairo_status_t status = cairo_status(cr);
    cairo_destroy(cr);
    if (status == CAIRO_STATUS_SUCCESS) status = cairo_surface_write_to_png(surface, tmp);
    cairo_surface_destroy(surface);
    if (status != CAIRO_STATUS_SUCCESS) return fail(err, "%s: drawing failed: %s", path, cairo_status_to_string(status));
    if (rename(tmp, path) != 0) return fail(err, "%s: renaming %s failed", path, tmp);
    return true;
}

bool plot_loss_png(const RunHistory *h, const char *title, const char *path, Error *err) {
    double *smoothed = checked_malloc((size_t)(h->n_steps + 1) * sizeof(double), "the smoothed loss", err);
    if (!smoothed) return false;
    smooth(h->loss, h->n_steps, smoothed);
    cairo_t *cr;
    cairo_surface_t *surface = blank_canvas(&cr);
    Axis x = step_axis(h, 1), loss = empty_value_axis(), lr = empty_value_axis();
    extend(&loss, h->loss, h->n_steps);
    extend(&loss, h->eval_loss, h->n_evals);
    finish_value_axis(&loss);
    lr.lo = 0;
    extend(&lr, h->lr, h->n_steps);
    finish_value_axis(&lr);
    cairo_set_font_size(cr, 12);
    draw_ticks(cr, &x, 'b', MARGIN_TOP, PLOT_HEIGHT - MARGIN_BOTTOM);
    draw_ticks(cr, &loss, 'l', MARGIN_LEFT, PLOT_WIDTH - MARGIN_RIGHT);
    draw_ticks(cr, &lr, 'r', 0, 0);
    draw_series(cr, &x, &lr, h->step, h->lr, h->n_steps, LEARNING_RATE, 1.5, true, false);
    draw_series(cr, &x, &loss, h->step, h->loss, h->n_steps, RAW_LOSS, 1, false, false);
    draw_series(cr, &x, &loss, h->step, smoothed, h->n_steps, SMOOTH_LOSS, 2.5, false, false);
    draw_series(cr, &x, &loss, h->eval_step, h->eval_loss, h->n_evals, EVAL_LOSS, 2, false, true);
    draw_frame(cr, title, "loss (per label token)", "learning rate");
    legend_entry(cr, 0, "training loss", RAW_LOSS, false);
    legend_entry(cr, 1, "training loss, smoothed", SMOOTH_LOSS, false);
    legend_entry(cr, 2, "eval loss", EVAL_LOSS, false);
    legend_entry(cr, 3, "learning rate (right axis)", LEARNING_RATE, true);
    free(smoothed);
    return finish_png(surface, cr, path, err);
}

bool plot_comparison_png(const RunHistory *runs, const char *const *names, int n_runs, const char *path, Error *err) {
    cairo_t *cr;
    cairo_surface_t *surface = blank_canvas(&cr);
    Axis x = step_axis(runs, n_runs), loss = empty_value_axis();
    for (int r = 0; r < n_runs; r++) {
        extend(&loss, runs[r].loss, runs[r].n_steps);
        extend(&loss, runs[r].eval_loss, runs[r].n_evals);
    }
    finish_value_axis(&loss);
    cairo_set_font_size(cr, 12);
    draw_ticks(cr, &x, 'b', MARGIN_TOP, PLOT_HEIGHT - MARGIN_BOTTOM);
    draw_ticks(cr, &loss, 'l', MARGIN_LEFT, PLOT_WIDTH - MARGIN_RIGHT);
    int n_colours = sizeof RUN_COLOURS / sizeof *RUN_COLOURS;
    for (int r = 0; r < n_runs; r++) {
        const RunHistory *h = &runs[r];
        double *smoothed = checked_malloc((size_t)(h->n_steps + 1) * sizeof(double), "the smoothed loss", err);
        if (!smoothed) {
            cairo_destroy(cr);
            cairo_surface_destroy(surface);
            return false;
        }
        smooth(h->loss, h->n_steps, smoothed);
        Rgb colour = RUN_COLOURS[r % n_colours];
        draw_series(cr, &x, &loss, h->step, smoothed, h->n_steps, colour, 2.5, false, false);
        free(smoothed);
        draw_series(cr, &x, &loss, h->eval_step, h->eval_loss, h->n_evals, colour, 1.5, true, true);
        char label[96];
        snprintf(label, sizeof label, "%.80s", names[r]);
        legend_entry(cr, r, label, colour, false);
    }
    draw_frame(cr, "training loss (smoothed, solid) and eval loss (dashed, points)", "loss (per label token)", NULL);
    return finish_png(surface, cr, path, err);
}
