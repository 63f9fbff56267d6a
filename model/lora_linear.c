// model: a linear with an optional LoRA adapter (lora_linear.h).
#include "lora_linear.h"

static const void *entry_act(const Ops *ops, const void *param_act, const ParamEntry *e) {
    return (const uint8_t *)param_act + e->offset * dtype_size(ops->act_dtype);
}

// The input the adapter sees: dropout(x) in scratch->x_dropped, or x.
static const void *adapter_input(const Ops *ops, const LoraLinear *l, const LoraScratch *scratch, const void *x,
                                 int N) {
    if (l->dropout <= 0) return x;
    ops->dropout_forward(ops, scratch->x_dropped, x, (size_t)N * l->in, l->dropout, l->dropout_seed, 0);
    return scratch->x_dropped;
}

void lora_linear_forward(const Ops *ops, const LoraLinear *l, const void *param_act, const LoraScratch *scratch,
                         void *y, const void *x, void *h, int N) {
    ops->matmul(ops, y, x, l->W, N, l->out, l->in, false, true, 1.0f, 0.0f);
    if (l->b) ops->bias_add(ops, y, l->b, N, l->out);
    if (!l->A) return;
    const void *A = entry_act(ops, param_act, l->A), *B = entry_act(ops, param_act, l->B);
    ops->matmul(ops, h, adapter_input(ops, l, scratch, x, N), A, N, l->r, l->in, false, true, 1.0f, 0.0f);
    ops->matmul(ops, y, h, B, N, l->out, l->r, false, true, l->scale, 1.0f);
}

void lora_linear_backward(const Ops *ops, const LoraLinear *l, const void *param_act, float *grads,
                          const LoraScratch *scratch, void *dx, const void *dy, const void *x, const void *h, int N) {
    if (dx) ops->matmul(ops, dx, dy, l->W, N, l->in, l->out, false, false, 1.0f, 1.0f);
    if (!l->A) return;
    const void *A = entry_act(ops, param_act, l->A), *B = entry_act(ops, param_act, l->B);
    ops->matmul_weight_grad(ops, grads + l->B->offset, dy, h, N, l->out, l->r, l->scale);
    ops->matmul(ops, scratch->dh, dy, B, N, l->r, l->out, false, false, l->scale, 0.0f); // (N, r)
    const void *x_seen = adapter_input(ops, l, scratch, x, N);
    ops->matmul_weight_grad(ops, grads + l->A->offset, scratch->dh, x_seen, N, l->r, l->in, 1.0f);
    if (!dx) return;
    if (l->dropout <= 0) {
        ops->matmul(ops, dx, scratch->dh, A, N, l->in, l->r, false, false, 1.0f, 1.0f);
        return;
    }
    ops->matmul(ops, scratch->dx_dropped, scratch->dh, A, N, l->in, l->r, false, false, 1.0f, 0.0f);
    ops->dropout_backward(ops, dx, scratch->dx_dropped, (size_t)N * l->in, l->dropout, l->dropout_seed, 0);
}
