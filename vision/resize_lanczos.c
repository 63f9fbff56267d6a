// TensorFlow's tf.image.resize(method="lanczos3", antialias=True) (the
// ScaleAndTranslate kernel) on 8-bit RGB, then tf.round (half to even), clip
// to [0, 255] and uint8: how OpenVLA's RLDS pipeline (Octo's dlimp) brings
// every training image to the model's size before its image processor.
// Per output pixel x of a dimension, scale = out / in, in float32:
//   sample = (x + 0.5) / scale, kernel_scale = max(1 / scale, 1)
//   taps [ceil(sample - 3 ks - 0.5), floor(sample + 3 ks - 0.5)] clamped to [0, in)
//   w_i = lanczos3(|i + 0.5 - sample| / ks), normalised to sum 1
// Columns first into a float (in_h, out_w) image, then rows; fp32 sums in tap order.
#include <math.h>
#include <stdlib.h>

#include "vision/vision.h"

#define LANCZOS_RADIUS 3.0f

typedef struct Spans {
    int span_size;  // the most taps of any output pixel
    int *starts;    // (out) first source index
    float *weights; // (out, span_size), zero past a pixel's own taps
} Spans;

// TensorFlow's LanczosKernelFunc with radius 3.
static float lanczos3(float x) {
    const float pi = 3.14159265359f;
    x = fabsf(x);
    if (x > LANCZOS_RADIUS) return 0.0f;
    if (x <= 1e-3f) return 1.0f;
    return LANCZOS_RADIUS * sinf(pi * x) * sinf(pi * x / LANCZOS_RADIUS) / (pi * pi * x * x);
}

static bool compute_spans(int in_size, int out_size, Spans *s, Error *err) {
    float scale = (float)out_size / (float)in_size, inv_scale = 1.0f / scale;
    float kernel_scale = inv_scale > 1.0f ? inv_scale : 1.0f;
    int widest = 2 * (int)ceilf(LANCZOS_RADIUS * kernel_scale) + 1;
    s->span_size = widest < in_size ? widest : in_size;
    s->starts = calloc((size_t)out_size, sizeof(int));
    s->weights = calloc((size_t)out_size * s->span_size, sizeof(float));
    if (!s->starts || !s->weights) return fail(err, "lanczos3 resize: out of memory");
    for (int x = 0; x < out_size; x++) {
        float sample = ((float)x + 0.5f) * inv_scale;
        int start = (int)ceilf(sample - LANCZOS_RADIUS * kernel_scale - 0.5f);
        int end = (int)floorf(sample + LANCZOS_RADIUS * kernel_scale - 0.5f);
        start = start < 0 ? 0 : start > in_size - 1 ? in_size - 1 : start;
        end = (end < 0 ? 0 : end > in_size - 1 ? in_size - 1 : end) + 1;
        float *w = s->weights + (size_t)x * s->span_size, total = 0.0f;
        for (int i = start; i < end && i - start < s->span_size; i++) {
            w[i - start] = lanczos3(fabsf(((float)i + 0.5f - sample) / kernel_scale));
            total += w[i - start];
        }
        if (fabsf(total) >= 1000.0f * 1.17549435e-38f) {
            float inv_total = 1.0f / total;
            for (int i = 0; i < end - start && i < s->span_size; i++) w[i] *= inv_total;
        }
        s->starts[x] = start;
    }
    return true;
}

static void free_spans(Spans *s) {
    free(s->starts);
    free(s->weights);
}

// One output value: sum over the taps of w * v, in tap order (stride: elements between taps).
static float gather(const Spans *s, int x, int in_size, const float *v, size_t stride) {
    int start = s->starts[x], taps = start + s->span_size < in_size ? s->span_size : in_size - start;
    const float *w = s->weights + (size_t)x * s->span_size;
    float sum = 0.0f;
    for (int i = 0; i < taps; i++) sum += w[i] * v[(size_t)(start + i) * stride];
    return sum;
}

bool image_resize_lanczos3_tf(const Image *in, int width, int height, Image *out, Error *err) {
    Spans cols = {0}, rows = {0};
    size_t n_in = (size_t)in->width * in->height * 3, n_mid = (size_t)in->height * width * 3;
    float *pixels = malloc(n_in * sizeof(float)), *mid = malloc(n_mid * sizeof(float));
    bool ok = pixels && mid ? true : fail(err, "lanczos3 resize: out of memory");
    ok = ok && compute_spans(in->width, width, &cols, err) && compute_spans(in->height, height, &rows, err) &&
         image_alloc(out, width, height, err);
    if (ok) {
        for (size_t i = 0; i < n_in; i++) pixels[i] = (float)in->pixels[i];
        for (int y = 0; y < in->height; y++) // columns: (in_h, in_w) -> (in_h, width)
            for (int x = 0; x < width; x++)
                for (int c = 0; c < 3; c++)
                    mid[((size_t)y * width + x) * 3 + c] =
                        gather(&cols, x, in->width, pixels + (size_t)y * in->width * 3 + c, 3);
        for (int y = 0; y < height; y++) // rows: (in_h, width) -> (height, width), rounded half to even
            for (int x = 0; x < width; x++)
                for (int c = 0; c < 3; c++) {
                    float v = nearbyintf(gather(&rows, y, in->height, mid + (size_t)x * 3 + c, (size_t)width * 3));
                    out->pixels[((size_t)y * width + x) * 3 + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
                }
    }
    free(pixels);
    free(mid);
    free_spans(&cols);
    free_spans(&rows);
    return ok;
}
