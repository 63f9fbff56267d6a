// model: a Llama-family decoder with LoRA adapters, forward and backward.
//
// Frozen base weights live in backend memory (act_dtype). Every trainable
// parameter (LoRA A and B of each targeted linear) lives in one flat fp32
// buffer described by a ParamTable; gradients mirror its layout. The flat
// buffer is the unit of optimizer state, sharding, checkpointing and export.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "../core/core.h"
#include "../kernels/ops.h"
#include "../quant/quant.h"

// ----------------------------------------------------------------------------
// configuration

typedef struct LlamaConfig {
    int vocab_size;
    int hidden_size;          // C
    int intermediate_size;    // MLP width
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;             // hidden_size / n_heads unless the checkpoint says otherwise
    int max_position;         // max_position_embeddings
    float rms_eps;
    float rope_theta;
    RopeScaling rope_scaling;
    bool tie_embeddings;      // lm_head shares embed_tokens
    int bos_token_id;
    int eos_token_id;
    float initializer_range;  // std of the random init (transformers: 0.02); 0 = 0.02
} LlamaConfig;

// The seven linears LoRA can target, in Hugging Face module names.
typedef enum LoraTarget {
    LORA_Q, LORA_K, LORA_V, LORA_O, LORA_GATE, LORA_UP, LORA_DOWN, LORA_TARGET_COUNT
} LoraTarget;

extern const char *const LORA_TARGET_NAMES[LORA_TARGET_COUNT]; // "q_proj", ...
bool lora_target_from_name(const char *name, LoraTarget *out);  // "q" or "q_proj"

typedef enum LoraInit { LORA_INIT_KAIMING, LORA_INIT_GAUSSIAN } LoraInit;

typedef struct LoraConfig {
    int r;
    float alpha;
    float dropout;
    bool rslora;                       // scale alpha / sqrt(r) instead of alpha / r
    bool targets[LORA_TARGET_COUNT];
    // PEFT's all-linear beyond the decoder: OpenVLA's frozen projector (fc1..fc3) and the
    // vision towers' linears (the towers' adapters are not built yet: the flag is carried for them).
    bool target_projector;
    bool target_towers;
    LoraInit init;
} LoraConfig;

float lora_scale(const LoraConfig *lora);
bool llama_config_validate(const LlamaConfig *config, Error *err);
// Named sizes for tests, benchmarks and the demo: "tiny", "small", "llama3-8b".
bool llama_config_preset(const char *name, LlamaConfig *out, Error *err);

// ----------------------------------------------------------------------------
// trainable parameters: one flat fp32 buffer and its table

#define PARAM_NAME_MAX 128

typedef struct ParamEntry {
    char name[PARAM_NAME_MAX]; // Hugging Face module path, e.g. model.layers.0.self_attn.q_proj.lora_A.weight
    int64_t shape[2];
    size_t offset;             // in floats, into the flat buffer
    size_t numel;
} ParamEntry;

typedef struct ParamTable {
    ParamEntry *entries;
    int count;
    int n_lora;                // entries[0, n_lora) are LoRA A/B; then the trainable projector's, if any
    int n_decoder_lora;        // entries[0, n_decoder_lora) the decoder's, layer by layer; then OpenVLA's
                               // projector adapters (projector.fc1.lora_A.weight, ...) up to n_lora
    int n_tower_lora;          // the last n_tower_lora of [0, n_lora): OpenVLA's towers' adapters
                               // (vision_backbone.featurizer.blocks.N..., then .fused_featurizer.), else 0
    size_t total;              // floats in the flat buffer
} ParamTable;

const ParamEntry *param_table_find(const ParamTable *table, const char *name);
// A (rows, cols) entry at the end of the table and of its flat buffer (entries must
// have room); the caller names it.
ParamEntry *param_table_append(ParamTable *table, int64_t rows, int64_t cols);

// ----------------------------------------------------------------------------
// frozen weights: Hugging Face names, one tensor each

typedef struct LayerWeights {
    void *input_layernorm;    // (C)
    void *post_attention_layernorm; // (C)
    void *linear[LORA_TARGET_COUNT]; // q (n_heads*hd, C), k/v (n_kv*hd, C), o (C, n_heads*hd),
                                     // gate/up (I, C), down (C, I)
} LayerWeights;

