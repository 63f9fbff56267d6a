// Never lose a run: checkpoints with a disk guard, exact resume, and the
// SIGINT / SIGTERM handlers that turn preemption into a clean checkpoint.
#include "train_private.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOW_DISK_RECHECK_SECONDS 30
#define SAVE_MARGIN_BYTES (64u << 10) // file-system blocks and directory entries (plus 1% of the bytes)

// ----------------------------------------------------------------------------
// signals: the first asks the loop to stop; with one rank a second ends the
// process, unless it comes within REPEAT_WINDOW_SECONDS of the first: that is
// the same signal delivered twice (coreutils timeout signals its child and
// then its process group; a shell's kill of a job does the same). With
// several ranks, repeats are ignored: a terminal or Slurm signals every rank
// and lora-launch forwards the same signal (it turns a second one into
// SIGKILL).

#define REPEAT_WINDOW_SECONDS 1.0

volatile sig_atomic_t stop_signal;
static bool handlers_installed, repeat_ends_process;
static struct sigaction previous_int, previous_term;
static struct timespec first_signal_time;

static double seconds_since(struct timespec then) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now); // async-signal-safe
    return (double)(now.tv_sec - then.tv_sec) + 1e-9 * (double)(now.tv_nsec - then.tv_nsec);
}

// A repeat after the window ends the process as the default action would.
static void on_stop_signal(int signal_number) {
    if (!stop_signal) {
        stop_signal = signal_number;
        clock_gettime(CLOCK_MONOTONIC, &first_signal_time);
        return;
    }
    if (!repeat_ends_process || seconds_since(first_signal_time) < REPEAT_WINDOW_SECONDS) return;
    struct sigaction immediate = {.sa_handler = SIG_DFL};
    sigaction(signal_number, &immediate, NULL);
    raise(signal_number);
}

static bool one_rank(void) {
    RankInfo ranks;
    Error ignored;
    return !rank_info_from_env(&ranks, &ignored) || ranks.world_size == 1;
}

bool stop_signals_install(bool *installed, Error *err) {
    *installed = false;
    if (handlers_installed) return true;
    stop_signal = 0;
    repeat_ends_process = one_rank();
    struct sigaction action = {.sa_handler = on_stop_signal};
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGINT, &action, &previous_int) != 0 || sigaction(SIGTERM, &action, &previous_term) != 0)
        return fail(err, "installing the SIGINT / SIGTERM handlers: %s", strerror(errno));
    handlers_installed = *installed = true;
    return true;
}

void stop_signals_restore(void) {
    sigaction(SIGINT, &previous_int, NULL);
    sigaction(SIGTERM, &previous_term, NULL);
    handlers_installed = false;
    stop_signal = 0;
}

// ----------------------------------------------------------------------------
// disk guard

void format_bytes(uint64_t bytes, char *text, size_t size) {
    if (bytes >= (1ull << 30)) snprintf(text, size, "%.2f GiB", (double)bytes / (1ull << 30));
    else if (bytes >= (1ull << 20)) snprintf(text, size, "%.2f MiB", (double)bytes / (1ull << 20));
    else snprintf(text, size, "%llu bytes", (unsigned long long)bytes);
}

static TrainerState state_at(Run *run, int next_step) {
    TrainerState state = run->progress;
    state.step = next_step;
    state.optimizer_steps = zero_state(run->zero).step;
    state.seed = run->config->train.seed;
    state.config_yaml = run->config_yaml;
    step_loader_position(run->loader, &state.epoch, &state.step_in_epoch);
    return state;
}

// The moments this rank saves: its ZeRO-2 shard, or at stage 0 (where every
// rank holds them all, equal) its dist_shard_range slice, so the ranks' files
// tile the buffer as at stage 2 and resume on any number of ranks.
static ZeroState saved_shard(const Run *run) {
    ZeroState optimizer = zero_state(run->zero);
    size_t total = model_params(run->model)->total, begin, end;
    if (run->dist.info.world_size == 1 || optimizer.count != total) return optimizer;
    dist_shard_range(total, run->dist.info.world_size, run->dist.info.rank, &begin, &end);
    optimizer.m += begin;
    optimizer.v += begin;
    optimizer.begin = begin;
    optimizer.count = end - begin;
    return optimizer;
}

