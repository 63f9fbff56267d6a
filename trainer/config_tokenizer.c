// The tokenizer a config trains with: model.path's tokenizer.json and the chat template of data.template.
#include "data/data.h"
#include "trainer.h"

Tokenizer *config_tokenizer(const Config *config, Error *err) {
    const char *path = config->model.path;
    Tokenizer *tok = path_exists(path) ? tokenizer_load(path, err) : tokenizer_bytes(err);
    if (tok && !tokenizer_set_chat_template(tok, config->data.chat_template, err)) {
        fail_context(err, "data.template: ");
        tokenizer_destroy(tok);
        return NULL;
    }
    return tok;
}
