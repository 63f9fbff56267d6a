// Private to vision/: the per-format decoders behind image_decode_memory.
#pragma once
#include "vision/vision.h"

// data starts with the PNG signature / a JPEG SOI marker; name labels errors.
// Pillow's decompression-bomb limit: Image.open refuses an image of more than
// 2 * Image.MAX_IMAGE_PIXELS (89478485) pixels before decoding it. The
// decoders check the header's size against it before allocating anything.
#define IMAGE_MAX_PIXELS (2ull * 89478485ull)
bool check_image_pixels(const char *name, uint64_t width, uint64_t height, Error *err);

bool decode_png(const uint8_t *data, size_t n, const char *name, Image *out, Error *err);
bool decode_jpeg(const uint8_t *data, size_t n, const char *name, bool allow_truncated,
                 Image *out, Error *err);
