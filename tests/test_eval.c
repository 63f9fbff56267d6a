// Held-out evaluation through train_run_with on the CPU backend: the
// data.eval_fraction split never overlaps training and the training loader
// serves exactly its share; the eval loss and token accuracy a run reports
// equal a direct computation on the held-out samples with the final adapter
// (the model's own cross-entropy in eval mode, argmax of model_logits, a
// sample's answer exact when every label token is the argmax);
// training with evaluation is bit-identical to training without; keep_best
// writes best/; image-text data evaluates too; bad eval keys are refused.
#include "run_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"
#include "data/data.h"
#include "trainer/trainer.h"

static void run(const Config *config, TrainSummary *summary) {
    Error err;
    if (!train_run_with(config, NULL, summary, &err)) fail_msg("train_run_with: %s", err.message);
}

static void test_split_is_disjoint_and_fixed(void **state) {
    int64_t *train, *held_out, *train2, *held_out2, n_train, n_held_out, n_train2, n_held_out2;
    Error err;
    assert_true(data_split_held_out(100, 0.1, 42, &train, &n_train, &held_out, &n_held_out, &err));
    assert_true(data_split_held_out(100, 0.1, 42, &train2, &n_train2, &held_out2, &n_held_out2, &err));
    assert_int_equal(n_held_out, 10);
    assert_int_equal(n_train, 90);
    assert_memory_equal(held_out, held_out2, 10 * sizeof(int64_t));
    uint8_t seen[100] = {0};
    for (int64_t i = 0; i < n_train; i++) seen[train[i]]++;
    for (int64_t i = 0; i < n_held_out; i++) seen[held_out[i]]++;
    for (int i = 0; i < 100; i++) assert_int_equal(seen[i], 1);
    for (int64_t i = 1; i < n_held_out; i++) assert_true(held_out[i - 1] < held_out[i]);
    bool contiguous = held_out[9] - held_out[0] == 9;
    assert_false(contiguous); // drawn from a permutation, not the file's tail or head
    free(train2);
    free(held_out2);
    assert_true(data_split_held_out(100, 0.1, 43, &train2, &n_train2, &held_out2, &n_held_out2, &err));
    assert_memory_not_equal(held_out, held_out2, 10 * sizeof(int64_t));
    free(train);
    free(held_out);
    free(train2);
    free(held_out2);
    assert_false(data_split_held_out(1, 0.5, 42, &train, &n_train, &held_out, &n_held_out, &err));
}

// The dataset index whose sample starts a row of tokens (records differ in their first tokens).
static int64_t sample_of_row(const Dataset *dataset, const int32_t *tokens) {
    for (int64_t i = 0; i < dataset_size(dataset); i++) {
        const Sample *sample = dataset_sample(dataset, i);
        if (memcmp(sample->ids, tokens, (size_t)sample->length * sizeof(int32_t)) == 0) return i;
    }
    fail_msg("a row that is no sample of the dataset");
    return -1;
}

// Over two shuffled epochs the training loader serves each training sample once an epoch and no held-out one.
static void test_training_loader_serves_its_share(void **state) {
    const char *dir = make_temp_dir("eval-share");
    char path[2048];
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    write_text_records(path, 40);
    Error err;
    Tokenizer *tok = tokenizer_bytes(&err);
    Dataset *dataset = dataset_open_jsonl(path, tok, 64, &err);
    assert_non_null(dataset);
    int64_t *train, *held_out, n_train, n_held_out;
    assert_true(data_split_held_out(40, 0.25, 7, &train, &n_train, &held_out, &n_held_out, &err));
    DataLoaderOptions options = {.micro_batch = 1, .grad_accum = 1, .max_seq_len = 64, .seed = 3, .shuffle = true,
                                 .world_size = 1, .subset = train, .n_subset = n_train};
    DataLoader *loader = dataloader_create(dataset, &options, &err);
    assert_non_null(loader);
    assert_int_equal(dataloader_steps_per_epoch(loader), 30);
    for (int epoch = 0; epoch < 2; epoch++) {
        int served[40] = {0};
        for (int step = 0; step < 30; step++) served[sample_of_row(dataset, dataloader_next(loader)->tokens)]++;
        for (int64_t i = 0; i < n_train; i++) assert_int_equal(served[train[i]], 1);
        for (int64_t i = 0; i < n_held_out; i++) assert_int_equal(served[held_out[i]], 0);
    }
    dataloader_destroy(loader);
    free(train);
    free(held_out);
    dataset_destroy(dataset);
    tokenizer_destroy(tok);
}