static CheckpointImage *image_at(Run *run, int next_step, Error *err) {
    TrainerState state = state_at(run, next_step);
    ZeroState optimizer = saved_shard(run);
    CheckpointSource source = {run->model,        &run->adapter_info,          optimizer.m,     optimizer.v,
                               optimizer.on_host, &state,                      run->dist.info.rank,
                               run->dist.info.world_size, optimizer.begin,   optimizer.count};
    return checkpoint_image_create(&source, err);
}

int checkpoints_kept(const Config *config, int total_steps) {
    int every = config->checkpoint.every_steps, keep = config->checkpoint.keep_last;
    int saves = every > 0 ? (total_steps + every - 1) / every : 1; // the last step's too
    return keep > 0 && keep + 1 < saves ? keep + 1 : saves;
}

uint64_t run_disk_bytes(const Config *config, int total_steps, uint64_t checkpoint_bytes, size_t n_params) {
    uint64_t adapter_bytes = (uint64_t)n_params * sizeof(float) + SAVE_MARGIN_BYTES;
    int adapters = config->checkpoint.keep_best ? 2 : 1; // the final one and best/
    return (uint64_t)checkpoints_kept(config, total_steps) * (checkpoint_bytes + SAVE_MARGIN_BYTES) +
           (uint64_t)adapters * adapter_bytes;
}

const char *adapters_kept(const Config *config) {
    return config->checkpoint.keep_best ? "the final adapter and best/" : "the final adapter";
}

static int saves_kept(const Run *run) { return checkpoints_kept(run->config, run->total_steps); }

// Rank 0's part plus, for every other rank, a shard file no larger than rank 0's.
static uint64_t checkpoint_bytes_of_all_ranks(const Run *run, const CheckpointImage *rank0_image) {
    uint64_t others = (uint64_t)(run->dist.info.world_size - 1) * checkpoint_image_shard_bytes(rank0_image);
    return checkpoint_image_bytes(rank0_image) + others;
}

// checkpoint.dir (created if missing) takes a new file: a file in its place,
// a read-only file system or no permission is found before step 1, not at
// the first save.
static bool check_dir_writable(const char *dir, Error *err) {
    char probe[CONFIG_PATH_MAX + 64];
    snprintf(probe, sizeof probe, "%s/.write-probe-%d", dir, (int)getpid());
    if (!make_dirs(dir, err)) return fail_context(err, "checkpoint.dir %s: ", dir);
    int fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return fail(err, "checkpoint.dir %s: cannot write there: %s", dir, strerror(errno));
    int close_errno = close(fd) == 0 ? 0 : errno;
    if (unlink(probe) != 0) return fail(err, "checkpoint.dir %s: removing %s: %s", dir, probe, strerror(errno));
    if (close_errno) return fail(err, "checkpoint.dir %s: writing a test file: %s", dir, strerror(close_errno));
    return true;
}