typedef struct Model Model;

typedef enum ProjectorKind {
    PROJECTOR_MLP2X_GELU, // LLaVA's, trainable, in the flat buffer
    PROJECTOR_OPENVLA,    // OpenVLA's fused-tower projector, frozen, LoRA on its three linears
} ProjectorKind;

typedef struct ModelOptions {
    const Ops *ops;
    LlamaConfig config;
    LoraConfig lora;
    int max_batch;            // micro-batch size B the activations are sized for
    int max_seq_len;          // T
    bool activation_checkpointing; // keep only layer inputs; recompute each layer in backward
    int lm_head_chunk;        // tokens per lm_head + cross-entropy chunk (0 = all at once)
    uint64_t seed;            // LoRA init and dropout
    bool nf4;                 // QLoRA: the seven linears of every layer stored as NF4 (quant/quant.h)
    bool nf4_double_quant;    // with nf4: absmax double-quantized (bitsandbytes' compress_statistics)
    // Vision-language: with projector_in > 0 the model holds a trainable
    // mlp2x_gelu projector (Linear(projector_in, C), GELU, Linear(C, C), both
    // with bias, named multi_modal_projector.linear_1/2 as llava-hf) whose
    // outputs replace the embeddings at the positions holding image_token_id.
    int projector_in;         // vision feature width (0 = text only)
    // PROJECTOR_OPENVLA: OpenVLA's projector for fused towers instead (fc1 (4 in, in), GELU,
    // fc2 (C, 4 in), GELU, fc3 (C, C), biases; frozen, named projector.fcK.weight / .bias),
    // with LoRA adapters when lora.target_projector.
    ProjectorKind projector_kind;
    bool image_feature_grads; // the backward also gives dL/d(image features) (model_image_feature_grads)
    // PROJECTOR_OPENVLA with lora.target_towers: the two towers' shapes (read at creation only);
    // their adapters follow the projector's in the ParamTable (openvla_tower_lora_add_params).
    const struct ClipVisionConfig *lora_towers;
    int image_token_id;
    int max_image_rows;       // image feature rows (images x patches) per micro-batch
    int flat_shards;          // the flat parameter and gradient buffers are padded (with zeros) to a
                              // multiple of it: ZeRO's equal shards over the ranks (0 or 1: no padding)
    bool trainable_only;      // the trainable parameters alone, no frozen weights or activations
                              // (lora-train plan: a checkpoint's exact size without the base model)
} ModelOptions;

// Allocates frozen weights (uninitialised), the flat parameter buffer with
// LoRA init, gradients and the activation arena.
Model *model_create(const ModelOptions *options, Error *err);
void model_destroy(Model *model);

// Backend memory model_create allocates for options, from the same layout
// code, without allocating it (lora-train plan).
typedef struct ModelPlan {
    size_t frozen_bytes;      // act_dtype frozen tensors (all of them, or all but the NF4 linears)
    size_t nf4_bytes;         // NF4 linears: packed codes, absmax and maps
    size_t nf4_scratch_bytes; // the largest linear dequantized (act_dtype) and its fp32 absmax
    size_t n_params;          // trainable fp32 elements
    size_t param_bytes;       // fp32 masters (with flat_shards' padding) + act_dtype compute copy
    size_t grad_bytes;        // fp32 gradients (with the padding)
    size_t activation_bytes;  // the arena for (max_batch, max_seq_len), per activation_checkpointing
    size_t scratch_bytes;     // backend scratch reserved for the step's ops (Ops.reserve_scratch)
} ModelPlan;
bool model_plan(const ModelOptions *options, ModelPlan *plan, Error *err);

const LlamaConfig *model_config(const Model *model);
const LoraConfig *model_lora(const Model *model);
const Ops *model_ops(const Model *model);
const ParamTable *model_params(const Model *model);
float *model_param_data(Model *model);   // fp32 masters (backend memory), ParamTable layout, then flat_shards' padding
float *model_grad_data(Model *model);    // fp32 gradients, same layout
const void *model_param_act(const Model *model); // the act_dtype compute copy (ParamTable layout): the towers' adapters
size_t model_activation_bytes(const Model *model);

