// Private to vision/: the per-format decoders behind image_decode_memory.
#pragma once
#include "vision/vision.h"

// data starts with the PNG signature / a JPEG SOI marker; name labels errors.
bool decode_png(const uint8_t *data, size_t n, const char *name, Image *out, Error *err);
bool decode_jpeg(const uint8_t *data, size_t n, const char *name, bool allow_truncated,
                 Image *out, Error *err);
