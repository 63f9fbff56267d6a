// model private: the mlp2x_gelu vision-language projector (LLaVA-1.5):
//   h1 = features W1^T + b1   (R, C)      W1 (C, in)
//   g  = gelu(h1)             (R, C)
//   out = g W2^T + b2         (R, C)      W2 (C, C)
// R image feature rows; its four tensors live in the model's flat buffer.
#pragma once
#include "model.h"

typedef struct Projector {
    const ParamEntry *w1, *b1, *w2, *b2; // NULL when the model has no projector
    int in, hidden;                      // vision feature width, C
    void *h1, *g, *out;                  // (R, C) activations
    void *d_out, *d_g;                   // (R, C) gradients
    void *d_features;                    // (R, in) dL/dfeatures, or NULL when not asked for
    int32_t *rows;                       // (R) image-token positions, backend memory
} Projector;

// Appends multi_modal_projector.linear_1/2.{weight,bias} to the table (which
// has room for four more entries). Biases have shape (C, 1).
void projector_add_params(Projector *p, ParamTable *table, int in, int hidden);
// nn.Linear's init into host params (ParamTable layout): U(-1/sqrt(in), 1/sqrt(in)).
void projector_init(const Projector *p, float *host_params, Rng *rng);
// p->out (R, C) from features (R, in); params in act_dtype (ParamTable layout).
void projector_forward(const Ops *ops, const Projector *p, const void *params, const void *features, int R);
// From d_embedded (N, C), the gradient of the spliced embeddings: gathers the
// R image rows and adds the projector's gradients into grads (fp32); when
// p->d_features is set, writes dL/dfeatures (R, in) = dh1 W1 there.
void projector_backward(const Ops *ops, const Projector *p, const void *params, float *grads,
                        const void *features, const void *d_embedded, int R);
