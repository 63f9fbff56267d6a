// core: errors that carry a message, arenas, tensor views, deterministic RNG.
// Everything in lora-train below trainer/ reports failure by returning false
// (or NULL) and filling an Error; nothing below trainer/ prints or exits.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// ----------------------------------------------------------------------------
// errors

#define ERROR_MESSAGE_MAX 4096

typedef struct Error {
    char message[ERROR_MESSAGE_MAX];
} Error;

// Formats the message into err (if err is not NULL) and returns false, so a
// failing function can `return fail(err, "reading %s: %s", path, why);`.
bool fail(Error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Prepends context to an existing message: "loading model: " + old message.
bool fail_context(Error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// ----------------------------------------------------------------------------
// memory

// malloc/calloc that report a failure into err instead of returning silently.
void *checked_malloc(size_t bytes, const char *what, Error *err);
void *checked_calloc(size_t count, size_t size, const char *what, Error *err);
char *checked_strdup(const char *s, Error *err);

// An arena carves 256-byte aligned slices out of one block it does not own
// (host or device memory). Over a NULL base it only measures: lay everything
// out once to size the block, allocate the block, then lay out again over it.
typedef struct Arena {
    uint8_t *base;   // NULL while measuring
    size_t used;
} Arena;

// The next slice of `bytes`; NULL while measuring.
void *arena_take(Arena *arena, size_t bytes);

// ----------------------------------------------------------------------------
// tensor views: a dtype, a shape and a pointer; memory is owned elsewhere

typedef enum DType {
    DTYPE_F32,
    DTYPE_F16,
    DTYPE_BF16,
    DTYPE_F64,
    DTYPE_I64,
    DTYPE_I32,
    DTYPE_I16,
    DTYPE_I8,
    DTYPE_U8,
    DTYPE_BOOL,
    DTYPE_COUNT
} DType;

#define TENSOR_MAX_DIMS 8

typedef struct Tensor {
    DType dtype;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    void *data;
} Tensor;

size_t dtype_size(DType dtype);
const char *dtype_name(DType dtype);          // safetensors spelling: "F32", "BF16", ...
bool dtype_from_name(const char *name, DType *out);
int64_t tensor_numel(const Tensor *t);
size_t tensor_nbytes(const Tensor *t);
// "[4096, 128]" into buf; returns buf.
char *shape_string(const int64_t *shape, int ndim, char *buf, size_t buf_size);

// bf16 / fp16 <-> fp32 (round to nearest even, as torch's .to(torch.bfloat16)).
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
// Converts n elements of src (dtype) to fp32.
bool convert_to_f32(float *dst, const void *src, DType dtype, size_t n, Error *err);

// ----------------------------------------------------------------------------
// deterministic random numbers

// Counter-based: the same (seed, counter) gives the same bits on every backend,
// so dropout masks are reproducible on CPU and GPU and after a resume.
uint64_t rng_hash(uint64_t seed, uint64_t counter);
float rng_uniform_at(uint64_t seed, uint64_t counter); // [0, 1)

// SplitMix64's finaliser. rng_hash(seed, counter) = rng_mix(rng_mix(seed) ^
// counter): a loop over many counters mixes the seed once (rng_mix(seed),
// its key) and calls rng_uniform_keyed, which inlines.
static inline uint64_t rng_mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

// rng_uniform_at(seed, counter) for key = rng_mix(seed).
static inline float rng_uniform_keyed(uint64_t key, uint64_t counter) {
    return (float)(rng_mix(key ^ counter) >> 40) * (1.0f / 16777216.0f);
}

// Sequential generator for initialisation and shuffling.
typedef struct Rng {
    uint64_t state;
} Rng;

void rng_seed(Rng *rng, uint64_t seed);
uint64_t rng_next(Rng *rng);
float rng_uniform(Rng *rng);                       // [0, 1)
float rng_normal(Rng *rng);                        // N(0, 1), Box-Muller
uint64_t rng_below(Rng *rng, uint64_t bound);      // [0, bound), unbiased
void rng_shuffle_indices(Rng *rng, int64_t *indices, int64_t n);

// ----------------------------------------------------------------------------
// small utilities

double time_seconds(void);                          // monotonic clock
uint64_t fnv1a64(const void *data, size_t n, uint64_t hash);
#define FNV1A64_INIT 0xcbf29ce484222325ULL
bool read_file(const char *path, char **data, size_t *size, Error *err);
// CRC-32C (Castagnoli) of data and TFRecord's mask of it: rotate right 15, add 0xa282ead8.
uint32_t crc32c(const void *data, size_t size);
uint32_t crc32c_masked(const void *data, size_t size);
bool path_exists(const char *path);
bool make_dirs(const char *path, Error *err);        // mkdir -p
bool remove_tree(const char *path, Error *err);      // rm -r (no error if absent)
// Levenshtein distance, for did-you-mean suggestions.
int edit_distance(const char *a, const char *b);
// The shortest decimal that reads back (strtof) as value, as Python's repr
// writes numbers: "0.05" for 0.05f, "1e-05", "0.0" (a point when integral).
void format_float_shortest(float value, char *text, size_t size);

// ----------------------------------------------------------------------------
// progress of long preparation (loading weights, quantizing, reading datasets)

// `what` going from 0 to `total` units (bytes when `bytes`). Nothing is said
// until the job has run PROGRESS_DELAY_S seconds (LORA_TRAIN_PROGRESS_DELAY
// overrides it; 0 reports every job): then, on stderr, one line redrawn in
// place at most 4 times a second on a terminal, else a line at each further
// tenth, and a last line at progress_end. progress_set_quiet(true) silences
// every job (ranks other than 0).
#define PROGRESS_DELAY_S 2.0

typedef struct Progress {
    const char *what;
    double total, start, next_draw;
    bool bytes, terminal, shown;
    int tenths_said;
} Progress;

void progress_set_quiet(bool quiet);
void progress_begin(Progress *p, const char *what, double total, bool bytes);
void progress_update(Progress *p, double done);
void progress_end(Progress *p);
