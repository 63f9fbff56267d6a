// PNG -> 8-bit RGB with libpng, matching Pillow 9.4's Image.open(f).convert("RGB"):
//   grey 1/2/4-bit   v * 255 / (2^depth - 1)          (Pillow modes "1", "L;2", "L;4")
//   grey 16-bit      min(v, 255)                      (Pillow mode "I", i2rgb clips)
//   other 16-bit     high byte                        (rawmodes "RGB;16B", "LA;16B", ...)
//   palette          PLTE lookup; indices past PLTE give (i, i, i) like Pillow's default palette
//   alpha, tRNS      dropped, no compositing; gAMA/iCCP ignored
// libpng reports errors by longjmp; every failure becomes an Error naming the file.
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vision/vision_private.h"

typedef struct PngReader {
    const uint8_t *data;
    size_t size;
    size_t offset;
    char message[256];
    uint8_t *raw;     // decoded rows: height x rowbytes, one byte per sample below 8 bits
    png_bytep *rows;  // row pointers into raw
} PngReader;

typedef struct PngLayout {
    int channels;            // samples per pixel: 1 grey/palette, 2 grey+alpha, 3 RGB, 4 RGBA
    int depth;               // bits per sample: 1, 2, 4, 8 or 16
    bool palette;
    uint8_t lookup[256][3];  // palette colours, grey ramp beyond the PLTE entries
} PngLayout;

static void on_png_error(png_structp png, png_const_charp message) {
    PngReader *r = png_get_error_ptr(png);
    snprintf(r->message, sizeof(r->message), "%s", message);
    png_longjmp(png, 1);
}

static void on_png_warning(png_structp png, png_const_charp message) {}

static void read_png_bytes(png_structp png, png_bytep dst, png_size_t n) {
    PngReader *r = png_get_io_ptr(png);
    if (n > r->size - r->offset) png_error(png, "unexpected end of data (file truncated)");
    memcpy(dst, r->data + r->offset, n);
    r->offset += n;
}

static void build_palette(png_structp png, png_infop info, PngLayout *layout) {
    for (int i = 0; i < 256; i++) memset(layout->lookup[i], i, 3);
    png_colorp colours = NULL;
    int count = 0;
    if (png_get_PLTE(png, info, &colours, &count) != PNG_INFO_PLTE) {
        png_error(png, "palette image without a PLTE chunk");
    }
    for (int i = 0; i < count && i < 256; i++) {
        layout->lookup[i][0] = colours[i].red;
        layout->lookup[i][1] = colours[i].green;
        layout->lookup[i][2] = colours[i].blue;
    }
}

// Sample s of a decoded row, reduced to 8 bits the way Pillow does.
static inline uint8_t sample8(const uint8_t *row, size_t s, const PngLayout *layout) {
    switch (layout->depth) {
    case 16: {
        if (layout->channels == 1) {
            unsigned v = (unsigned)row[2 * s] << 8 | row[2 * s + 1];
            return v > 255 ? 255 : (uint8_t)v;
        }
        return row[2 * s];
    }
    case 8: return row[s];
    default: return (uint8_t)(row[s] * 255 / ((1 << layout->depth) - 1));
    }
}

static void row_to_rgb(const uint8_t *row, uint8_t *rgb, int width, const PngLayout *layout) {
    for (int x = 0; x < width; x++, rgb += 3) {
        size_t s = (size_t)x * (size_t)layout->channels;
        if (layout->palette) {
            memcpy(rgb, layout->lookup[row[x]], 3);
        } else if (layout->channels <= 2) {
            rgb[0] = rgb[1] = rgb[2] = sample8(row, s, layout);
        } else {
            for (int c = 0; c < 3; c++) rgb[c] = sample8(row, s + c, layout);
        }
    }
}

// Runs under setjmp: any libpng error longjmps out of here.
static bool read_png(png_structp png, png_infop info, PngReader *r, const char *name, Image *out,
                     Error *err) {
    png_set_read_fn(png, r, read_png_bytes);
    png_set_crc_action(png, PNG_CRC_DEFAULT, PNG_CRC_ERROR_QUIT); // bad CRC anywhere is an error
    png_read_info(png, info);
    png_uint_32 width = 0, height = 0;
    int depth = 0, colour_type = 0;
    png_get_IHDR(png, info, &width, &height, &depth, &colour_type, NULL, NULL, NULL);
    if (!check_image_pixels(name, width, height, err)) return false;
    PngLayout layout = {.channels = png_get_channels(png, info), .depth = depth,
                        .palette = colour_type == PNG_COLOR_TYPE_PALETTE};
    if (layout.palette) build_palette(png, info, &layout);
    if (depth < 8) png_set_packing(png); // one byte per sample, values not rescaled
    png_set_interlace_handling(png);
    png_read_update_info(png, info);

    size_t rowbytes = png_get_rowbytes(png, info);
    if (rowbytes == 0 || height > SIZE_MAX / rowbytes) {
        return fail(err, "%s: PNG of %ux%u is too large", name, (unsigned)width, (unsigned)height);
    }
    r->raw = checked_malloc(rowbytes * height, "PNG rows", err);
    r->rows = checked_malloc(sizeof(png_bytep) * height, "PNG row pointers", err);
    if (r->raw == NULL || r->rows == NULL) return fail_context(err, "%s", name);
    for (png_uint_32 y = 0; y < height; y++) r->rows[y] = r->raw + (size_t)y * rowbytes;
    png_read_image(png, r->rows);
    png_read_end(png, NULL); // checks the chunks after IDAT and that IEND is intact

    if (!image_alloc(out, (int)width, (int)height, err)) return fail_context(err, "%s", name);
    for (png_uint_32 y = 0; y < height; y++) {
        row_to_rgb(r->rows[y], out->pixels + (size_t)y * width * 3, (int)width, &layout);
    }
    return true;
}

bool decode_png(const uint8_t *data, size_t n, const char *name, Image *out, Error *err) {
    PngReader *r = checked_calloc(1, sizeof(*r), "PNG reader", err);
    if (r == NULL) return fail_context(err, "%s", name);
    r->data = data;
    r->size = n;
    png_structp png =
        png_create_read_struct(PNG_LIBPNG_VER_STRING, r, on_png_error, on_png_warning);
    png_infop info = png != NULL ? png_create_info_struct(png) : NULL;
    bool ok = false;
    if (info == NULL) {
        fail(err, "%s: libpng could not create its decoder (out of memory)", name);
    } else if (setjmp(png_jmpbuf(png)) == 0) {
        ok = read_png(png, info, r, name, out, err);
    } else {
        fail(err, "%s: invalid PNG: %s", name, r->message);
    }
    png_destroy_read_struct(&png, &info, NULL);
    if (!ok) image_free(out);
    free(r->raw);
    free(r->rows);
    free(r);
    return ok;
}
