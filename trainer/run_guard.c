// Never lose a run: checkpoints with a disk guard, exact resume, and the
// SIGINT / SIGTERM handlers that turn preemption into a clean checkpoint.
#include "train_private.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LOW_DISK_RECHECK_SECONDS 30
#define SAVE_MARGIN_BYTES (64u << 10) // file-system blocks and directory entries (plus 1% of the bytes)

// ----------------------------------------------------------------------------
// signals: the first asks the loop to stop, the second ends the process

volatile sig_atomic_t stop_signal;
static struct sigaction previous_int, previous_term;

static void on_stop_signal(int signal_number) {
    stop_signal = signal_number;
    struct sigaction immediate = {.sa_handler = SIG_DFL};
    sigaction(SIGINT, &immediate, NULL);
    sigaction(SIGTERM, &immediate, NULL);
}

void stop_signals_install(void) {
    stop_signal = 0;
    struct sigaction action = {.sa_handler = on_stop_signal};
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &previous_int);
    sigaction(SIGTERM, &action, &previous_term);
}

void stop_signals_restore(void) {
    sigaction(SIGINT, &previous_int, NULL);
    sigaction(SIGTERM, &previous_term, NULL);
}

// ----------------------------------------------------------------------------
// disk guard

void format_bytes(uint64_t bytes, char *text, size_t size) {
    if (bytes >= (1ull << 30)) snprintf(text, size, "%.2f GiB", (double)bytes / (1ull << 30));
    else if (bytes >= (1ull << 20)) snprintf(text, size, "%.2f MiB", (double)bytes / (1ull << 20));
    else snprintf(text, size, "%llu bytes", (unsigned long long)bytes);
}

static bool holds_whole_state(const Run *run) {
    return zero_state(run->zero).count == model_params(run->model)->total;
}

bool check_checkpoints_supported(const Run *run, Error *err) {
    if (!run->control->resume || holds_whole_state(run)) return true;
    return fail(err, "--resume with zero.stage 2 over %d ranks: per-rank optimizer shards are not checkpointed yet "
                     "(resume with zero.stage 0)",
                run->dist.info.world_size);
}

// ZeRO-2 over several ranks: rank 0 holds only its optimizer shard, so the
// step folder gets the adapter alone (not resumable).
static bool save_adapter_only(Run *run, int next_step, char *path, size_t path_size, Error *err) {
    snprintf(path, path_size, "%s/step-%06d", run->config->checkpoint.dir, next_step);
    if (!adapter_save(run->model, &run->adapter_info, path, err)) return fail_context(err, "saving the adapter to %s: ", path);
    printf("note: zero.stage 2 over %d ranks: %s holds the adapter only (optimizer shards are not checkpointed)\n",
           run->dist.info.world_size, path);
    return true;
}

static TrainerState state_at(Run *run, int next_step) {
    TrainerState state = run->progress;
    state.step = next_step;
    state.optimizer_steps = zero_state(run->zero).step;
    state.seed = run->config->train.seed;
    state.config_yaml = run->config_yaml;
    run_data_position(run, &state.epoch, &state.step_in_epoch);
    return state;
}

static CheckpointImage *image_at(Run *run, int next_step, Error *err) {
    TrainerState state = state_at(run, next_step);
    ZeroState optimizer = zero_state(run->zero);
    CheckpointSource source = {run->model, &run->adapter_info, optimizer.m, optimizer.v, optimizer.on_host, &state};
    return checkpoint_image_create(&source, err);
}

int checkpoints_kept(const Config *config, int total_steps) {
    int every = config->checkpoint.every_steps, keep = config->checkpoint.keep_last;
    int saves = every > 0 ? (total_steps - 1) / every : 0;
    return keep > 0 && keep < saves ? keep : saves;
}

uint64_t run_disk_bytes(const Config *config, int total_steps, uint64_t checkpoint_bytes, size_t n_params) {
    uint64_t adapter_bytes = (uint64_t)n_params * sizeof(float) + SAVE_MARGIN_BYTES;
    return (uint64_t)checkpoints_kept(config, total_steps) * (checkpoint_bytes + SAVE_MARGIN_BYTES) + adapter_bytes;
}

static int saves_kept(const Run *run) { return checkpoints_kept(run->config, run->total_steps); }

bool check_disk_for_run(Run *run, Error *err) {
    if (!holds_whole_state(run)) return true; // adapter-only step folders: see save_adapter_only
    CheckpointImage *image = image_at(run, 0, err);
    if (!image) return false;
    uint64_t checkpoint_bytes = checkpoint_image_bytes(image), free_bytes;
    checkpoint_image_destroy(image);
    uint64_t need = run_disk_bytes(run->config, run->total_steps, checkpoint_bytes, model_params(run->model)->total);
    const char *dir = run->config->checkpoint.dir;
    if (!disk_free_bytes(dir, &free_bytes, err)) return false;
    char need_text[32], free_text[32], checkpoint_text[32];
    format_bytes(need, need_text, sizeof need_text);
    format_bytes(free_bytes, free_text, sizeof free_text);
    format_bytes(checkpoint_bytes, checkpoint_text, sizeof checkpoint_text);
    printf("disk: %s needs %s (%d checkpoints of %s + the final adapter), %s free\n", dir, need_text,
           saves_kept(run), checkpoint_text, free_text);
    if (need <= free_bytes) return true;
    if (run->control->allow_low_disk) {
        printf("warning: not enough free space for the whole run; going on (--allow-low-disk)\n");
        return true;
    }
    return fail(err, "checkpoint.dir %s: the run needs %s (%d checkpoints of %s + the final adapter) but %s is "
                     "free; free some space, lower checkpoint.keep_last, or pass --allow-low-disk",
                dir, need_text, saves_kept(run), checkpoint_text, free_text);
}

