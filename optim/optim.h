// optim: learning-rate schedules, AdamW over the flat parameter buffer,
// gradient-norm clipping.
#pragma once
#include <stdbool.h>
#include <stddef.h>

#include "../core/core.h"
#include "../kernels/ops.h"

typedef enum Schedule { SCHEDULE_CONSTANT, SCHEDULE_LINEAR, SCHEDULE_COSINE } Schedule;

typedef struct LrSchedule {
    Schedule kind;
    float peak_lr;
    int warmup_steps;
    int total_steps;
    float min_lr_ratio; // cosine decays to peak_lr * min_lr_ratio
} LrSchedule;

// Learning rate of optimizer step `step` (0-based), as transformers'
// get_{constant,linear,cosine}_schedule_with_warmup: step 0 of a warmup is 0.
float lr_at_step(const LrSchedule *schedule, int step);
// warmup < 1 is a ratio of total_steps (rounded up), otherwise a step count.
int warmup_steps_from(float warmup, int total_steps);

typedef struct AdamW {
    const Ops *ops;
    size_t n;            // parameters
    float *m, *v;        // backend memory, fp32
    float beta1, beta2, eps, weight_decay;
    int step;            // optimizer steps taken
} AdamW;

bool adamw_init(AdamW *opt, const Ops *ops, size_t n, float beta1, float beta2, float eps,
                float weight_decay, Error *err);
void adamw_destroy(AdamW *opt);
void adamw_step(AdamW *opt, float *params, const float *grads, float lr);
// Issues step opt->step + 1, left undone on the device when sqrt(*sum_squares) (device scalar) is not finite or
// above norm_limit (the adamw op's skip rule), without counting it: the caller adds it to opt->step once it has
// read the norm and knows the step was taken, so the bias correction stays torch's.
void adamw_step_unless_skipped(AdamW *opt, float *params, const float *grads, float lr, const float *sum_squares,
                               float norm_limit);

// L2 norm of the gradients (as torch.nn.utils.clip_grad_norm_'s total norm).
float grad_norm(const Ops *ops, const float *grads, size_t n, float *scratch_device_scalar);
// Scales grads by max_norm / (norm + 1e-6) when norm > max_norm, as torch.
// Returns the coefficient applied (1 when not clipped).
float clip_grads(const Ops *ops, float *grads, size_t n, float norm, float max_norm);