static Config eval_config(const char *dir, const char *extra) {
    const char *recipe[] = {"data.max_seq_len=32", "lora.target=all", "lora.dropout=0.1", "train.micro_batch=2",
                            "train.max_steps=4", "train.lr=3e-3", "train.log_every=100", "train.backend=cpu", extra};
    return tiny_run_config(dir, recipe, sizeof recipe / sizeof recipe[0]);
}

static Model *trained_model(const Config *config, const char *adapter_dir) {
    LlamaConfig llama;
    Error err;
    if (!hf_read_llama_config(config->model.path, &llama, &err)) fail_msg("%s", err.message);
    ModelOptions options = {.ops = ops_cpu(), .config = llama, .max_batch = 1, .max_seq_len = config->data.max_seq_len,
                            .lm_head_chunk = 1024, .lora = {.r = config->lora.r, .alpha = config->lora.alpha}};
    memcpy(options.lora.targets, config->lora.targets, sizeof options.lora.targets);
    Model *model = model_create(&options, &err);
    if (!model || !hf_load_weights(model, config->model.path, &err) || !adapter_load(model, adapter_dir, &err))
        fail_msg("%s", err.message);
    return model;
}

typedef struct Direct {
    double loss, token_accuracy, answer_accuracy;
} Direct;

// The held-out samples one at a time: the model's cross-entropy sum (model_step
// in eval mode) over all label tokens, and argmax hits from model_logits.
static Direct direct_eval(const Config *config, Model *model, Dataset *dataset, const int64_t *held_out, int64_t n) {
    Error err;
    DataLoaderOptions options = {.micro_batch = 1, .grad_accum = 1, .max_seq_len = config->data.max_seq_len,
                                 .world_size = 1, .subset = held_out, .n_subset = n};
    DataLoader *loader = dataloader_create(dataset, &options, &err);
    assert_non_null(loader);
    int V = model_config(model)->vocab_size, T = config->data.max_seq_len;
    float *logits = malloc((size_t)T * V * sizeof(float));
    double loss_sum = 0, hits = 0, labels = 0, exact_answers = 0;
    for (int64_t i = 0; i < n; i++) {
        const StepBatch *step = dataloader_next(loader);
        Batch batch = {.B = 1, .T = T, .tokens = step->tokens, .targets = step->targets};
        StepOptions eval_mode = {.grad_scale = 1, .train = false};
        double sum;
        if (!model_step(model, &batch, &eval_mode, &err) || !model_loss_sum(model, &sum, &err) ||
            !model_logits(model, &batch, logits, &err))
            fail_msg("%s", err.message);
        loss_sum += sum;
        bool exact = true;
        for (int t = 0; t < T; t++) {
            if (step->targets[t] == IGNORE_INDEX) continue;
            const float *row = logits + (size_t)t * V;
            int best = 0;
            for (int v = 1; v < V; v++)
                if (row[v] > row[best]) best = v;
            hits += best == step->targets[t];
            exact = exact && best == step->targets[t];
            labels++;
        }
        exact_answers += exact;
    }
    free(logits);
    dataloader_destroy(loader);
    return (Direct){loss_sum / labels, hits / labels, exact_answers / (double)n};
}

// n chats whose answer is a short label ("odd" or "even" of a one-digit number): exact answers are learnable.
static void write_label_chats(const char *path, int n) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < n; i++)
        fprintf(f, "{\"messages\": [{\"role\": \"user\", \"content\": \"%d?\"}, {\"role\": \"assistant\", "
                   "\"content\": \"%s\"}]}\n", i % 10, i % 2 ? "odd" : "even");
    assert_int_equal(fclose(f), 0);
}

