// hf_tokenizer_load on an arbitrary tokenizer.json, then a round trip of a
// fixed text that exercises pre-tokenization, merges, bytes and added tokens.
#include <stdlib.h>
#include <string.h>

#include "data/data.h"
#include "fuzz_util.h"

static const char text[] = "Hello, world! <s>[INST] caf\xc3\xa9 \xe2\x80\x94 123  tabs\tand\nnewlines </s> \xf0\x9f\x98\x80";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Error err;
    HfTokenizer *tok = hf_tokenizer_load(fuzz_write_temp(data, size, ".json"), &err);
    if (!tok) return 0;
    int32_t *ids = NULL;
    int n_ids = 0;
    if (hf_tokenizer_encode(tok, text, strlen(text), true, &ids, &n_ids, &err)) {
        free(hf_tokenizer_decode(tok, ids, n_ids, false, &err));
        free(hf_tokenizer_decode(tok, ids, n_ids, true, &err));
        free(ids);
    }
    hf_tokenizer_id_to_token(tok, hf_tokenizer_vocab_size(tok) - 1);
    hf_tokenizer_token_to_id(tok, "<s>");
    hf_tokenizer_destroy(tok);
    return 0;
}