bool check_disk_for_run(Run *run, Error *err) {
    if (!check_dir_writable(run->config->checkpoint.dir, err)) return false;
    CheckpointImage *image = image_at(run, 0, err);
    if (!image) return false;
    uint64_t checkpoint_bytes = checkpoint_bytes_of_all_ranks(run, image), free_bytes;
    checkpoint_image_destroy(image);
    uint64_t need = run_disk_bytes(run->config, run->total_steps, checkpoint_bytes, model_params(run->model)->total);
    const char *dir = run->config->checkpoint.dir;
    if (!disk_free_bytes(dir, &free_bytes, err)) return false;
    char need_text[32], free_text[32], checkpoint_text[32];
    format_bytes(need, need_text, sizeof need_text);
    format_bytes(free_bytes, free_text, sizeof free_text);
    format_bytes(checkpoint_bytes, checkpoint_text, sizeof checkpoint_text);
    printf("disk: %s needs %s (%d checkpoints of %s at once + %s), %s free\n", dir, need_text, saves_kept(run),
           checkpoint_text, adapters_kept(run->config), free_text);
    if (need <= free_bytes) return true;
    if (run->control->allow_low_disk) {
        printf("warning: not enough free space for the whole run; going on (--allow-low-disk)\n");
        return true;
    }
    return fail(err, "checkpoint.dir %s: the run needs %s (%d checkpoints of %s at once + %s) but %s is "
                     "free; free some space, lower checkpoint.keep_last, or pass --allow-low-disk",
                dir, need_text, saves_kept(run), checkpoint_text, adapters_kept(run->config), free_text);
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

// need bytes free in checkpoint.dir, or checkpoint.on_low_disk. Nothing is
// pruned to make room: keep_last prunes only after the new checkpoint is
// complete, so a save that cannot fit leaves every old one in place.
static bool ensure_room(Run *run, uint64_t need, Error *err) {
    const Config *config = run->config;
    const char *dir = config->checkpoint.dir;
    uint64_t free_bytes;
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
                     "before saving, the older checkpoints kept: free some space and resume with --resume",
                dir, need_text, free_text, config->checkpoint.on_low_disk);
}

static uint64_t room_for(uint64_t bytes) { return bytes + bytes / 100 + SAVE_MARGIN_BYTES; }

static bool save_one_rank(Run *run, const CheckpointImage *image, char *path, size_t path_size, Error *err) {
    const char *dir = run->config->checkpoint.dir;
    return ensure_room(run, room_for(checkpoint_image_bytes(image)), err) &&
           checkpoint_write(dir, image, path, path_size, err);
}

// Every rank learns whether every rank's phase succeeded (the all-reduce is
// the barrier between phases); false on all of them when one failed.
static bool all_ranks_succeeded(Run *run, bool ok, const char *phase, Error *err) {
    double failed = ok ? 0.0 : 1.0;
    Error reduce_err;
    if (!all_reduce_host(&run->dist, &failed, 1, &reduce_err)) {
        if (ok) *err = reduce_err;
        return false;
    }
    if (failed == 0.0) return true;
    if (ok) return fail(err, "%s failed on %g other rank(s)", phase, failed);
    return false;
}

// Each rank writes its optimizer shard into rank 0's partial folder; rank 0
// makes room for all of them, verifies every shard file and writes the marker.
static bool save_sharded(Run *run, const CheckpointImage *image, Error *err) {
    const char *dir = run->config->checkpoint.dir;
    bool rank0 = run->is_rank0;
    double bytes = (double)checkpoint_image_bytes(image);
    if (!all_reduce_host(&run->dist, &bytes, 1, err)) return false;
    bool ok = !rank0 || ensure_room(run, room_for((uint64_t)bytes), err);
    if (!all_ranks_succeeded(run, ok, "making room for the checkpoint", err)) return false;
    ok = !rank0 || checkpoint_write_begin(dir, image, err);
    if (!all_ranks_succeeded(run, ok, "creating the checkpoint folder", err)) return false;
    FileDigest digest;
    ok = checkpoint_write_shard(dir, image, &digest, err);
    if (!all_ranks_succeeded(run, ok, "writing an optimizer shard", err)) {
        if (rank0) checkpoint_write_abandon(dir, image);
        return false;
    }
    int world_size = run->dist.info.world_size;
    uint64_t mine[2] = {digest.bytes, digest.fnv1a64}, *words = checked_malloc(2 * (size_t)world_size * sizeof *words, "shard digests", err);
    FileDigest *digests = checked_malloc((size_t)world_size * sizeof *digests, "shard digests", err);
    ok = words && digests && all_gather_host_words(&run->dist, mine, 2, words, err);
    for (int rank = 0; ok && rank < world_size; rank++) digests[rank] = (FileDigest){words[2 * rank], words[2 * rank + 1]};
    char path[CONFIG_PATH_MAX + 64];
    ok = ok && (!rank0 || checkpoint_write_finish(dir, image, digests, path, sizeof path, err));
    free(words);
    free(digests);
    return all_ranks_succeeded(run, ok, "finishing the checkpoint", err);
}