// Frozen weight by Hugging Face name ("model.embed_tokens.weight",
// "model.layers.3.mlp.up_proj.weight", "lm_head.weight", "model.norm.weight").
// Returns false (with the list of names in err) for an unknown name.
bool model_frozen_tensor(Model *model, const char *name, Tensor *out, Error *err);
// Calls visit for every frozen tensor, in a fixed order; `data` is backend memory.
typedef bool (*FrozenVisitor)(void *context, const char *name, const Tensor *tensor, Error *err);
bool model_visit_frozen(Model *model, FrozenVisitor visit, void *context, Error *err);
// With ModelOptions.nf4 the layers' linears are not act_dtype tensors: the
// visitors above skip them and this one visits them ("model.layers.0.self_attn.q_proj.weight", ...).
bool model_is_nf4(const Model *model);
typedef bool (*Nf4Visitor)(void *context, const char *name, Nf4Weight *weight, Error *err);
bool model_visit_nf4(Model *model, Nf4Visitor visit, void *context, Error *err);
// Random base weights as transformers' LlamaForCausalLM init: linears and
// embeddings N(0, initializer_range^2), norms 1. For tests, benchmarks and the demo.
// False, with the reason, when memory or the backend fails.
bool model_init_random_base(Model *model, uint64_t seed, Error *err);
// Re-initialise the trainable parameters: LoRA A per lora.init, B = 0; the
// projector as nn.Linear, weight and bias U(-1/sqrt(in), 1/sqrt(in)).
// False, with the reason, when memory or the backend fails.
bool model_init_lora(Model *model, uint64_t seed, Error *err);

// ----------------------------------------------------------------------------
// training

typedef struct Batch {
    int B, T;
    const int32_t *tokens;     // (B, T) input ids, host memory
    const int32_t *targets;    // (B, T) next-token labels, -100 = no loss
    // Packed rows (several samples per row), host memory, or NULL (one per
    // row): seq_start (B, T) = index within its row of the first token of each
    // token's sample. Attention stays inside a sample; RoPE positions restart
    // at 0 with each (t - seq_start).
    const int32_t *seq_start;
    // Image features (n_image_rows, projector_in) in backend memory, valid until
    // the ops the call issued have run (stream order); row r replaces the r-th
    // image_token_id position of tokens.
    int n_image_rows;
    const void *image_features;
} Batch;

typedef struct StepOptions {
    float grad_scale;          // 1 / label tokens of the whole optimizer step
    bool train;                // dropout on and gradients accumulated
    uint64_t dropout_seed;     // per step and micro-batch: (seed, step, micro) hashed
    // Add this micro-batch's loss to the sum the previous calls left (every
    // micro-batch of a step but the first) instead of starting it afresh.
    bool accumulate_loss;
    // Optional: called during the backward as soon as the gradients of the
    // flat buffer's [begin, end) are final for this micro-batch (issued, on a
    // GPU): each layer's LoRA range from the last layer down, then the
    // projector's (with a projector, images in the batch or not), so every
    // rank reports the same ranges in the same order (ZeRO's overlap).
    void (*grads_ready)(void *context, size_t begin, size_t end);
    void *grads_ready_context;
} StepOptions;