// Trains 16 steps on dir/data.jsonl holding 40 records, evaluating a quarter of them after steps 8 and 16.
static void check_against_direct_computation(const char *dir, bool answers_learnt) {
    char path[2048];
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    Config config = eval_config(dir, "data.eval_fraction=0.25");
    config_set_or_fail(&config, "%s", "train.max_steps=16");
    config_set_or_fail(&config, "%s", "train.lr=2e-2");
    config_set_or_fail(&config, "%s", "train.eval_every=8");
    config_set_or_fail(&config, "%s", "checkpoint.keep_best=true");
    TrainSummary summary;
    run(&config, &summary);
    assert_int_equal(summary.evaluations, 2);
    assert_true(summary.best_eval_step == 8 || summary.best_eval_step == 16);

    Error err;
    Tokenizer *tok = tokenizer_bytes(&err);
    Dataset *dataset = dataset_open_jsonl(path, tok, config.data.max_seq_len, &err);
    int64_t *train, *held_out, n_train, n_held_out;
    assert_true(data_split_held_out(40, 0.25, config.train.seed, &train, &n_train, &held_out, &n_held_out, &err));
    assert_int_equal(n_held_out, 10);
    Model *model = trained_model(&config, summary.adapter_dir);
    Direct direct = direct_eval(&config, model, dataset, held_out, n_held_out);
    print_message("eval loss %.9f (direct %.9f), token accuracy %.4f (direct %.4f)\n", summary.eval_loss, direct.loss,
                  summary.eval_token_accuracy, direct.token_accuracy);
    assert_true(fabs(summary.eval_loss - direct.loss) < 1e-5 * direct.loss);
    assert_true(summary.eval_token_accuracy == direct.token_accuracy);
    print_message("exact answers %.4f (direct %.4f)\n", summary.eval_answer_accuracy, direct.answer_accuracy);
    assert_true(summary.eval_answer_accuracy == direct.answer_accuracy);
    if (answers_learnt) assert_true(direct.answer_accuracy > 0.2); // 0.5 here: the path is exercised
    assert_true(direct.token_accuracy > 0);

    snprintf(path, sizeof path, "%s/out/best/adapter_model.safetensors", dir);
    assert_true(path_exists(path));
    snprintf(path, sizeof path, "%s/out/best/eval.json", dir);
    char *json;
    size_t size;
    assert_true(read_file(path, &json, &size, &err));
    char expected[32];
    snprintf(expected, sizeof expected, "\"step\": %d", summary.best_eval_step);
    assert_non_null(strstr(json, expected));
    free(json);
    model_destroy(model);
    free(train);
    free(held_out);
    dataset_destroy(dataset);
    tokenizer_destroy(tok);
}

static void test_eval_equals_direct_computation(void **state) {
    const char *dir = make_temp_dir("eval-direct");
    char path[2048];
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    write_text_records(path, 40);
    check_against_direct_computation(dir, false);
}

static void test_exact_answers_equal_direct_computation(void **state) {
    const char *dir = make_temp_dir("eval-answers");
    char path[2048];
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    write_label_chats(path, 40);
    check_against_direct_computation(dir, true);
}

// Evaluation after every step (data.eval_path) leaves training's losses and adapter bit for bit.
static void test_training_identical_with_evaluation(void **state) {
    const char *dir = make_temp_dir("eval-identical");
    char path[2048], held_out[2048];
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    write_text_records(path, 40);
    snprintf(held_out, sizeof held_out, "%s/held_out.jsonl", dir);
    write_text_records(held_out, 6);
    Config plain = eval_config(dir, "data.shuffle=true");
    Config evaluated = plain;
    config_set_or_fail(&evaluated, "data.eval_path=%s", held_out);
    config_set_or_fail(&evaluated, "%s", "train.eval_every=1");
    config_set_or_fail(&evaluated, "checkpoint.dir=%s/evaluated", dir);
    LossRecorder losses_plain = {0}, losses_evaluated = {0};
    TrainControl control = {.on_step = record_loss, .context = &losses_plain};
    TrainSummary a, b;
    Error err;
    if (!train_run_with(&plain, &control, &a, &err)) fail_msg("%s", err.message);
    control.context = &losses_evaluated;
    if (!train_run_with(&evaluated, &control, &b, &err)) fail_msg("%s", err.message);
    assert_int_equal(a.evaluations, 0);
    assert_int_equal(b.evaluations, 4);
    assert_memory_equal(losses_plain.losses, losses_evaluated.losses, sizeof losses_plain.losses);
    size_t size_a, size_b;
    char *bytes_a = adapter_file_bytes(a.adapter_dir, &size_a), *bytes_b = adapter_file_bytes(b.adapter_dir, &size_b);
    assert_int_equal(size_a, size_b);
    assert_memory_equal(bytes_a, bytes_b, size_a);
    free(bytes_a);
    free(bytes_b);
}