bool save_checkpoint(Run *run, int next_step, char *path, size_t path_size, Error *err) {
    const char *dir = run->config->checkpoint.dir;
    snprintf(path, path_size, "%s/step-%06d", dir, next_step);
    CheckpointImage *image = image_at(run, next_step, err);
    bool ok = image != NULL;
    if (run->dist.info.world_size == 1) ok = ok && save_one_rank(run, image, path, path_size, err);
    else ok = all_ranks_succeeded(run, ok, "serialising the checkpoint", err) && save_sharded(run, image, err);
    checkpoint_image_destroy(image);
    if (!ok || !run->is_rank0) return ok;
    int keep = run->config->checkpoint.keep_last;
    Error prune_err;
    if (keep > 0 && !checkpoint_prune(dir, keep, &prune_err))
        printf("warning: could not prune old checkpoints: %s\n", prune_err.message);
    return true;
}

// ----------------------------------------------------------------------------
// resume

// The "  key: N" line of a config YAML text (config_to_yaml's layout).
static bool yaml_int(const char *yaml, const char *key, int *value) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\n  %s: ", key);
    const char *line = strstr(yaml, pattern);
    if (!line) return false;
    *value = atoi(line + strlen(pattern));
    return true;
}

// This run's config YAML as the checkpoint's run would have written it: a
// resume on another number of ranks may split the same global batch into
// other micro_batch x grad_accum. NULL (err set) when the global batch differs.
static char *config_yaml_in_checkpoint_split(const Run *run, const TrainerState *state, Error *err) {
    Config config = *run->config;
    int micro_batch, grad_accum;
    if (!yaml_int(state->config_yaml, "micro_batch", &micro_batch) || !yaml_int(state->config_yaml, "grad_accum", &grad_accum))
        return checked_strdup(run->config_yaml, err);
    int64_t saved = (int64_t)micro_batch * grad_accum * state->world_size,
            now = (int64_t)config.train.micro_batch * config.train.grad_accum * run->dist.info.world_size;
    if (saved != now)
        return fail(err, "the checkpoint's global batch is %lld samples (%d x %d on %d ranks), this run's %lld",
                    (long long)saved, micro_batch, grad_accum, state->world_size, (long long)now), NULL;
    config.train.micro_batch = micro_batch;
    config.train.grad_accum = grad_accum;
    return config_to_yaml(&config, err);
}

// Keys a resumed run may change: where, how often and how patiently it
// saves and logs, not what it computes; and its length (the LR schedule is
// then recomputed over the new one, which the run states).
static const char *const OPERATIONAL_KEYS[] = {"model.name", "checkpoint.dir", "checkpoint.every_steps", "checkpoint.keep_last",
                                               "checkpoint.on_low_disk", "checkpoint.low_disk_wait_minutes",
                                               "train.log_every", "dist.timeout_s", "data.eval_path",
                                               "train.eval_every", "checkpoint.keep_best"};
static const char *const LENGTH_KEYS[] = {"train.max_steps", "train.epochs"};

static bool listed(const char *key, const char *const *keys, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(key, keys[i]) == 0) return true;
    return false;
}

// One line of config_to_yaml's layout: "section:" or "  key: value".
typedef struct YamlLine {
    const char *text;
    size_t length;
} YamlLine;

static YamlLine next_line(const char **cursor) {
    YamlLine line = {*cursor, strcspn(*cursor, "\n")};
    *cursor += line.length + ((*cursor)[line.length] == '\n');
    return line;
}

