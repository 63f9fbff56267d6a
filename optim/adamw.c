// optim: AdamW over the flat fp32 parameter buffer, gradient norm and clipping.
#include "optim.h"

#include <math.h>

bool adamw_init(AdamW *opt, const Ops *ops, size_t n, float beta1, float beta2, float eps,
                float weight_decay, Error *err) {
    *opt = (AdamW){.ops = ops, .n = n, .beta1 = beta1, .beta2 = beta2, .eps = eps,
                   .weight_decay = weight_decay};
    size_t bytes = n * sizeof(float);
    opt->m = ops->alloc(ops, bytes, err);
    opt->v = opt->m ? ops->alloc(ops, bytes, err) : NULL;
    if (!opt->v) {
        adamw_destroy(opt);
        return fail_context(err, "allocating AdamW moments for %zu parameters: ", n);
    }
    ops->zero(ops, opt->m, bytes);
    ops->zero(ops, opt->v, bytes);
    return true;
}

void adamw_destroy(AdamW *opt) {
    if (opt->m) opt->ops->free(opt->ops, opt->m);
    if (opt->v) opt->ops->free(opt->ops, opt->v);
    opt->m = opt->v = NULL;
}

void adamw_step(AdamW *opt, float *params, const float *grads, float lr) {
    adamw_step_unless_skipped(opt, params, grads, lr, NULL, INFINITY);
    opt->step++;
}

void adamw_step_unless_skipped(AdamW *opt, float *params, const float *grads, float lr, const float *sum_squares,
                               float norm_limit) {
    opt->ops->adamw(opt->ops, params, grads, opt->m, opt->v, opt->n, lr, opt->beta1, opt->beta2, opt->eps,
                    opt->weight_decay, opt->step + 1, sum_squares, norm_limit);
}

// sqrt(sum g^2), the sum taken on the device into a scalar, then downloaded.
float grad_norm(const Ops *ops, const float *grads, size_t n, float *scratch_device_scalar) {
    float sum_squares = 0.0f;
    ops->zero(ops, scratch_device_scalar, sizeof(float));
    ops->sum_squares(ops, scratch_device_scalar, grads, n);
    ops->download(ops, &sum_squares, scratch_device_scalar, sizeof(float));
    return sqrtf(sum_squares);
}

// torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), applied when < 1.
float clip_grads(const Ops *ops, float *grads, size_t n, float norm, float max_norm) {
    float clip_coef = max_norm / (norm + 1e-6f);
    if (clip_coef >= 1.0f) return 1.0f;
    ops->scale_f32(ops, grads, clip_coef, n);
    return clip_coef;
}
