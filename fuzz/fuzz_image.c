// image_decode_memory on arbitrary bytes (PNG or JPEG by magic), strict and
// with truncated JPEG data allowed.
#include "fuzz_util.h"
#include "vision/vision.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Error err;
    Image image;
    if (image_decode_memory(data, size, "fuzz", &image, &err)) image_free(&image);
    ImageDecodeOptions lenient = {.allow_truncated = true};
    if (image_decode_memory_with(data, size, "fuzz", &lenient, &image, &err)) image_free(&image);
    return 0;
}
