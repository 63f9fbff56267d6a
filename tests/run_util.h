// Helpers for tests that drive the trainer through its Config.
#pragma once
#include "test_util.h"

#include "trainer/trainer.h"

// config_set(config, fmt % value), failing the test with the key's message.
void config_set_or_fail(Config *config, const char *fmt, const char *value);
