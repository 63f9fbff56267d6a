// Model-input preprocessing as Hugging Face's image processors do it:
//   CLIPImageProcessor (clip-vit-large-patch14-336): shortest edge -> 336 with PIL BICUBIC,
//   long edge int(336 * long / short), center crop at ((h - 336) // 2, (w - 336) // 2),
//   rescale float32(float64(v) * (1/255)), normalize (x - mean) / std in float32, CHW.
//   LLaVA-1.5 'pad': expand2square with int(mean * 255) first. SigLIP: square resize.
#include <string.h>

#include "vision/vision.h"

static const float clip_mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float clip_std[3] = {0.26862954f, 0.26130258f, 0.27577711f};

ImagePreprocess image_preprocess_clip336(ImageFit fit) {
    ImagePreprocess p = {.fit = fit, .size = 336, .pad_color = {122, 116, 104}};
    memcpy(p.mean, clip_mean, sizeof(p.mean));
    memcpy(p.std, clip_std, sizeof(p.std));
    return p;
}

ImagePreprocess image_preprocess_square(int size, const float mean[3], const float std[3]) {
    ImagePreprocess p = {.fit = IMAGE_FIT_SQUASH, .size = size};
    memcpy(p.mean, mean, sizeof(p.mean));
    memcpy(p.std, std, sizeof(p.std));
    return p;
}

bool image_crop(const Image *in, int left, int top, int width, int height, Image *out,
                Error *err) {
    *out = (Image){0};
    if (left < 0 || top < 0 || width <= 0 || height <= 0 || left + width > in->width ||
        top + height > in->height) {
        return fail(err, "crop %dx%d at (%d, %d) does not fit in a %dx%d image", width, height,
                    left, top, in->width, in->height);
    }
    if (!image_alloc(out, width, height, err)) return false;
    for (int y = 0; y < height; y++) {
        memcpy(out->pixels + (size_t)y * width * 3,
               in->pixels + ((size_t)(top + y) * in->width + left) * 3, (size_t)width * 3);
    }
    return true;
}

bool image_expand_to_square(const Image *in, const uint8_t background[3], Image *out,
                            Error *err) {
    int side = in->width > in->height ? in->width : in->height;
    if (!image_alloc(out, side, side, err)) return fail_context(err, "expanding to square");
    for (size_t i = 0; i < (size_t)side * side; i++) memcpy(out->pixels + 3 * i, background, 3);
    int left = (side - in->width) / 2, top = (side - in->height) / 2;
    for (int y = 0; y < in->height; y++) {
        memcpy(out->pixels + ((size_t)(top + y) * side + left) * 3,
               in->pixels + (size_t)y * in->width * 3, (size_t)in->width * 3);
    }
    return true;
}

// HF get_resize_output_image_size(default_to_square=False): short side -> size,
// long side int(size * long / short) (true division, truncated).
static void shortest_edge_size(int width, int height, int size, int *out_w, int *out_h) {
    int short_side = width <= height ? width : height;
    int long_side = width <= height ? height : width;
    int new_long = (int)((double)size * long_side / short_side);
    *out_w = width <= height ? size : new_long;
    *out_h = width <= height ? new_long : size;
}

// out[c][y][x] from the size x size RGB image.
static void normalize_chw(const Image *image, const ImagePreprocess *p, float *out) {
    size_t plane = (size_t)image->width * image->height;
    for (int c = 0; c < 3; c++) {
        for (size_t i = 0; i < plane; i++) {
            float x = (float)((double)image->pixels[3 * i + c] * (1.0 / 255.0));
            out[c * plane + i] = (x - p->mean[c]) / p->std[c];
        }
    }
}

static bool fit_to_square(const Image *image, const ImagePreprocess *p, Image *out, Error *err) {
    if (p->fit == IMAGE_FIT_SQUASH) return image_resize_bicubic(image, p->size, p->size, out, err);
    int width = 0, height = 0;
    shortest_edge_size(image->width, image->height, p->size, &width, &height);
    Image resized = {0};
    if (!image_resize_bicubic(image, width, height, &resized, err)) return false;
    bool ok = image_crop(&resized, (width - p->size) / 2, (height - p->size) / 2, p->size, p->size,
                         out, err);
    image_free(&resized);
    return ok;
}

bool image_preprocess(const Image *image, const ImagePreprocess *p, float *out, Error *err) {
    if (p->size <= 0) return fail(err, "preprocess: output size %d is invalid", p->size);
    Image padded = {0}, square = {0};
    const Image *source = image;
    if (p->fit == IMAGE_FIT_PAD) {
        if (!image_expand_to_square(image, p->pad_color, &padded, err)) return false;
        source = &padded;
    }
    bool ok = fit_to_square(source, p, &square, err);
    if (ok) normalize_chw(&square, p, out);
    image_free(&padded);
    image_free(&square);
    if (!ok) fail_context(err, "preprocessing a %dx%d image", image->width, image->height);
    return ok;
}
