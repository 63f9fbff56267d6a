// Tokenizer throughput: MB/s of hf_tokenizer_encode (one thread, no special
// tokens) over the documents of a text file, separated by "\x1e" as
// scripts/bench_tokenizer.py writes them (it runs Hugging Face `tokenizers`
// on the same file and tokenizer in the same run, and compares the ids' sum).
// usage: bench_tokenizer TOKENIZER_JSON TEXT_FILE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/data.h"

// Encodes every document once; *n_ids and *id_sum cover all of them.
static bool encode_all(const HfTokenizer *tok, const char *text, size_t size, int64_t *n_ids, int64_t *id_sum,
                       int64_t *n_docs, Error *err) {
    for (size_t start = 0; start < size;) {
        const char *end = memchr(text + start, '\x1e', size - start);
        size_t len = end ? (size_t)(end - (text + start)) : size - start;
        int32_t *ids = NULL;
        int count = 0;
        if (!hf_tokenizer_encode(tok, text + start, len, false, &ids, &count, err)) return false;
        for (int i = 0; i < count; i++) *id_sum += ids[i];
        *n_ids += count;
        (*n_docs)++;
        free(ids);
        start += len + 1;
    }
    return true;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: bench_tokenizer TOKENIZER_JSON TEXT_FILE\n");
        return 2;
    }
    Error err = {{0}};
    char *text = NULL;
    size_t size = 0;
    double load_start = time_seconds();
    HfTokenizer *tok = hf_tokenizer_load(argv[1], &err);
    double load_seconds = time_seconds() - load_start;
    if (!tok || !read_file(argv[2], &text, &size, &err)) {
        fprintf(stderr, "bench_tokenizer: %s\n", err.message);
        return 1;
    }
    int64_t n_ids = 0, id_sum = 0, n_docs = 0;
    double start = time_seconds();
    bool ok = encode_all(tok, text, size, &n_ids, &id_sum, &n_docs, &err);
    double seconds = time_seconds() - start;
    if (!ok) {
        fprintf(stderr, "bench_tokenizer: %s\n", err.message);
        return 1;
    }
    printf("lora-train  %-40s load %.3f s  %lld docs %.1f MB -> %lld ids (sum %lld) in %.2f s: %.2f MB/s\n", argv[1],
           load_seconds, (long long)n_docs, size / 1e6, (long long)n_ids, (long long)id_sum, seconds,
           size / 1e6 / seconds);
    hf_tokenizer_destroy(tok);
    free(text);
    return 0;
}