// "section.key" of a "  key: value" line under section; false for a section line.
static bool line_key(YamlLine line, const char *section, char *key, size_t size) {
    if (line.length < 2 || line.text[0] != ' ') return false;
    snprintf(key, size, "%s.%.*s", section, (int)strcspn(line.text + 2, ":"), line.text + 2);
    return true;
}

// The value of a "  key: value  # help" line, without the help.
static YamlLine line_value(YamlLine line) {
    size_t start = strcspn(line.text, ":") + 2, end = line.length;
    for (size_t i = start; i + 3 < line.length; i++)
        if (memcmp(line.text + i, "  # ", 4) == 0) {
            end = i;
            break;
        }
    return start < end ? (YamlLine){line.text + start, end - start} : (YamlLine){line.text, 0};
}

static void append_change(char *changes, size_t size, const char *key, YamlLine was, YamlLine now) {
    size_t used = strlen(changes);
    YamlLine a = line_value(was), b = line_value(now);
    snprintf(changes + used, size - used, "%s%s %.*s -> %.*s", used ? ", " : "", key, (int)a.length, a.text,
             (int)b.length, b.text);
}

static bool refuse_change(const char *key, YamlLine was, YamlLine is, Error *err) {
    YamlLine a = line_value(was), b = line_value(is);
    return fail(err, "the checkpoint was made with a different config (%s: %.*s in the checkpoint, %.*s now): "
                     "only model.name, checkpoint.dir, every_steps, keep_last, on_low_disk, low_disk_wait_minutes, "
                     "train.log_every, dist.timeout_s, data.eval_path, train.eval_every, checkpoint.keep_best, "
                     "train.max_steps and train.epochs may change on resume; "
                     "add --allow-config-change if changing %s is intended",
                key, (int)a.length, a.text, (int)b.length, b.text, key);
}

// A config_to_yaml dump as its "section.key" lines.
typedef struct ConfigEntry {
    char key[128];
    YamlLine line;
} ConfigEntry;

typedef struct ConfigEntries {
    ConfigEntry *items;
    int count;
} ConfigEntries;

static bool config_entries(const char *yaml, ConfigEntries *entries, Error *err) {
    size_t lines = 1;
    for (const char *c = yaml; *c; c++) lines += *c == '\n';
    *entries = (ConfigEntries){checked_calloc(lines, sizeof(ConfigEntry), "the config's keys", err), 0};
    if (!entries->items) return false;
    char section[64] = "";
    for (const char *cursor = yaml; *cursor;) {
        YamlLine line = next_line(&cursor);
        ConfigEntry *entry = &entries->items[entries->count];
        if (line_key(line, section, entry->key, sizeof entry->key)) entry->line = line, entries->count++;
        else if (line.length > 0 && line.length < sizeof section)
            snprintf(section, sizeof section, "%.*s", (int)line.length - 1, line.text);
    }
    return true;
}

static const ConfigEntry *find_entry(const ConfigEntries *entries, const char *key) {
    for (int i = 0; i < entries->count; i++)
        if (strcmp(entries->items[i].key, key) == 0) return &entries->items[i];
    return NULL;
}

static bool same_value(YamlLine a, YamlLine b) {
    YamlLine x = line_value(a), y = line_value(b);
    return x.length == y.length && memcmp(x.text, y.text, x.length) == 0;
}

