// Pillow's Image.resize(size, Image.BICUBIC) on 8-bit RGB, bit-exact.
// Separable: a horizontal pass over the source rows the vertical pass needs, 8-bit
// clipped, then a vertical pass. Per output pixel x of a pass with scale = in / out:
//   center = (x + 0.5) * scale, fs = max(scale, 1), support = 2 * fs
//   taps i in [int(center - support + 0.5), int(center + support + 0.5)) clamped to [0, in)
//   w_i = cubic((i - center + 0.5) * (1 / fs)), a = -0.5, normalized to sum 1, then
//   fixed point: round-half-away(w_i * 2^22); out = clip8((2^21 + sum v_i w_i) >> 22).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vision/vision.h"

#define PRECISION_BITS (32 - 8 - 2) // 8 bits of pixel, 2 of headroom for negative lobes

typedef struct ResampleWeights {
    int taps;        // kernel width: 2 * ceil(support) + 1
    int *bounds;     // [out][2]: first source index, number of taps used
    int32_t *kernel; // [out][taps]: fixed-point weights
} ResampleWeights;

static double cubic(double x) {
    const double a = -0.5;
    x = fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
    return 0.0;
}

static int32_t to_fixed(double w) {
    double scaled = w * (double)(1 << PRECISION_BITS);
    return (int32_t)(w < 0 ? scaled - 0.5 : scaled + 0.5);
}

static void free_weights(ResampleWeights *w) {
    free(w->bounds);
    free(w->kernel);
}

static bool compute_weights(int in_size, int out_size, ResampleWeights *w, Error *err) {
    double scale = (double)in_size / out_size;
    double filter_scale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filter_scale;
    double inverse_scale = 1.0 / filter_scale; // Pillow multiplies by the reciprocal
    w->taps = (int)ceil(support) * 2 + 1;
    w->bounds = checked_malloc(sizeof(int) * 2 * (size_t)out_size, "resize bounds", err);
    w->kernel = checked_calloc((size_t)out_size * (size_t)w->taps, sizeof(int32_t),
                               "resize kernel", err);
    double *real = checked_malloc(sizeof(double) * (size_t)w->taps, "resize weights", err);
    if (w->bounds == NULL || w->kernel == NULL || real == NULL) {
        free(real);
        free_weights(w);
        return false;
    }
    for (int x = 0; x < out_size; x++) {
        double center = (x + 0.5) * scale;
        int lo = (int)(center - support + 0.5);
        int hi = (int)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in_size) hi = in_size;
        double total = 0.0;
        for (int i = 0; i < hi - lo; i++) {
            real[i] = cubic((i + lo - center + 0.5) * inverse_scale);
            total += real[i];
        }
        for (int i = 0; i < hi - lo; i++) {
            w->kernel[(size_t)x * w->taps + i] = to_fixed(total != 0.0 ? real[i] / total : real[i]);
        }
        w->bounds[2 * x] = lo;
        w->bounds[2 * x + 1] = hi - lo;
    }
    free(real);
    return true;
}

static inline uint8_t clip8(int32_t v) {
    if (v >= (1 << PRECISION_BITS << 8)) return 255;
    if (v <= 0) return 0;
    return (uint8_t)(v >> PRECISION_BITS);
}

// out (out->height rows) = horizontal resample of in's rows y_first.. .
static void resample_horizontal(const Image *in, int y_first, const ResampleWeights *w,
                                Image *out) {
    for (int y = 0; y < out->height; y++) {
        const uint8_t *src = in->pixels + (size_t)(y + y_first) * in->width * 3;
        uint8_t *dst = out->pixels + (size_t)y * out->width * 3;
        for (int x = 0; x < out->width; x++) {
            const int32_t *k = w->kernel + (size_t)x * w->taps;
            const uint8_t *s = src + (size_t)w->bounds[2 * x] * 3;
            int32_t r = 1 << (PRECISION_BITS - 1), g = r, b = r;
            for (int i = 0; i < w->bounds[2 * x + 1]; i++, s += 3) {
                r += s[0] * k[i];
                g += s[1] * k[i];
                b += s[2] * k[i];
            }
            dst[3 * x + 0] = clip8(r);
            dst[3 * x + 1] = clip8(g);
            dst[3 * x + 2] = clip8(b);
        }
    }
}

// out = vertical resample of in, whose row 0 is source row y_first.
static void resample_vertical(const Image *in, int y_first, const ResampleWeights *w, Image *out) {
    size_t stride = (size_t)in->width * 3;
    for (int y = 0; y < out->height; y++) {
        const int32_t *k = w->kernel + (size_t)y * w->taps;
        const uint8_t *top = in->pixels + (size_t)(w->bounds[2 * y] - y_first) * stride;
        uint8_t *dst = out->pixels + (size_t)y * stride;
        for (size_t c = 0; c < stride; c++) {
            int32_t v = 1 << (PRECISION_BITS - 1);
            for (int i = 0; i < w->bounds[2 * y + 1]; i++) v += top[i * stride + c] * k[i];
            dst[c] = clip8(v);
        }
    }
}

static bool image_copy(const Image *in, Image *out, Error *err) {
    if (!image_alloc(out, in->width, in->height, err)) return false;
    memcpy(out->pixels, in->pixels, (size_t)in->width * in->height * 3);
    return true;
}

static bool resample(const Image *in, const ResampleWeights *horiz, const ResampleWeights *vert,
                     int width, int height, Image *out, Error *err) {
    // source rows the vertical pass reads
    int y_first = vert->bounds[0];
    int y_last = vert->bounds[2 * height - 2] + vert->bounds[2 * height - 1];
    Image rows = {0};
    const Image *src = in;
    if (width != in->width) {
        if (!image_alloc(&rows, width, y_last - y_first, err)) return false;
        resample_horizontal(in, y_first, horiz, &rows);
        src = &rows;
    } else {
        y_first = 0;
    }
    bool ok = true;
    if (height != in->height) {
        ok = image_alloc(out, width, height, err);
        if (ok) resample_vertical(src, y_first, vert, out);
    } else if (src == &rows) {
        *out = rows;
        return true;
    } else {
        ok = image_copy(in, out, err);
    }
    image_free(&rows);
    return ok;
}

bool image_resize_bicubic(const Image *in, int width, int height, Image *out, Error *err) {
    *out = (Image){0};
    if (width <= 0 || height <= 0) {
        return fail(err, "resize of a %dx%d image to %dx%d: invalid size", in->width, in->height,
                    width, height);
    }
    ResampleWeights horiz = {0}, vert = {0};
    bool ok = compute_weights(in->width, width, &horiz, err) &&
              compute_weights(in->height, height, &vert, err) &&
              resample(in, &horiz, &vert, width, height, out, err);
    free_weights(&horiz);
    free_weights(&vert);
    if (!ok) fail_context(err, "resizing %dx%d to %dx%d", in->width, in->height, width, height);
    return ok;
}
