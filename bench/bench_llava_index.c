// Time and peak RSS of indexing a LLaVA JSON / JSONL file (the streaming scan
// that keeps byte ranges only), then of parsing every record with json-c one
// at a time. Make a synthetic llava_v1_5_mix665k-sized file with
// scripts/make_llava_json.py. usage: bench_llava_index FILE
#include <stdio.h>
#include <sys/resource.h>

#include "data/data.h"

static double peak_rss_mib(void) {
    struct rusage usage;
    return getrusage(RUSAGE_SELF, &usage) == 0 ? (double)usage.ru_maxrss / 1024.0 : -1.0;
}

static bool parse_all(const LlavaIndex *index, int64_t *n_turns, Error *err) {
    for (int64_t i = 0; i < llava_index_count(index); i++) {
        LlavaRecord record;
        bool ok = llava_record_read(index, i, &record, err);
        *n_turns += record.n_turns;
        llava_record_free(&record);
        if (!ok) return fail_context(err, "record %lld: ", (long long)i);
    }
    return true;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s FILE\n", argv[0]);
        return 2;
    }
    Error err = {{0}};
    double start = time_seconds();
    LlavaIndex *index = llava_index_open(argv[1], &err);
    if (!index) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    double indexed = time_seconds();
    printf("index: %lld records (%s) in %.2f s, peak RSS %.1f MiB\n", (long long)llava_index_count(index),
           llava_index_is_jsonl(index) ? "JSONL" : "JSON array", indexed - start, peak_rss_mib());
    int64_t n_turns = 0;
    if (!parse_all(index, &n_turns, &err)) {
        fprintf(stderr, "%s\n", err.message);
        llava_index_destroy(index);
        return 1;
    }
    printf("parse every record: %lld turns in %.2f s, peak RSS %.1f MiB\n", (long long)n_turns,
           time_seconds() - indexed, peak_rss_mib());
    llava_index_destroy(index);
    return 0;
}
