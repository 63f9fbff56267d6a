// model: OpenVLA's fused projector (fused_projector.h), forward and backward.
//   forward:  h1 = fc1(x); g1 = gelu(h1); h2 = fc2(g1); g2 = gelu(h2); out = fc3(g2)
//   backward: dg2 = dout W3'; dh2 = gelu'(h2) dg2; dg1 = dh2 W2'; dh1 = gelu'(h1) dg1; dx = dh1 W1'
//             (W' = W + s B A), each adapter's dA, dB from its dy and input
#include <stdio.h>

#include "fused_projector.h"

static const ParamEntry *add_entry(ParamTable *table, int k, char which, int64_t rows, int64_t cols) {
    ParamEntry *e = param_table_append(table, rows, cols);
    snprintf(e->name, sizeof e->name, "projector.fc%d.lora_%c.weight", k + 1, which);
    return e;
}

void fused_projector_add_lora(FusedProjector *p, ParamTable *table, int r) {
    for (int k = 0; k < FUSED_PROJECTOR_LINEARS; k++) {
        LoraLinear *l = &p->fc[k];
        l->r = r;
        l->A = add_entry(table, k, 'A', r, l->in);
        l->B = add_entry(table, k, 'B', l->out, r);
    }
}

void fused_projector_forward(const Ops *ops, const FusedProjector *p, const void *param_act, const void *features,
                             int R) {
    size_t wide = (size_t)R * p->fc[0].out, hidden = (size_t)R * p->fc[1].out;
    lora_linear_forward(ops, &p->fc[0], param_act, &p->scratch, p->h1, features, p->lora_h[0], R);
    ops->gelu_forward(ops, p->g1, p->h1, wide);
    lora_linear_forward(ops, &p->fc[1], param_act, &p->scratch, p->h2, p->g1, p->lora_h[1], R);
    ops->gelu_forward(ops, p->g2, p->h2, hidden);
    lora_linear_forward(ops, &p->fc[2], param_act, &p->scratch, p->out, p->g2, p->lora_h[2], R);
}

void fused_projector_backward(const Ops *ops, const FusedProjector *p, const void *param_act, float *grads,
                              const void *features, const void *d_embedded, int R) {
    int C = p->fc[2].out;
    size_t s = dtype_size(ops->act_dtype), wide = (size_t)R * p->fc[0].out, hidden = (size_t)R * C;
    ops->embedding_forward(ops, p->d_out, p->rows, d_embedded, R, C); // gather the image rows
    ops->zero(ops, p->d_g2, hidden * s);
    lora_linear_backward(ops, &p->fc[2], param_act, grads, &p->scratch, p->d_g2, p->d_out, p->g2, p->lora_h[2], R);
    void *d_h2 = p->d_out; // dout is read; its buffer takes dh2
    ops->zero(ops, d_h2, hidden * s);
    ops->gelu_backward(ops, d_h2, p->d_g2, p->h2, hidden);
    ops->zero(ops, p->d_g1, wide * s);
    lora_linear_backward(ops, &p->fc[1], param_act, grads, &p->scratch, p->d_g1, d_h2, p->g1, p->lora_h[1], R);
    ops->zero(ops, p->d_h1, wide * s);
    ops->gelu_backward(ops, p->d_h1, p->d_g1, p->h1, wide);
    if (p->d_features) ops->zero(ops, p->d_features, (size_t)R * p->fc[0].in * s);
    lora_linear_backward(ops, &p->fc[0], param_act, grads, &p->scratch, p->d_features, p->d_h1, features,
                         p->lora_h[0], R);
}
