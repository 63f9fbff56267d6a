// kernels: backend-independent helpers of the op table.
#include "ops.h"

#include <math.h>

// Llama 3.1 rope_scaling, as transformers' _compute_llama3_parameters: with
// wavelen = 2 pi / f, wavelengths above original / low_freq_factor are divided
// by factor, those below original / high_freq_factor kept, and between them
// f' = (1 - s) f / factor + s f, s = (original / wavelen - low) / (high - low).
static float llama3_scaled_frequency(float inv_freq, const RopeScaling *scaling) {
    float original = (float)scaling->original_max_position;
    float low_freq_wavelen = original / scaling->low_freq_factor;
    float high_freq_wavelen = original / scaling->high_freq_factor;
    float wavelen = (float)(2.0 * M_PI) / inv_freq;
    if (wavelen < high_freq_wavelen) return inv_freq;
    if (wavelen > low_freq_wavelen) return inv_freq / scaling->factor;
    float smooth = (original / wavelen - scaling->low_freq_factor) /
                   (scaling->high_freq_factor - scaling->low_freq_factor);
    return (1.0f - smooth) * inv_freq / scaling->factor + smooth * inv_freq;
}

// inv_freq[i] = 1 / theta^(2i / head_dim) in fp32, as transformers'
// _compute_default_rope_parameters, then the llama3 scaling when asked.
void rope_inverse_frequencies(float *inv_freq, int head_dim, float theta, const RopeScaling *scaling) {
    for (int i = 0; i < head_dim / 2; i++) {
        float exponent = (float)(2 * i) / (float)head_dim;
        inv_freq[i] = 1.0f / powf(theta, exponent);
        if (scaling && scaling->llama3) inv_freq[i] = llama3_scaled_frequency(inv_freq[i], scaling);
    }
}

bool ops_cuda_is_emulated(void) {
#ifdef LORA_TRAIN_CUDA_EMU
    return true;
#else
    return false;
#endif
}
