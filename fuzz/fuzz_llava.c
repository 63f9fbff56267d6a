// LLaVA records (JSON array or JSONL): the streaming index, then every record parsed.
#include "data/data.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Error err;
    LlavaIndex *index = llava_index_open(fuzz_write_temp(data, size, ".json"), &err);
    if (!index) return 0;
    for (int64_t i = 0; i < llava_index_count(index); i++) {
        LlavaRecord record;
        llava_record_read(index, i, &record, &err);
        llava_record_free(&record);
    }
    llava_index_destroy(index);
    return 0;
}
