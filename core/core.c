// core: errors, arenas, tensor views, dtype conversion, RNG, small utilities.
#include "core.h"

#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

// ----------------------------------------------------------------------------
// errors

bool fail(Error *err, const char *fmt, ...) {
    if (err) {
        va_list args;
        va_start(args, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, args);
        va_end(args);
    }
    return false;
}

bool fail_context(Error *err, const char *fmt, ...) {
    if (!err) return false;
    char prefix[ERROR_MESSAGE_MAX];
    va_list args;
    va_start(args, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, args);
    va_end(args);
    size_t prefix_len = strlen(prefix), message_len = strlen(err->message);
    if (prefix_len >= sizeof err->message) prefix_len = sizeof err->message - 1;
    if (prefix_len + message_len >= sizeof err->message) message_len = sizeof err->message - 1 - prefix_len;
    memmove(err->message + prefix_len, err->message, message_len);
    memcpy(err->message, prefix, prefix_len);
    err->message[prefix_len + message_len] = '\0';
    return false;
}

// ----------------------------------------------------------------------------
// memory

void *checked_malloc(size_t bytes, const char *what, Error *err) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) fail(err, "out of memory allocating %zu bytes for %s", bytes, what);
    return p;
}

void *checked_calloc(size_t count, size_t size, const char *what, Error *err) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) fail(err, "out of memory allocating %zu x %zu bytes for %s", count, size, what);
    return p;
}

char *checked_strdup(const char *s, Error *err) {
    size_t n = strlen(s) + 1;
    char *p = checked_malloc(n, "a string", err);
    if (p) memcpy(p, s, n);
    return p;
}

void *arena_take(Arena *arena, size_t bytes) {
    size_t start = (arena->used + 255) / 256 * 256;
    arena->used = start + bytes;
    return arena->base ? arena->base + start : NULL;
}

// ----------------------------------------------------------------------------
// tensors and dtypes

static const struct {
    const char *name;
    size_t size;
} DTYPES[DTYPE_COUNT] = {
    [DTYPE_F32] = {"F32", 4}, [DTYPE_F16] = {"F16", 2}, [DTYPE_BF16] = {"BF16", 2},
    [DTYPE_F64] = {"F64", 8}, [DTYPE_I64] = {"I64", 8}, [DTYPE_I32] = {"I32", 4},
    [DTYPE_I16] = {"I16", 2}, [DTYPE_I8] = {"I8", 1},   [DTYPE_U8] = {"U8", 1},
    [DTYPE_BOOL] = {"BOOL", 1},
};

size_t dtype_size(DType dtype) { return dtype < DTYPE_COUNT ? DTYPES[dtype].size : 0; }

const char *dtype_name(DType dtype) { return dtype < DTYPE_COUNT ? DTYPES[dtype].name : "?"; }

bool dtype_from_name(const char *name, DType *out) {
    for (int d = 0; d < DTYPE_COUNT; d++) {
        if (strcmp(name, DTYPES[d].name) == 0) {
            *out = (DType)d;
            return true;
        }
    }
    return false;
}

int64_t tensor_numel(const Tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t tensor_nbytes(const Tensor *t) { return (size_t)tensor_numel(t) * dtype_size(t->dtype); }

char *shape_string(const int64_t *shape, int ndim, char *buf, size_t buf_size) {
    size_t used = (size_t)snprintf(buf, buf_size, "[");
    for (int i = 0; i < ndim && used < buf_size; i++) {
        used += (size_t)snprintf(buf + used, buf_size - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
    }
    if (used < buf_size) snprintf(buf + used, buf_size - used, "]");
    return buf;
}

float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t f32_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40); // quiet NaN
    uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);                                // nearest even
    return (uint16_t)((bits + rounding) >> 16);
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0x1f) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent == 0) {
        if (mantissa == 0) {
            bits = sign;
        } else { // subnormal: value = mantissa * 2^-24
            float f = ldexpf((float)mantissa, -24);
            memcpy(&bits, &f, 4);
            bits |= sign;
        }
    } else {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t f32_to_f16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    uint32_t abs = bits & 0x7fffffffu;
    if (abs > 0x7f800000u) return sign | 0x7e00u;
    if (abs >= 0x477ff000u) return sign | 0x7c00u; // rounds to infinity
    if (abs < 0x38800000u) {                       // subnormal half (or zero)
        float a;
        memcpy(&a, &abs, 4);
        return sign | (uint16_t)lrintf(a * 16777216.0f); // a / 2^-24, nearest even
    }
    uint32_t rounding = 0xfffu + ((abs >> 13) & 1u);
    return sign | (uint16_t)((abs - (112u << 23) + rounding) >> 13);
}

