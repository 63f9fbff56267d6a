// safetensors_open on arbitrary bytes: every tensor it hands out must lie
// inside the file (ASan sees any byte read outside the mapping).
#include "checkpoints/checkpoints.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Error err;
    SafetensorsFile *file = safetensors_open(fuzz_write_temp(data, size, ".safetensors"), &err);
    if (!file) return 0;
    volatile uint8_t sink = 0;
    for (int i = 0; i < safetensors_count(file); i++) {
        Tensor tensor;
        if (!safetensors_get(file, safetensors_name(file, i), &tensor, &err)) continue;
        const uint8_t *bytes = tensor.data;
        size_t n = tensor_nbytes(&tensor);
        if (n) sink ^= bytes[0] ^ bytes[n - 1];
    }
    safetensors_metadata(file, "format");
    safetensors_close(file);
    (void)sink;
    return 0;
}
