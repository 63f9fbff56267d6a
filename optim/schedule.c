// optim: learning-rate schedules, as transformers' get_*_schedule_with_warmup.
#include "optim.h"

#include <math.h>

// Linear warmup from 0: step / warmup_steps for step < warmup_steps.
static double warmup_factor(const LrSchedule *schedule, int step) {
    int warmup = schedule->warmup_steps > 1 ? schedule->warmup_steps : 1;
    return (double)step / warmup;
}

// Fraction of the post-warmup steps done: (step - warmup) / (total - warmup).
static double decay_progress(const LrSchedule *schedule, int step) {
    int decay_steps = schedule->total_steps - schedule->warmup_steps;
    return (double)(step - schedule->warmup_steps) / (decay_steps > 1 ? decay_steps : 1);
}

// (total - step) / (total - warmup): 1 at the end of warmup, 0 at the end.
static double linear_factor(const LrSchedule *schedule, int step) {
    int decay_steps = schedule->total_steps - schedule->warmup_steps;
    return (double)(schedule->total_steps - step) / (decay_steps > 1 ? decay_steps : 1);
}

// Half a cosine (num_cycles 0.5) from 1 down to min_lr_ratio, as
// get_cosine_with_min_lr_schedule_with_warmup (plain cosine when the ratio is 0).
static double cosine_factor(const LrSchedule *schedule, int step) {
    double cosine = 0.5 * (1.0 + cos(M_PI * decay_progress(schedule, step)));
    double factor = cosine * (1.0 - schedule->min_lr_ratio) + schedule->min_lr_ratio;
    return factor > 0.0 ? factor : 0.0;
}

float lr_at_step(const LrSchedule *schedule, int step) {
    double factor = 1.0;
    if (step < schedule->warmup_steps) {
        factor = warmup_factor(schedule, step);
    } else if (schedule->kind == SCHEDULE_LINEAR) {
        factor = fmax(0.0, linear_factor(schedule, step));
    } else if (schedule->kind == SCHEDULE_COSINE) {
        factor = cosine_factor(schedule, step);
    }
    return (float)(schedule->peak_lr * factor);
}

// As TrainingArguments.get_warmup_steps: a ratio below 1 is ceil(ratio * total).
int warmup_steps_from(float warmup, int total_steps) {
    if (warmup >= 1.0f) return (int)warmup;
    return (int)ceil((double)warmup * total_steps);
}
