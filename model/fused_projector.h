// model private: OpenVLA's projector for fused towers (PrismaticProjector with
// use_fused_vision_backbone), frozen, with a LoRA adapter on each linear when
// lora.target_projector (PEFT's all-linear):
//   h1 = fc1(features)   (R, 4D)    fc1 (4D, D) + bias, D = both towers' widths
//   h2 = fc2(gelu(h1))   (R, C)     fc2 (C, 4D) + bias
//   out = fc3(gelu(h2))  (R, C)     fc3 (C, C) + bias; nn.GELU (erf) both times
// R image feature rows; W and b in the model's frozen block (projector.fcK.weight / .bias).
#pragma once
#include "model.h"
#include "lora_linear.h"

#define FUSED_PROJECTOR_LINEARS 3

typedef struct FusedProjector {
    LoraLinear fc[FUSED_PROJECTOR_LINEARS]; // W, b, A, B set; dropout per step
    void *h1, *g1;                          // (R, 4D) before and after GELU
    void *h2, *g2;                          // (R, C) before and after GELU
    void *out;                              // (R, C)
    void *lora_h[FUSED_PROJECTOR_LINEARS];  // (R, r) dropout(x) A^T, NULL without adapters
    void *d_out, *d_g2;                     // (R, C): dL/dout (reused for dL/dh2), dL/dg2
    void *d_g1, *d_h1;                      // (R, 4D)
    void *d_features;                       // (R, D) dL/dfeatures, or NULL when not asked for
    LoraScratch scratch;                    // x_dropped, dx_dropped (R, max(4D, C)), dh (R, r)
    int32_t *rows;                          // (R) image-token positions, backend memory
} FusedProjector;

// Widths of fc1..fc3: in = D, wide = 4 D, hidden = C.
static inline int fused_projector_wide(int in) { return 4 * in; }

// Appends projector.fcK.lora_A/B.weight for K = 1..3 to the table (room for six more).
void fused_projector_add_lora(FusedProjector *p, ParamTable *table, int r);
// p->out (R, C) from features (R, D); param_act: the flat buffer's act_dtype copy.
void fused_projector_forward(const Ops *ops, const FusedProjector *p, const void *param_act, const void *features,
                             int R);
// From d_embedded (N, C): gathers the R image rows, adds the adapters' gradients into
// grads (fp32) and, when p->d_features is set, writes dL/dfeatures (R, D) there.
void fused_projector_backward(const Ops *ops, const FusedProjector *p, const void *param_act, float *grads,
                              const void *features, const void *d_embedded, int R);
