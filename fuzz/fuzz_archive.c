// ImageStore over an arbitrary archive (tar, tar.gz, zip): the index pass,
// then a read of each name the seed archives use.
#include <stdlib.h>

#include "data/data.h"
#include "fuzz_util.h"

static const char *const names[] = {"a.png", "dir/b.png", "./a.png", "c.jpg"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Error err;
    ImageStore *store = image_store_open(fuzz_write_temp(data, size, ".tar"), &err);
    if (!store) return 0;
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        uint8_t *bytes;
        size_t n;
        if (image_store_has(store, names[i]) && image_store_read(store, names[i], &bytes, &n, &err)) free(bytes);
    }
    image_store_destroy(store);
    return 0;
}
