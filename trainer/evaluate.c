// Held-out evaluation: data.eval_path, or data.eval_fraction split off data.path.
//
// The evaluation loader yields micro-batches of one row in file order over the
// whole held-out set; rank r evaluates samples r, r + world_size, ... so every
// sample counts once whatever the world size. Each rank sums -log p and hits
// over its label tokens; one all-reduce gives the totals, so the loss is
// label-token weighted as training's. Nothing here draws from a random stream or moves
// the training loader, so a run trains the same with or without evaluation.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "train_private.h"

static bool open_eval_dataset(Run *run, Error *err) {
    const Config *config = run->config;
    if (run_is_vlm(config)) return vlm_open_held_out(run, err);
    run->eval.dataset = dataset_open_jsonl(config->data.eval_path, run->tokenizer, config->data.max_seq_len, err);
    return run->eval.dataset && dataset_check_skips(run->eval.dataset, config->data.max_skip_fraction, err);
}

bool eval_prepare(Run *run, DataLoaderOptions *options, Error *err) {
    const Config *config = run->config;
    Evaluation *eval = &run->eval;
    if (config->data.eval_path[0]) return open_eval_dataset(run, err) || fail_context(err, "data.eval_path: ");
    if (config->data.eval_fraction <= 0) return true;
    int64_t n_samples = run_data_size(run);
    if (!data_split_held_out(n_samples, config->data.eval_fraction, config->train.seed, &eval->train_subset,
                             &eval->n_train, &eval->eval_subset, &eval->n_eval, err))
        return fail_context(err, "data.eval_fraction %g of %s: ", (double)config->data.eval_fraction,
                            config->data.path);
    options->subset = eval->train_subset;
    options->n_subset = eval->n_train;
    return true;
}

bool eval_create_loader(Run *run, const DataLoaderOptions *train_options, Error *err) {
    const Config *config = run->config;
    Evaluation *eval = &run->eval;
    if (!config->data.eval_path[0] && config->data.eval_fraction <= 0) return true;
    DataLoaderOptions options = {.micro_batch = 1, .grad_accum = 1, .max_seq_len = config->data.max_seq_len,
                                 .seed = config->train.seed, .shuffle = false, .rank = 0, .world_size = 1,
                                 .subset = eval->eval_subset, .n_subset = eval->n_eval};
    eval->rank = train_options->rank;
    eval->world_size = train_options->world_size;
    void *held_out = eval->robot_dataset ? (void *)eval->robot_dataset
                     : eval->vlm_dataset ? (void *)eval->vlm_dataset : (void *)eval->dataset;
    eval->loader = run_open_loader(run, held_out, &options, err);
    if (eval->loader) return true;
    return fail_context(err, "the held-out data (%s): ",
                        config->data.eval_path[0] ? config->data.eval_path : "data.eval_fraction");
}

bool eval_enabled(const Run *run) { return run->eval.loader != NULL; }

void eval_print_header(const Run *run) {
    const Evaluation *eval = &run->eval;
    const Config *config = run->config;
    if (!eval_enabled(run)) return;
    printf("eval: %lld held-out samples (", (long long)step_loader_samples(eval->loader));
    if (eval->eval_subset) printf("data.eval_fraction %g of %s)", (double)config->data.eval_fraction, config->data.path);
    else printf("%s)", config->data.eval_path);
    int every = config->train.eval_every;
    if (every == 1) printf(" after every step\n");
    else if (every > 1) printf(" after every %d steps and the last\n", every);
    else printf(" after the last step\n");
}

bool eval_due(const Run *run, int step) {
    int every = run->config->train.eval_every;
    return eval_enabled(run) && ((every > 0 && (step + 1) % every == 0) || step + 1 == run->total_steps);
}

// This rank's share of the held-out data into *sums; robot runs also sum the
// action metrics of the argmax ids (OpenVLA's action_accuracy and action_l1_loss).
static bool eval_local(Run *run, EvalSums *sums, ActionMetricSums *actions, Error *err) {
    StepLoader *loader = run->eval.loader;
    int T = run->config->data.max_seq_len;
    int32_t *argmax = run->robot_dataset ? checked_malloc((size_t)T * sizeof *argmax, "argmax ids", err) : NULL;
    if (run->robot_dataset && !argmax) return false;
    ActionTokenizer action_tokenizer;
    if (argmax) action_tokenizer_init(&action_tokenizer, tokenizer_base_vocab_size(run->tokenizer));
    bool ok = true;
    for (int64_t i = run->eval.rank; ok && i < step_loader_steps_per_epoch(loader); i += run->eval.world_size) {
        step_loader_seek(loader, 0, i);
        const StepBatch *batch = step_loader_next(loader, err);
        Batch micro = {0};
        if (batch) micro = (Batch){.B = batch->B, .T = batch->T, .tokens = batch->tokens, .targets = batch->targets};
        ok = batch && vlm_micro_features(run, batch, 0, &micro, err) &&
             model_eval_batch_argmax(run->model, &micro, sums, argmax, err);
        if (ok && argmax) action_metrics_add(&action_tokenizer, argmax, batch->targets, (int64_t)batch->T, actions);
    }
    free(argmax);
    return ok;
}

bool eval_run(Run *run, int step, EvalResult *result, Error *err) {
    double start = time_seconds();
    EvalSums sums = {0};
    ActionMetricSums action_sums = {0};
    if (!eval_local(run, &sums, &action_sums, err)) return fail_context(err, "evaluation: ");
    double tokens[3] = {sums.loss_sum, (double)sums.n_label_tokens, (double)sums.n_correct};
    double answers[2] = {(double)sums.n_answers, (double)sums.n_answers_exact};
    double actions[3] = {(double)action_sums.n_action_tokens, (double)action_sums.n_correct, action_sums.l1_sum};
    if (!all_reduce_host(&run->dist, tokens, 3, err) || !all_reduce_host(&run->dist, answers, 2, err) ||
        !all_reduce_host(&run->dist, actions, 3, err))
        return fail_context(err, "evaluation: ");
    if (tokens[1] == 0) return fail(err, "evaluation: the held-out data has no label tokens");
    *result = (EvalResult){.step = step, .loss = tokens[0] / tokens[1], .token_accuracy = tokens[2] / tokens[1],
                           .answer_accuracy = answers[1] / answers[0], .n_label_tokens = (int64_t)tokens[1],
                           .n_answers = (int64_t)answers[0], .seconds = time_seconds() - start};
    result->perplexity = exp(result->loss);
    result->n_action_tokens = (int64_t)actions[0];
    result->action_accuracy = actions[0] > 0 ? actions[1] / actions[0] : NAN;
    result->action_l1 = actions[0] > 0 ? actions[2] / actions[0] : NAN;
    run->eval.n_done++;
    return true;
}

void eval_destroy(Run *run) {
    Evaluation *eval = &run->eval;
    step_loader_destroy(eval->loader);
    dataset_destroy(eval->dataset);
    vlm_dataset_destroy(eval->vlm_dataset);
    robot_dataset_destroy(eval->robot_dataset);
    free(eval->train_subset);
    free(eval->eval_subset);
}
