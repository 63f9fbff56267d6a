// vision: image decoding (PNG via libpng, JPEG via libjpeg-turbo) into 8-bit RGB
// exactly as Pillow's Image.open(f).convert("RGB"), and preprocessing into
// normalized float32 CHW tensors exactly as Hugging Face's image processors
// (CLIP shortest-edge resize + center crop, LLaVA-1.5 pad-to-square, SigLIP
// square resize), all resizing done with Pillow's fixed-point BICUBIC.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "kernels/ops.h"

// ----------------------------------------------------------------------------
// decoding

// Interleaved 8-bit RGB, row-major: pixels[(y * width + x) * 3 + c]. Owns pixels.
typedef struct Image {
    int width;
    int height;
    uint8_t *pixels;
} Image;

typedef struct ImageDecodeOptions {
    // Decode a JPEG whose data ends early (libjpeg fills the rest as if an EOI
    // marker came), like Pillow with ImageFile.LOAD_TRUNCATED_IMAGES = True.
    // When false, truncated JPEG data is an error, as in Pillow's default.
    bool allow_truncated;
} ImageDecodeOptions;

// Decodes a PNG or JPEG (detected by magic bytes) from memory. name labels
// errors ("astronaut.png: libpng: IHDR: CRC error"). On failure out is empty.
bool image_decode_memory(const void *data, size_t n, const char *name, Image *out, Error *err);
bool image_decode_memory_with(const void *data, size_t n, const char *name,
                              const ImageDecodeOptions *options, Image *out, Error *err);
bool image_decode_file(const char *path, Image *out, Error *err);
bool image_decode_file_with(const char *path, const ImageDecodeOptions *options, Image *out,
                            Error *err);
// Allocates an uninitialized width x height image.
bool image_alloc(Image *image, int width, int height, Error *err);
void image_free(Image *image);

// Encodes into a malloc'd buffer (the caller frees *data): 8-bit RGB PNG, or
// baseline JPEG at quality 1..100 (libjpeg's defaults: 4:2:0 chroma).
bool image_encode_png(const Image *image, uint8_t **data, size_t *size, Error *err);
bool image_encode_jpeg(const Image *image, int quality, uint8_t **data, size_t *size, Error *err);

// ----------------------------------------------------------------------------
// geometry (Pillow semantics)

// Pillow's Image.resize(size, BICUBIC): separable, horizontal pass then
// vertical, 22-bit fixed-point weights, 8-bit clipping between passes.
bool image_resize_bicubic(const Image *in, int width, int height, Image *out, Error *err);
// TensorFlow's tf.image.resize(method="lanczos3", antialias=True), rounded half to
// even and clipped to 8 bits: OpenVLA's RLDS pipeline (Octo's dlimp) resizes every
// training image so before its image processor (resize_lanczos.c).
bool image_resize_lanczos3_tf(const Image *in, int width, int height, Image *out, Error *err);
// LLaVA's expand2square: the image centred on a square of the background
// colour, offset (long - short) / 2 along the short side.
bool image_expand_to_square(const Image *in, const uint8_t background[3], Image *out,
                            Error *err);
// Crop of in at (left, top), size width x height, entirely inside in.
bool image_crop(const Image *in, int left, int top, int width, int height, Image *out,
                Error *err);

// ----------------------------------------------------------------------------
// preprocessing into model input

typedef enum ImageFit {
    IMAGE_FIT_CROP,   // CLIP: short edge -> size, long edge int(size * long / short), center crop
    IMAGE_FIT_PAD,    // LLaVA-1.5 'pad': expand2square with pad_color, then as CROP
    IMAGE_FIT_SQUASH, // SigLIP / DINOv2-style: resize straight to size x size
} ImageFit;

typedef struct ImagePreprocess {
    ImageFit fit;
    int size;            // output is [3, size, size]
    float mean[3];       // per channel, on the [0, 1] scale
    float std[3];
    uint8_t pad_color[3];
} ImagePreprocess;

// clip-vit-large-patch14-336 (CLIP mean/std, 336); with IMAGE_FIT_PAD the pad
// colour is LLaVA's int(mean * 255) = (122, 116, 104).
ImagePreprocess image_preprocess_clip336(ImageFit fit);
// Square resize to size x size with the given normalization.
ImagePreprocess image_preprocess_square(int size, const float mean[3], const float std[3]);
// out[c][y][x] = (float32(pixel / 255) - mean[c]) / std[c], as HF's rescale
// (float64 multiply, cast to float32) then normalize (float32) do.
bool image_preprocess(const Image *image, const ImagePreprocess *p, float *out, Error *err);
