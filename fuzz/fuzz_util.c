#include "fuzz_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char temp_path[256];

static void remove_temp(void) { unlink(temp_path); }

// A failure here is the harness's own, not the code under test: abort loudly.
static void die(const char *what) {
    perror(what);
    abort();
}

const char *fuzz_write_temp(const uint8_t *data, size_t size, const char *suffix) {
    if (!temp_path[0]) {
        snprintf(temp_path, sizeof temp_path, "/tmp/lora-train-fuzz-XXXXXX%s", suffix);
        int fd = mkstemps(temp_path, (int)strlen(suffix));
        if (fd < 0) die("mkstemps");
        close(fd);
        atexit(remove_temp);
    }
    FILE *file = fopen(temp_path, "wb");
    if (!file) die(temp_path);
    if (size && fwrite(data, 1, size, file) != size) die("fwrite");
    if (fclose(file) != 0) die("fclose");
    return temp_path;
}
