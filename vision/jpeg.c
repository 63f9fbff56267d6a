// JPEG -> 8-bit RGB with libjpeg-turbo, matching Pillow 9.4's Image.open(f).convert("RGB"):
// libjpeg's defaults (islow DCT, fancy upsampling), YCbCr/RGB decoded straight to RGB,
// greyscale replicated, CMYK/YCCK decoded to CMYK then, as Pillow ("CMYK;I": Adobe
// inverted samples, then cmyk2rgb):  c = 255 - raw,  nk = 255 - k,
//   out = nk - round(c * nk / 255)  with MULDIV255(a, b) = ((a*b + 128) >> 8 + a*b + 128) >> 8.
// libjpeg's errors longjmp back here; its warnings are silent. Truncated data is an
// error unless allow_truncated: running out of data before the last scanline (libjpeg
// then fakes an EOI, as Pillow with LOAD_TRUNCATED_IMAGES), or a progressive file whose
// scans end (at an EOI) before every coefficient is complete (Pillow decodes it as is).
#include <setjmp.h>
#include <stdio.h>
#include <jpeglib.h>
#include <jerror.h>
#include <stdlib.h>
#include <string.h>

#include "vision/vision_private.h"

typedef struct JpegReader {
    struct jpeg_error_mgr manager; // first, so a j_common_ptr's err is a JpegReader
    jmp_buf escape;
    bool allow_truncated;
    bool reading_scanlines_done;
    char message[JMSG_LENGTH_MAX];
    uint8_t *scanline; // one row of output samples
} JpegReader;

static void on_jpeg_error(j_common_ptr cinfo) {
    JpegReader *r = (JpegReader *)cinfo->err;
    cinfo->err->format_message(cinfo, r->message);
    longjmp(r->escape, 1);
}

// Warnings (level -1) are ignored like Pillow does, except premature end of data.
static void on_jpeg_message(j_common_ptr cinfo, int level) {
    JpegReader *r = (JpegReader *)cinfo->err;
    bool truncated = level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF;
    if (truncated && !r->allow_truncated && !r->reading_scanlines_done) {
        snprintf(r->message, sizeof(r->message),
                 "image data is truncated (premature end of JPEG data)");
        longjmp(r->escape, 1);
    }
}

static void on_jpeg_output(j_common_ptr cinfo) {}

static inline uint8_t muldiv255(int a, int b) {
    int t = a * b + 128;
    return (uint8_t)(((t >> 8) + t) >> 8);
}

static void cmyk_to_rgb(const uint8_t *cmyk, uint8_t *rgb, int width) {
    for (int x = 0; x < width; x++, cmyk += 4, rgb += 3) {
        int nk = cmyk[3]; // 255 - (255 - raw k)
        for (int c = 0; c < 3; c++) rgb[c] = (uint8_t)(nk - muldiv255(255 - cmyk[c], nk));
    }
}

static void row_to_rgb(const uint8_t *row, uint8_t *rgb, int width, int components) {
    if (components == 3) {
        memcpy(rgb, row, (size_t)width * 3);
    } else if (components == 1) {
        for (int x = 0; x < width; x++) memset(rgb + 3 * x, row[x], 3);
    } else {
        cmyk_to_rgb(row, rgb, width);
    }
}

// After jpeg_start_decompress has absorbed every scan: coef_bits[c][k] is the
// successive-approximation bit still missing (-1: never sent, 0: complete).
static bool progression_complete(const struct jpeg_decompress_struct *cinfo) {
    for (int c = 0; c < cinfo->num_components; c++) {
        for (int k = 0; k < DCTSIZE2; k++) {
            if (cinfo->coef_bits[c][k] != 0) return false;
        }
    }
    return true;
}

static J_COLOR_SPACE output_space(J_COLOR_SPACE source) {
    switch (source) {
    case JCS_GRAYSCALE: return JCS_GRAYSCALE;
    case JCS_CMYK:
    case JCS_YCCK: return JCS_CMYK;
    default: return JCS_RGB;
    }
}

// Runs under setjmp: any libjpeg error longjmps out of here.
static bool read_jpeg(struct jpeg_decompress_struct *cinfo, JpegReader *r, const uint8_t *data,
                      size_t n, const char *name, Image *out, Error *err) {
    jpeg_mem_src(cinfo, data, (unsigned long)n);
    jpeg_read_header(cinfo, TRUE);
    if (!check_image_pixels(name, cinfo->image_width, cinfo->image_height, err)) return false;
    cinfo->out_color_space = output_space(cinfo->jpeg_color_space);
    jpeg_start_decompress(cinfo);
    if (cinfo->progressive_mode && !r->allow_truncated && !progression_complete(cinfo)) {
        return fail(err, "%s: invalid JPEG: image data is truncated (progressive scans end "
                         "before every coefficient is complete)", name);
    }
    int width = (int)cinfo->output_width, components = cinfo->output_components;
    if (components != 1 && components != 3 && components != 4) {
        return fail(err, "%s: JPEG with %d output components is not supported", name, components);
    }
    if (!image_alloc(out, width, (int)cinfo->output_height, err)) {
        return fail_context(err, "%s", name);
    }
    r->scanline = checked_malloc((size_t)width * (size_t)components, "JPEG scanline", err);
    if (r->scanline == NULL) return fail_context(err, "%s", name);
    while (cinfo->output_scanline < cinfo->output_height) {
        JSAMPROW row = r->scanline;
        uint8_t *rgb = out->pixels + (size_t)cinfo->output_scanline * (size_t)width * 3;
        if (jpeg_read_scanlines(cinfo, &row, 1) != 1) {
            return fail(err, "%s: libjpeg returned no scanline", name);
        }
        row_to_rgb(r->scanline, rgb, width, components);
    }
    r->reading_scanlines_done = true;
    jpeg_finish_decompress(cinfo);
    return true;
}

bool decode_jpeg(const uint8_t *data, size_t n, const char *name, bool allow_truncated,
                 Image *out, Error *err) {
    JpegReader *r = checked_calloc(1, sizeof(*r), "JPEG reader", err);
    if (r == NULL) return fail_context(err, "%s", name);
    struct jpeg_decompress_struct *cinfo = checked_calloc(1, sizeof(*cinfo), "JPEG decoder", err);
    if (cinfo == NULL) {
        free(r);
        return fail_context(err, "%s", name);
    }
    r->allow_truncated = allow_truncated;
    cinfo->err = jpeg_std_error(&r->manager);
    r->manager.error_exit = on_jpeg_error;
    r->manager.emit_message = on_jpeg_message;
    r->manager.output_message = on_jpeg_output;
    bool ok = false;
    if (setjmp(r->escape) == 0) {
        jpeg_create_decompress(cinfo);
        ok = read_jpeg(cinfo, r, data, n, name, out, err);
    } else {
        fail(err, "%s: invalid JPEG: %s", name, r->message);
    }
    jpeg_destroy_decompress(cinfo);
    if (!ok) image_free(out);
    free(r->scanline);
    free(cinfo);
    free(r);
    return ok;
}
