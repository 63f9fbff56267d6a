// model: the mlp2x_gelu projector, forward and backward.
//   forward:  h1 = x W1^T + b1;  g = gelu(h1);  out = g W2^T + b2
//   backward: dW2 += dout^T g;  db2 += sum dout;  dg = dout W2
//             dh1 = gelu'(h1) dg;  dW1 += dh1^T x;  db1 += sum dh1;  [dx = dh1 W1]
#include <math.h>
#include <stdio.h>

#include "projector.h"

static const ParamEntry *add_entry(ParamTable *table, const char *name, int64_t rows, int64_t cols) {
    ParamEntry *e = param_table_append(table, rows, cols);
    snprintf(e->name, sizeof e->name, "multi_modal_projector.%s", name);
    return e;
}

void projector_add_params(Projector *p, ParamTable *table, int in, int hidden) {
    p->in = in;
    p->hidden = hidden;
    p->w1 = add_entry(table, "linear_1.weight", hidden, in);
    p->b1 = add_entry(table, "linear_1.bias", hidden, 1);
    p->w2 = add_entry(table, "linear_2.weight", hidden, hidden);
    p->b2 = add_entry(table, "linear_2.bias", hidden, 1);
}

static void init_uniform(float *x, size_t n, float bound, Rng *rng) {
    for (size_t i = 0; i < n; i++) x[i] = (2.0f * rng_uniform(rng) - 1.0f) * bound;
}

void projector_init(const Projector *p, float *host_params, Rng *rng) {
    float bound1 = 1.0f / sqrtf((float)p->in), bound2 = 1.0f / sqrtf((float)p->hidden);
    init_uniform(host_params + p->w1->offset, p->w1->numel, bound1, rng);
    init_uniform(host_params + p->b1->offset, p->b1->numel, bound1, rng);
    init_uniform(host_params + p->w2->offset, p->w2->numel, bound2, rng);
    init_uniform(host_params + p->b2->offset, p->b2->numel, bound2, rng);
}

static const void *param(const Ops *ops, const void *params, const ParamEntry *e) {
    return (const uint8_t *)params + e->offset * dtype_size(ops->act_dtype);
}

void projector_forward(const Ops *ops, const Projector *p, const void *params, const void *features, int R) {
    int C = p->hidden;
    ops->matmul(ops, p->h1, features, param(ops, params, p->w1), R, C, p->in, false, true, 1.0f, 0.0f);
    ops->bias_add(ops, p->h1, param(ops, params, p->b1), R, C);
    ops->gelu_forward(ops, p->g, p->h1, (size_t)R * C);
    ops->matmul(ops, p->out, p->g, param(ops, params, p->w2), R, C, C, false, true, 1.0f, 0.0f);
    ops->bias_add(ops, p->out, param(ops, params, p->b2), R, C);
}

void projector_backward(const Ops *ops, const Projector *p, const void *params, float *grads,
                        const void *features, const void *d_embedded, int R) {
    int C = p->hidden;
    size_t act_bytes = (size_t)R * C * dtype_size(ops->act_dtype);
    ops->embedding_forward(ops, p->d_out, p->rows, d_embedded, R, C); // gather the image rows
    ops->matmul_weight_grad(ops, grads + p->w2->offset, p->d_out, p->g, R, C, C, 1.0f);
    ops->bias_backward(ops, grads + p->b2->offset, p->d_out, R, C);
    ops->matmul(ops, p->d_g, p->d_out, param(ops, params, p->w2), R, C, C, false, false, 1.0f, 0.0f);
    ops->zero(ops, p->d_out, act_bytes); // reused as dh1
    ops->gelu_backward(ops, p->d_out, p->d_g, p->h1, (size_t)R * C);
    ops->matmul_weight_grad(ops, grads + p->w1->offset, p->d_out, features, R, C, p->in, 1.0f);
    ops->bias_backward(ops, grads + p->b1->offset, p->d_out, R, C);
    if (p->d_features)
        ops->matmul(ops, p->d_features, p->d_out, param(ops, params, p->w1), R, p->in, C, false, false, 1.0f, 0.0f);
}