static bool has_room(const char *dir, uint64_t need, uint64_t *free_bytes, Error *err) {
    return disk_free_bytes(dir, free_bytes, err) && *free_bytes >= need;
}

// Sleeps up to low_disk_wait_minutes in LOW_DISK_RECHECK_SECONDS steps until
// need fits; a stop signal ends the wait.
static bool wait_for_room(const Run *run, uint64_t need, uint64_t *free_bytes, Error *err) {
    double deadline = time_seconds() + 60.0 * run->config->checkpoint.low_disk_wait_minutes;
    while (time_seconds() < deadline && !stop_signal) {
        unsigned left = (unsigned)(deadline - time_seconds()) + 1;
        sleep(left < LOW_DISK_RECHECK_SECONDS ? left : LOW_DISK_RECHECK_SECONDS);
        if (has_room(run->config->checkpoint.dir, need, free_bytes, err)) return true;
    }
    return false;
}

// need bytes free in checkpoint.dir: prune what keep_last allows (leaving
// room for the new one, never the newest complete), then on_low_disk.
static bool ensure_room(Run *run, uint64_t need, Error *err) {
    const Config *config = run->config;
    const char *dir = config->checkpoint.dir;
    uint64_t free_bytes;
    if (has_room(dir, need, &free_bytes, err)) return true;
    if (config->checkpoint.keep_last > 0 && path_exists(dir) && !checkpoint_prune(dir, config->checkpoint.keep_last - 1, err))
        return false;
    if (has_room(dir, need, &free_bytes, err)) return true;
    char need_text[32], free_text[32];
    format_bytes(need, need_text, sizeof need_text);
    format_bytes(free_bytes, free_text, sizeof free_text);
    bool wait = strcmp(config->checkpoint.on_low_disk, "wait") == 0;
    if (wait) {
        printf("low disk: the checkpoint needs %s in %s, %s free; re-checking every %d s for up to %g minutes\n",
               need_text, dir, free_text, LOW_DISK_RECHECK_SECONDS, (double)config->checkpoint.low_disk_wait_minutes);
        fflush(stdout);
        if (wait_for_room(run, need, &free_bytes, err)) return true;
        format_bytes(free_bytes, free_text, sizeof free_text);
    }
    return fail(err, "checkpoint.dir %s: a checkpoint needs %s, %s free (checkpoint.on_low_disk: %s); stopped "
                     "before saving: resume from the last complete checkpoint with --resume",
                dir, need_text, free_text, config->checkpoint.on_low_disk);
}

bool save_checkpoint(Run *run, int next_step, char *path, size_t path_size, Error *err) {
    if (!holds_whole_state(run)) return save_adapter_only(run, next_step, path, path_size, err);
    CheckpointImage *image = image_at(run, next_step, err);
    if (!image) return false;
    uint64_t bytes = checkpoint_image_bytes(image);
    const char *dir = run->config->checkpoint.dir;
    bool ok = ensure_room(run, bytes + bytes / 100 + SAVE_MARGIN_BYTES, err) &&
              checkpoint_write(dir, image, path, path_size, err);
    checkpoint_image_destroy(image);
    if (!ok) return false;
    int keep = run->config->checkpoint.keep_last;
    Error prune_err;
    if (keep > 0 && !checkpoint_prune(dir, keep, &prune_err))
        printf("warning: could not prune old checkpoints: %s\n", prune_err.message);
    return true;
}

// ----------------------------------------------------------------------------
// resume

// First line where two YAML texts differ, for the error message.
static void first_difference(const char *a, const char *b, char *out, size_t size) {
    while (*a && *b) {
        size_t la = strcspn(a, "\n"), lb = strcspn(b, "\n");
        if (la != lb || strncmp(a, b, la) != 0) {
            snprintf(out, size, "'%.*s' in the checkpoint, '%.*s' now", (int)la, a, (int)lb, b);
            return;
        }
        a += la + (a[la] == '\n');
        b += lb + (b[lb] == '\n');
    }
    snprintf(out, size, "one has more lines than the other");
}

static bool resolve_resume_dir(const Run *run, char *dir, size_t size, Error *err) {
    const char *resume = run->control->resume;
    if (strcmp(resume, "latest") == 0) return checkpoint_find_latest(run->config->checkpoint.dir, dir, size, err);
    if (snprintf(dir, size, "%s", resume) >= (int)size) return fail(err, "--resume: path too long");
    return true;
}

bool resume_from_checkpoint(Run *run, int *start_step, Error *err) {
    char dir[CONFIG_PATH_MAX + 64];
    if (!resolve_resume_dir(run, dir, sizeof dir, err)) return fail_context(err, "--resume: ");
    TrainerState state;
    ZeroState optimizer = zero_state(run->zero);
    if (!checkpoint_load(dir, run->model, optimizer.m, optimizer.v, optimizer.on_host, &state, err)) return false;
    bool same_config = strcmp(state.config_yaml, run->config_yaml) == 0;
    if (!same_config) {
        char difference[512];
        first_difference(state.config_yaml, run->config_yaml, difference, sizeof difference);
        trainer_state_free(&state);
        return fail(err, "--resume %s: the checkpoint was made with a different config (%s)", dir, difference);
    }
    trainer_state_free(&state);
    zero_restore(run->zero, model_param_data(run->model), state.optimizer_steps);
    run_data_seek(run, state.epoch, state.step_in_epoch);
    run->progress = state;
    run->progress.config_yaml = NULL;
    *start_step = state.step;
    printf("resumed from %s at step %d (epoch %d, step %lld of it)\n", dir, state.step, state.epoch,
           (long long)state.step_in_epoch);
    return true;
}