// Compares the checkpoint's config with this run's key by key (values only:
// the help comments may change between versions). A key the checkpoint lacks
// (newer than it) had its default; a key only the checkpoint has is no longer
// a setting and is noted. An operational or length key that differs goes into
// changes->operational, any other key into changes->mathematical when
// allow_math, else it is the error.
static bool compare_entries(const ConfigEntries *saved, const ConfigEntries *now, const ConfigEntries *defaults,
                            bool allow_math, ConfigChanges *changes, Error *err) {
    for (int i = 0; i < now->count; i++) {
        const ConfigEntry *is = &now->items[i], *was = find_entry(saved, is->key);
        if (!was) was = find_entry(defaults, is->key);
        if (!was || same_value(was->line, is->line)) continue;
        bool length = listed(is->key, LENGTH_KEYS, sizeof LENGTH_KEYS / sizeof *LENGTH_KEYS);
        bool operational = length || listed(is->key, OPERATIONAL_KEYS, sizeof OPERATIONAL_KEYS / sizeof *OPERATIONAL_KEYS);
        if (!operational && !allow_math) return refuse_change(is->key, was->line, is->line, err);
        append_change(operational ? changes->operational : changes->mathematical, sizeof changes->operational,
                      is->key, was->line, is->line);
        changes->length_changed |= length;
    }
    for (int i = 0; i < saved->count; i++) {
        if (find_entry(now, saved->items[i].key)) continue;
        size_t used = strlen(changes->operational);
        snprintf(changes->operational + used, sizeof changes->operational - used, "%s%s (no longer a setting)",
                 used ? ", " : "", saved->items[i].key);
    }
    return true;
}

bool config_changes(const char *saved, const char *now, bool allow_math, ConfigChanges *changes, Error *err) {
    *changes = (ConfigChanges){0};
    Config config;
    config_defaults(&config);
    char *defaults_yaml = config_to_yaml(&config, err);
    ConfigEntries saved_entries = {0}, now_entries = {0}, default_entries = {0};
    bool ok = defaults_yaml && config_entries(saved, &saved_entries, err) && config_entries(now, &now_entries, err) &&
              config_entries(defaults_yaml, &default_entries, err) &&
              compare_entries(&saved_entries, &now_entries, &default_entries, allow_math, changes, err);
    free(saved_entries.items), free(now_entries.items), free(default_entries.items), free(defaults_yaml);
    return ok;
}

// The checkpoint's config against this run's (with its micro-batch split);
// rank 0 says what changed, and how the LR schedule now runs when the
// run's length did.
static bool check_config_changes(const Run *run, const char *dir, const TrainerState *state, Error *err) {
    char *expected = config_yaml_in_checkpoint_split(run, state, err);
    if (!expected) return fail_context(err, "--resume %s: ", dir);
    ConfigChanges changes;
    bool ok = config_changes(state->config_yaml, expected, run->control->allow_config_change, &changes, err);
    free(expected);
    if (!ok) return fail_context(err, "--resume %s: ", dir);
    if (state->step > run->total_steps)
        return fail(err, "--resume %s: the checkpoint is at step %d, past this run's %d steps", dir, state->step,
                    run->total_steps);
    if (run->is_rank0 && changes.operational[0]) printf("resume: config changed: %s\n", changes.operational);
    if (run->is_rank0 && changes.mathematical[0])
        printf("resume: --allow-config-change: the run continues with changed mathematics: %s\n",
               changes.mathematical);
    if (run->is_rank0 && changes.length_changed)
        printf("resume: the LR schedule (train.schedule, %d warmup steps) now spans %d steps; from step %d on the "
               "LR follows it\n", run->schedule.warmup_steps, run->total_steps, state->step + 1);
    return true;
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
    if (!checkpoint_load_shard(dir, run->model, optimizer.m, optimizer.v, optimizer.on_host, optimizer.begin,
                               optimizer.count, &state, err))
        return false;
    bool same_config = check_config_changes(run, dir, &state, err);
    trainer_state_free(&state);
    if (!same_config) return false;
    zero_restore(run->zero, model_param_data(run->model), state.optimizer_steps);
    step_loader_seek(run->loader, state.epoch, state.step_in_epoch);
    run->progress = state;
    run->progress.config_yaml = NULL;
    *start_step = state.step;
    if (run->is_rank0)
        printf("resumed from %s (saved by %d rank%s) at step %d (epoch %d, step %lld of it)\n", dir, state.world_size,
               state.world_size == 1 ? "" : "s", state.step, state.epoch, (long long)state.step_in_epoch);
    return true;
}