// Forward (and, when options->train, backward adding into the gradients) of
// one micro-batch: issued, not waited for (the host is free once it returns).
// The sum over label tokens of -log p stays on the device (fp32), started
// afresh or added to per options->accumulate_loss.
bool model_step(Model *model, const Batch *batch, const StepOptions *options, Error *err);
// That loss sum onto the host: waits for every op issued so far and reports
// any backend failure. Once per optimizer step.
bool model_loss_sum(Model *model, double *loss_sum, Error *err);
// Logits (B, T, V) of a batch, fp32, onto the host (tests and evaluation).
bool model_logits(Model *model, const Batch *batch, float *logits, Error *err);
// The projected image rows (n_image_rows, C) the last forward spliced in, fp32, onto the host.
bool model_image_embeddings(Model *model, float *out, Error *err);
// Evaluation sums over the label tokens (targets != -100) of a batch, added
// into *sums: -log p(target) in double from the fp32 logits, and the tokens
// whose largest logit (the first, on ties) is the target; per row with label
// tokens, whether every one of them is such a hit (greedy decoding would then
// reproduce the answer exactly). No dropout, no gradients, the loss scalar of
// model_step untouched.
typedef struct EvalSums {
    double loss_sum;
    int64_t n_label_tokens, n_correct;
    int64_t n_answers, n_answers_exact; // rows with label tokens; those with all of them hits
} EvalSums;
bool model_eval_batch(Model *model, const Batch *batch, EvalSums *sums, Error *err);
// The same, and argmax (B * T; NULL: none) receives each label token's largest
// logit's id at its position (other positions untouched): robot runs' action metrics.
bool model_eval_batch_argmax(Model *model, const Batch *batch, EvalSums *sums, int32_t *argmax, Error *err);
void model_zero_grads(Model *model);
// With ModelOptions.image_feature_grads: dL/d(image features) (n_image_rows, projector_in) of the
// last model_step that trained on images (grad_scale applied; backend memory, act_dtype, valid until
// the next step), the input of the towers' backward; NULL without the option.
const void *model_image_feature_grads(const Model *model);
// After the optimizer changed the fp32 masters: refresh the compute copy.
void model_sync_params(Model *model);

// ----------------------------------------------------------------------------
// ViT vision towers, frozen or with LoRA on their linears: one encoder for CLIP and SigLIP in
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

// What a tower is created for beyond a frozen forward.
typedef struct ClipTowerOptions {
    int lora_r;                    // > 0: every linear of the used layers takes an adapter of this rank (bound below)
    bool train;                    // keep what clip_tower_backward needs
    bool activation_checkpointing; // with train: keep only each layer's input, recompute the layer in the backward
} ClipTowerOptions;

// Allocates the weights of the layers the features need (uninitialised) and
// activations for up to max_images images per forward: those of one layer at
// a time (frozen), or with options->train every layer's for the backward.
ClipTower *clip_tower_create(const Ops *ops, const ClipVisionConfig *config, int max_images, Error *err);
ClipTower *clip_tower_create_with(const Ops *ops, const ClipVisionConfig *config, int max_images,
                                  const ClipTowerOptions *options, Error *err); // options NULL: frozen
void clip_tower_destroy(ClipTower *tower);
// The backend bytes clip_tower_create_with allocates (weights + activations) in
// storage act_dtype, without allocating: what `lora-train plan` counts (options NULL: frozen).
bool clip_tower_bytes(DType act_dtype, const ClipVisionConfig *config, int max_images, const ClipTowerOptions *options,
                      size_t *bytes, Error *err);
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
// Without adapters: fails once clip_tower_bind_lora bound some.
bool clip_tower_forward(ClipTower *tower, const float *images, int n_images, void *features, Error *err);

// LoRA on the tower (OpenVLA: PEFT all-linear, which wraps every nn.Linear of
// the towers): one adapter per linear of the layers the features need, named
// as PEFT names it under the module prefix of the tower in the whole model:
// "<prefix>blocks.<l>.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2}.lora_{A,B}.weight"
// (timm; the fused qkv is one module, A (r, D), B (3D, r)) or
// "<prefix>vision_model.encoder.layers.<l>.{self_attn.{q,k,v,out}_proj, mlp.fc1,
// mlp.fc2}.lora_{A,B}.weight" (Hugging Face). A (r, in), B (out, r).
// Entries clip_lora_add_params appends.
int clip_lora_n_params(const ClipVisionConfig *config);
// Appends those entries (A then B of each module, layer by layer) at the end of
// table's flat buffer; table->entries must have room for clip_lora_n_params more.
// table->n_lora is the caller's (these are LoRA entries for its init and export).
void clip_lora_add_params(const ClipVisionConfig *config, int r, const char *prefix, ParamTable *table);
// Finds the tower's entries in table under prefix (rank the tower's lora_r) and
// uses them with y += scale (x A^T) B^T; table's entries must stay where they are.
bool clip_tower_bind_lora(ClipTower *tower, const ParamTable *table, const char *prefix, float scale, Error *err);
// clip_tower_forward with the bound adapters read from param_act, the act_dtype
// compute copy of the flat buffer (NULL: no adapters bound). A training tower
// keeps what the backward needs of this forward.
bool clip_tower_forward_lora(ClipTower *tower, const void *param_act, const float *images, int n_images, void *features,
                             Error *err);
