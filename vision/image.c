// Image buffers, format detection by magic bytes, and the file wrappers.
// The PNG and JPEG decoders live in png.c and jpeg.c.
#include <stdlib.h>
#include <string.h>

#include "vision/vision.h"
#include "vision/vision_private.h"

bool image_alloc(Image *image, int width, int height, Error *err) {
    *image = (Image){0};
    if (width <= 0 || height <= 0 || (size_t)width > SIZE_MAX / 3 / (size_t)height) {
        return fail(err, "image size %dx%d is invalid", width, height);
    }
    image->pixels = checked_malloc((size_t)width * (size_t)height * 3, "image pixels", err);
    if (image->pixels == NULL) return false;
    image->width = width;
    image->height = height;
    return true;
}

bool check_image_pixels(const char *name, uint64_t width, uint64_t height, Error *err) {
    if (width > IMAGE_MAX_PIXELS || height > IMAGE_MAX_PIXELS || width * height > IMAGE_MAX_PIXELS) {
        return fail(err, "%s: %llux%llu pixels exceeds the limit of %llu (decompression bomb?)", name,
                    (unsigned long long)width, (unsigned long long)height, IMAGE_MAX_PIXELS);
    }
    return true;
}

void image_free(Image *image) {
    free(image->pixels);
    *image = (Image){0};
}

static bool is_png(const uint8_t *data, size_t n) {
    static const uint8_t signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    return n >= sizeof(signature) && memcmp(data, signature, sizeof(signature)) == 0;
}

static bool is_jpeg(const uint8_t *data, size_t n) {
    return n >= 3 && data[0] == 0xff && data[1] == 0xd8 && data[2] == 0xff; // SOI then a marker
}

bool image_decode_memory_with(const void *data, size_t n, const char *name,
                              const ImageDecodeOptions *options, Image *out, Error *err) {
    *out = (Image){0};
    if (n == 0) return fail(err, "%s: empty image data", name);
    if (is_png(data, n)) return decode_png(data, n, name, out, err);
    if (is_jpeg(data, n)) return decode_jpeg(data, n, name, options->allow_truncated, out, err);
    return fail(err, "%s: not a PNG or JPEG image (unrecognized magic bytes)", name);
}

bool image_decode_memory(const void *data, size_t n, const char *name, Image *out, Error *err) {
    const ImageDecodeOptions defaults = {0};
    return image_decode_memory_with(data, n, name, &defaults, out, err);
}

bool image_decode_file_with(const char *path, const ImageDecodeOptions *options, Image *out,
                            Error *err) {
    *out = (Image){0};
    char *data = NULL;
    size_t size = 0;
    if (!read_file(path, &data, &size, err)) return false;
    bool ok = image_decode_memory_with(data, size, path, options, out, err);
    free(data);
    return ok;
}

bool image_decode_file(const char *path, Image *out, Error *err) {
    const ImageDecodeOptions defaults = {0};
    return image_decode_file_with(path, &defaults, out, err);
}
