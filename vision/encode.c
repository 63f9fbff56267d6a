// vision: 8-bit RGB images encoded into memory as PNG (libpng) and baseline
// JPEG (libjpeg-turbo), for synthetic datasets (the demo) and tests.
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <png.h>

#include "vision/vision.h"

// ----------------------------------------------------------------------------
// PNG

typedef struct PngSink {
    uint8_t *data;
    size_t size, capacity;
    bool out_of_memory;
    char error[256];
} PngSink;

static void png_sink_write(png_structp png, png_bytep bytes, png_size_t n) {
    PngSink *sink = png_get_io_ptr(png);
    if (sink->size + n > sink->capacity) {
        size_t capacity = (sink->size + n) * 2;
        uint8_t *grown = realloc(sink->data, capacity);
        if (!grown) {
            sink->out_of_memory = true;
            png_error(png, "out of memory");
        }
        sink->data = grown;
        sink->capacity = capacity;
    }
    memcpy(sink->data + sink->size, bytes, n);
    sink->size += n;
}

static void png_sink_flush(png_structp png) {}

static void on_png_write_error(png_structp png, png_const_charp message) {
    PngSink *sink = png_get_error_ptr(png);
    snprintf(sink->error, sizeof sink->error, "%s", message);
    png_longjmp(png, 1);
}

// Runs under setjmp: libpng errors longjmp out of here.
static void write_png_rows(png_structp png, png_infop info, const Image *image) {
    png_set_IHDR(png, info, (png_uint_32)image->width, (png_uint_32)image->height, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < image->height; y++) png_write_row(png, image->pixels + (size_t)y * image->width * 3);
    png_write_end(png, info);
}

bool image_encode_png(const Image *image, uint8_t **data, size_t *size, Error *err) {
    PngSink sink = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &sink, on_png_write_error, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    bool ok = false;
    if (!png || !info) {
        fail(err, "libpng: cannot create a write struct");
    } else if (setjmp(png_jmpbuf(png)) == 0) {
        png_set_write_fn(png, &sink, png_sink_write, png_sink_flush);
        write_png_rows(png, info, image);
        ok = true;
    } else {
        fail(err, "PNG encode of a %dx%d image: libpng: %s", image->width, image->height,
             sink.out_of_memory ? "out of memory" : sink.error);
    }
    png_destroy_write_struct(png ? &png : NULL, info ? &info : NULL);
    if (!ok) {
        free(sink.data);
        return false;
    }
    *data = sink.data;
    *size = sink.size;
    return true;
}

// ----------------------------------------------------------------------------
// JPEG

typedef struct JpegErrorJump {
    struct jpeg_error_mgr manager;
    jmp_buf jump;
} JpegErrorJump;

static void on_jpeg_write_error(j_common_ptr cinfo) { longjmp(((JpegErrorJump *)cinfo->err)->jump, 1); }

bool image_encode_jpeg(const Image *image, int quality, uint8_t **data, size_t *size, Error *err) {
    struct jpeg_compress_struct cinfo;
    JpegErrorJump jerr;
    unsigned char *buffer = NULL;
    unsigned long buffer_size = 0;
    cinfo.err = jpeg_std_error(&jerr.manager);
    jerr.manager.error_exit = on_jpeg_write_error;
    if (setjmp(jerr.jump)) {
        char message[JMSG_LENGTH_MAX];
        jerr.manager.format_message((j_common_ptr)&cinfo, message);
        jpeg_destroy_compress(&cinfo);
        free(buffer);
        return fail(err, "JPEG encode of a %dx%d image: libjpeg: %s", image->width, image->height, message);
    }
    jpeg_create_compress(&cinfo);
    jpeg_mem_dest(&cinfo, &buffer, &buffer_size);
    cinfo.image_width = (JDIMENSION)image->width;
    cinfo.image_height = (JDIMENSION)image->height;
    cinfo.input_components = 3;
    cinfo.in_color_space = JCS_RGB;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, quality, TRUE);
    jpeg_start_compress(&cinfo, TRUE);
    while (cinfo.next_scanline < cinfo.image_height) {
        JSAMPROW row = image->pixels + (size_t)cinfo.next_scanline * image->width * 3;
        jpeg_write_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_compress(&cinfo);
    jpeg_destroy_compress(&cinfo);
    *data = buffer;
    *size = buffer_size;
    return true;
}