bool convert_to_f32(float *dst, const void *src, DType dtype, size_t n, Error *err) {
    switch (dtype) {
    case DTYPE_F32: memcpy(dst, src, n * 4); return true;
    case DTYPE_BF16:
        for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(((const uint16_t *)src)[i]);
        return true;
    case DTYPE_F16:
        for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32(((const uint16_t *)src)[i]);
        return true;
    case DTYPE_F64:
        for (size_t i = 0; i < n; i++) dst[i] = (float)((const double *)src)[i];
        return true;
    default: return fail(err, "cannot convert %s to F32", dtype_name(dtype));
    }
}

// ----------------------------------------------------------------------------
// RNG

uint64_t rng_hash(uint64_t seed, uint64_t counter) { return rng_mix(rng_mix(seed) ^ counter); }

float rng_uniform_at(uint64_t seed, uint64_t counter) { return rng_uniform_keyed(rng_mix(seed), counter); }

void rng_seed(Rng *rng, uint64_t seed) { rng->state = rng_mix(seed ^ 0x5eedULL); }

uint64_t rng_next(Rng *rng) {
    rng->state += 0x9e3779b97f4a7c15ULL;
    return rng_mix(rng->state);
}

float rng_uniform(Rng *rng) { return (float)(rng_next(rng) >> 40) * (1.0f / 16777216.0f); }

float rng_normal(Rng *rng) {
    double u1 = ((double)(rng_next(rng) >> 11) + 1.0) * (1.0 / 9007199254740993.0); // (0, 1]
    double u2 = (double)(rng_next(rng) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

uint64_t rng_below(Rng *rng, uint64_t bound) {
    uint64_t threshold = -bound % bound; // rejection zone for an unbiased result
    for (;;) {
        uint64_t r = rng_next(rng);
        if (r >= threshold) return r % bound;
    }
}

void rng_shuffle_indices(Rng *rng, int64_t *indices, int64_t n) {
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)rng_below(rng, (uint64_t)i + 1);
        int64_t tmp = indices[i];
        indices[i] = indices[j];
        indices[j] = tmp;
    }
}

// ----------------------------------------------------------------------------
// utilities

double time_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

uint64_t fnv1a64(const void *data, size_t n, uint64_t hash) {
    const uint8_t *bytes = data;
    for (size_t i = 0; i < n; i++) hash = (hash ^ bytes[i]) * 0x100000001b3ULL;
    return hash;
}

bool read_file(const char *path, char **data, size_t *size, Error *err) {
    struct stat st;
    if (stat(path, &st) != 0) return fail(err, "%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return fail(err, "%s: not a regular file", path);
    FILE *f = fopen(path, "rb");
    if (!f) return fail(err, "%s: %s", path, strerror(errno));
    bool ok = fseek(f, 0, SEEK_END) == 0;
    long length = ok ? ftell(f) : -1;
    ok = ok && length >= 0 && fseek(f, 0, SEEK_SET) == 0;
    char *buf = ok ? checked_malloc((size_t)length + 1, path, err) : NULL;
    if (ok && buf && fread(buf, 1, (size_t)length, f) == (size_t)length) {
        buf[length] = '\0';
        *data = buf;
        *size = (size_t)length;
        fclose(f);
        return true;
    }
    free(buf);
    fclose(f);
    return fail(err, "%s: read failed", path);
}

bool path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

bool make_dirs(const char *path, Error *err) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return fail(err, "path too long: %s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return fail(err, "mkdir %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) return fail(err, "mkdir %s: %s", buf, strerror(errno));
    return true;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    return remove(path);
}

bool remove_tree(const char *path, Error *err) {
    if (!path_exists(path)) return true;
    if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) return fail(err, "removing %s: %s", path, strerror(errno));
    return true;
}

int edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 255 || lb > 255) return 1 << 20;
    int row[256];
    for (size_t j = 0; j <= lb; j++) row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int diagonal = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int above = row[j];
            int substitute = diagonal + (a[i - 1] != b[j - 1]);
            int best = above + 1 < row[j - 1] + 1 ? above + 1 : row[j - 1] + 1;
            row[j] = substitute < best ? substitute : best;
            diagonal = above;
        }
    }
    return row[lb];
}

void format_float_shortest(float value, char *text, size_t size) {
    for (int digits = 1; digits <= 9; digits++) { // 9 significant digits always round-trip a float
        snprintf(text, size, "%.*g", digits, (double)value);
        if (strtof(text, NULL) == value) break;
    }
    if (isfinite(value) && !strpbrk(text, ".e") && strlen(text) + 3 <= size) strcat(text, ".0");
}