// After a forward of a tower created with train: from d_features (backend
// memory, act_dtype, (n_images, clip_n_features, D)) back through the used
// layers, ADDING into grads (fp32, the flat buffer's layout) the gradients of
// every bound lora_A and lora_B. The frozen weights, embeddings and pixels get none.
bool clip_tower_backward(ClipTower *tower, const void *param_act, float *grads, const void *d_features, int n_images,
                         Error *err);

// ----------------------------------------------------------------------------
// OpenVLA's fused featurizer (PrismaticVisionBackbone, use_fused_vision_backbone): two towers
// on the two halves of 6-channel pixel_values (each half with its tower's own normalisation),
// their features side by side, DINOv2's first:
//   features (n P, D0 + D1) = [featurizer(pixels[:, 0:3]) | fused_featurizer(pixels[:, 3:6])]
// Tower 0 is vision_backbone.featurizer (dinov2-vit-l14-reg4), tower 1 .fused_featurizer
// (siglip-so400m-14); both must give the same P features per image at the same size S.

typedef struct FusedFeaturizer FusedFeaturizer;

FusedFeaturizer *fused_featurizer_create(const Ops *ops, const ClipVisionConfig configs[2], int max_images, Error *err);
void fused_featurizer_destroy(FusedFeaturizer *featurizer);
// With ClipTowerOptions (NULL: frozen) for both towers: lora_r, train, activation checkpointing.
FusedFeaturizer *fused_featurizer_create_with(const Ops *ops, const ClipVisionConfig configs[2], int max_images,
                                              const ClipTowerOptions *options, Error *err);
// Tower 0 (featurizer) or 1 (fused_featurizer): for loading, and the towers' backward, which
// takes its columns of model_image_feature_grads (copy_columns: tower 0 columns [0, D0), tower 1 [D0, D0 + D1)).
ClipTower *fused_featurizer_tower(FusedFeaturizer *featurizer, int which);
int fused_featurizer_width(const FusedFeaturizer *featurizer);      // D0 + D1: the projector's input
int fused_featurizer_n_features(const FusedFeaturizer *featurizer); // P per image
// pixels: host fp32 (n_images, 6, S, S); features: backend memory (n_images P, D0 + D1), act_dtype.
bool fused_featurizer_forward(FusedFeaturizer *featurizer, const float *pixels, int n_images, void *features,
                              Error *err);
// Trained towers (PEFT all-linear): the towers' adapters in a model's ParamTable under OpenVLA's module
// prefixes, OPENVLA_TOWER_PREFIXES[k] ("vision_backbone.featurizer.", "vision_backbone.fused_featurizer.").
extern const char *const OPENVLA_TOWER_PREFIXES[2];
int openvla_tower_lora_n_params(const ClipVisionConfig configs[2]);
void openvla_tower_lora_add_params(const ClipVisionConfig configs[2], int r, ParamTable *table);
// [*begin, *end) of the flat buffer holding the towers' adapters (table->n_tower_lora entries; 0, 0 without).
void openvla_tower_lora_range(const ParamTable *table, size_t *begin, size_t *end);
bool fused_featurizer_bind_lora(FusedFeaturizer *featurizer, const ParamTable *table, float scale, Error *err);
// fused_featurizer_forward with the bound adapters from param_act (the model's compute copy).
bool fused_featurizer_forward_lora(FusedFeaturizer *featurizer, const void *param_act, const float *pixels,
                                   int n_images, void *features, Error *err);
// After a forward_lora of towers created with train: d_features (n_images P, D0 + D1), backend memory,
// act_dtype (model_image_feature_grads) back through both towers, ADDING their adapters' fp32 gradients into grads.
bool fused_featurizer_backward(FusedFeaturizer *featurizer, const void *param_act, float *grads,
                               const void *d_features, int n_images, Error *err);