// LLaVA records, held out by data.eval_fraction or in data.eval_path: evaluation runs through the tower
// and gives a finite loss and accuracies.
static void test_image_text_evaluation(void **state) {
    const char *dir = make_temp_dir("eval-vlm");
    const char *recipe[] = {"vision.tower_preset=tiny", "data.image_tokens=16", "data.max_seq_len=64",
                            "lora.target=all", "train.micro_batch=2", "train.max_steps=2", "train.lr=3e-3",
                            "train.log_every=100", "train.backend=cpu", "data.eval_fraction=0.25",
                            "train.eval_every=1"};
    Config config;
    if (!vlm_run_config(dir, 8, recipe, sizeof recipe / sizeof recipe[0], &config)) skip();
    TrainSummary summary;
    run(&config, &summary);
    assert_int_equal(summary.steps, 2);
    assert_int_equal(summary.evaluations, 2);
    assert_true(isfinite(summary.eval_loss) && summary.eval_loss > 0);
    assert_in_range((int)(summary.eval_token_accuracy * 1000), 0, 1000);
    assert_in_range((int)(summary.eval_answer_accuracy * 1000), 0, 1000);

    // data.eval_path: LLaVA records of their own (4, written by vlm_run_config into another folder)
    const char *held_out_dir = make_temp_dir("eval-vlm-held-out");
    Config held_out;
    assert_true(vlm_run_config(held_out_dir, 4, recipe, 9, &held_out));
    config_set_or_fail(&config, "%s", "data.eval_fraction=0");
    config_set_or_fail(&config, "data.eval_path=%s", held_out.data.path);
    config_set_or_fail(&config, "checkpoint.dir=%s/out-eval-path", dir);
    run(&config, &summary);
    assert_int_equal(summary.evaluations, 2);
    assert_true(isfinite(summary.eval_loss) && summary.eval_loss > 0);
}

// An epoch is the training share's: 30 of 40 samples in micro-batches of 4 give 7 steps, planned and run.
static void test_epoch_of_the_training_share(void **state) {
    const char *dir = make_temp_dir("eval-epoch");
    char path[2048];
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    write_text_records(path, 40);
    Config config = eval_config(dir, "data.eval_fraction=0.25");
    config_set_or_fail(&config, "%s", "train.max_steps=0");
    config_set_or_fail(&config, "%s", "train.micro_batch=4");
    RunPlan plan;
    Error err;
    if (!run_plan(&config, 1, &plan, &err)) fail_msg("%s", err.message);
    assert_int_equal(plan.total_steps, 7);
    TrainSummary summary;
    run(&config, &summary);
    assert_int_equal(summary.steps, 7);
    assert_int_equal(summary.evaluations, 1);
}

static void expect_refused(const char *const *assignments, size_t n, const char *message) {
    const char *dir = make_temp_dir("eval-keys");
    Config config;
    config_defaults(&config);
    config_set_or_fail(&config, "model.path=%s", dir);
    config_set_or_fail(&config, "data.path=%s", dir);
    for (size_t i = 0; i < n; i++) config_set_or_fail(&config, "%s", assignments[i]);
    Error err;
    assert_false(config_validate(&config, &err));
    print_message("%s\n", err.message);
    assert_non_null(strstr(err.message, message));
}

static void test_bad_eval_keys_are_refused(void **state) {
    const char *every[] = {"train.eval_every=10"};
    expect_refused(every, 1, "train.eval_every: 10, but there is no held-out data");
    const char *best[] = {"checkpoint.keep_best=true"};
    expect_refused(best, 1, "checkpoint.keep_best: there is no held-out data");
    const char *both[] = {"data.eval_fraction=0.1", "data.eval_path=/"};
    expect_refused(both, 2, "set one of them, not both");
    const char *missing[] = {"data.eval_path=/no/such/file.jsonl"};
    expect_refused(missing, 1, "data.eval_path: '/no/such/file.jsonl' does not exist");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_is_disjoint_and_fixed),
        cmocka_unit_test(test_training_loader_serves_its_share),
        cmocka_unit_test(test_eval_equals_direct_computation),
        cmocka_unit_test(test_exact_answers_equal_direct_computation),
        cmocka_unit_test(test_training_identical_with_evaluation),
        cmocka_unit_test(test_image_text_evaluation),
        cmocka_unit_test(test_epoch_of_the_training_share),
        cmocka_unit_test(test_bad_eval_keys_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
