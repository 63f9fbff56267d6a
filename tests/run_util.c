#include "run_util.h"

#include <stdio.h>

void config_set_or_fail(Config *config, const char *fmt, const char *value) {
    char assignment[2048];
    snprintf(assignment, sizeof assignment, fmt, value);
    Error err;
    if (!config_set(config, assignment, &err)) fail_msg("%s: %s", assignment, err.message);
}
