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

// ----------------------------------------------------------------------------
// ViT vision towers, frozen, forward only: one encoder for CLIP and SigLIP in
// Hugging Face's CLIPVisionModel / SiglipVisionModel layouts and DINOv2 and
// SigLIP in timm's VisionTransformer layout (OpenVLA's featurizers); the
// differences are flags.
//
// tokens = [class;] [registers;] patch_embedding(image) [+ patch bias], T of them
// x = tokens + position_embedding (over all T tokens, or the P patches alone)
// x = pre_layrnorm(x) (CLIP)
// per layer: x += [ls1 *] out_proj(attention(layer_norm1(x)))
//            x += [ls2 *] fc2(act(fc1(layer_norm2(x))))
// The features are hidden_states[feature_layer] (LLaVA's vision_feature_layer,
// -2 = the penultimate layer's output; never a final norm such as SigLIP's
// post_layernorm, which hidden_states do not include), tokens [skip_tokens, T):
// llava's 'default' skips token 0 whatever it is (CLIP's class token or
// SigLIP's first patch), 'full' none, OpenVLA the class and register tokens.

typedef enum VitActivation {
    VIT_QUICK_GELU, // CLIP: x sigmoid(1.702 x)
    VIT_GELU_TANH,  // transformers' SigLIP: gelu_pytorch_tanh
    VIT_GELU,       // exact erf GELU (timm's nn.GELU, DINOv2 and timm's SigLIP)
} VitActivation;

typedef enum VitLayout {
    VIT_LAYOUT_HF,   // vision_model.embeddings.*, vision_model.encoder.layers.N.self_attn.q_proj.*, ...
    VIT_LAYOUT_TIMM, // cls_token, reg_token, pos_embed, patch_embed.proj.*, blocks.N.attn.qkv.* (q, k, v fused), ...
} VitLayout;

// The tower's shape; named for CLIP, the first of the towers it describes.
typedef struct ClipVisionConfig {
    int hidden_size;        // D
    int intermediate_size;  // MLP width
    int n_layers;           // num_hidden_layers of the checkpoint
    int n_heads;
    int image_size;         // S: input (channels, S, S)
    int patch_size;         // P = (S / patch_size)^2 patches (a remainder of pixels unused)
    int channels;
    float layer_norm_eps;
    int feature_layer;      // index into hidden_states (n_layers + 1 of them); negative from the end
    int skip_tokens;        // the features are tokens [skip_tokens, T)
    // the architecture
    VitLayout layout;
    bool class_token;       // a class embedding first
    int n_registers;        // register tokens after it (DINOv2 reg4: 4): T = class + registers + P
    bool pos_embed_prefix;  // the position embedding covers the class and register tokens too (else the P patches)
    bool pre_norm;          // a LayerNorm on the embeddings (CLIP's pre_layrnorm)
    bool patch_bias;        // the patch convolution has a bias
    bool layer_scale;       // per-channel gammas on both residual branches (timm's ls1 / ls2)
    VitActivation activation;
} ClipVisionConfig;

// "clip-vit-large-patch14-336" (LLaVA-1.5's tower), "tiny" (tests, demo; both
// CLIP, 'default' features of layer -2), or OpenVLA's featurizers at 224 pixels in
// timm's layout, features of the second-to-last block without prefix tokens:
// "dinov2-vit-l14-reg4" (vit_large_patch14_reg4_dinov2) and "siglip-so400m-14"
// (vit_so400m_patch14_siglip_224).
bool clip_config_preset(const char *name, ClipVisionConfig *out, Error *err);
bool clip_config_validate(const ClipVisionConfig *config, Error *err);
int clip_n_patches(const ClipVisionConfig *config);
// Tokens per image: the class token and registers, when there are, and the patches.
int clip_n_tokens(const ClipVisionConfig *config);
// Feature rows per image: the tokens less the skipped ones.
int clip_n_features(const ClipVisionConfig *config);
// Encoder layers the features need: hidden_states[k] is the output of layer k - 1.
int clip_layers_used(const ClipVisionConfig *config);

typedef struct ClipTower ClipTower;

// Allocates the weights of the layers the features need (uninitialised) and
// activations for up to max_images images per forward.
ClipTower *clip_tower_create(const Ops *ops, const ClipVisionConfig *config, int max_images, Error *err);
void clip_tower_destroy(ClipTower *tower);
// The backend bytes clip_tower_create allocates (weights + activations) in
// storage act_dtype, without allocating: what `lora-train plan` counts.
bool clip_tower_bytes(DType act_dtype, const ClipVisionConfig *config, int max_images, size_t *bytes, Error *err);
const ClipVisionConfig *clip_tower_config(const ClipTower *tower);
const Ops *clip_tower_ops(const ClipTower *tower);
// Calls visit for every weight the features need with its name in the layout
// ("vision_model.encoder.layers.0.self_attn.q_proj.weight", "blocks.0.attn.qkv.weight");
// data is backend memory.
typedef bool (*ClipTensorVisitor)(void *context, const char *name, const Tensor *tensor, Error *err);
bool clip_tower_visit(ClipTower *tower, ClipTensorVisitor visit, void *context, Error *err);
// Random weights for tests and the demo: matrices and embeddings N(0, 0.02^2),
// norm weights 1, biases 0.
void clip_tower_init_random(ClipTower *tower, uint64_t seed);
// images: host fp32 (n_images, channels, S, S) as image_preprocess writes them;
// features: backend memory (n_images, clip_n_features, D) in the backend's act_dtype.
bool clip_tower_forward(ClipTower *tower, const float *images, int n_images, void *features, Error *err);
