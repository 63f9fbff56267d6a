// config_load_yaml on arbitrary YAML, then the loaded config written back out.
#include <stdlib.h>

#include "fuzz_util.h"
#include "trainer/trainer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Config config;
    config_defaults(&config);
    Error err;
    if (!config_load_yaml(&config, fuzz_write_temp(data, size, ".yaml"), &err)) return 0;
    config_validate(&config, &err);
    free(config_to_yaml(&config, &err));
    return 0;
}
