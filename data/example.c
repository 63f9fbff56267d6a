// tf.train.Example decoded from the protobuf wire format (see rlds.h for the
// messages). Each field is a varint tag (field << 3 | wire type) followed by a
// varint (type 0), 8 bytes (1), a varint length and that many bytes (2) or 4
// bytes (5). Repeated occurrences of a message field merge; a oneof member
// clears the others; map entries with a repeated key keep the last.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rlds.h"

enum { WIRE_VARINT = 0, WIRE_FIXED64 = 1, WIRE_LEN = 2, WIRE_FIXED32 = 5 };

typedef struct Cursor {
    const uint8_t *start; // of the whole record, for byte offsets in errors
    const uint8_t *p, *end;
} Cursor;

static size_t cursor_offset(const Cursor *c) { return (size_t)(c->p - c->start); }

static bool read_varint(Cursor *c, uint64_t *value, Error *err) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (c->p == c->end) return fail(err, "varint runs past its message at byte %zu", cursor_offset(c));
        uint8_t byte = *c->p++;
        v |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *value = v;
            return true;
        }
    }
    return fail(err, "varint longer than 10 bytes at byte %zu", cursor_offset(c));
}

// The next field's number and wire type; false at the end of the message (err untouched) or on an error (*bad).
static bool next_field(Cursor *c, uint32_t *field, int *wire, bool *bad, Error *err) {
    *bad = false;
    if (c->p == c->end) return false;
    uint64_t tag;
    *bad = !read_varint(c, &tag, err);
    if (!*bad && (tag >> 3 == 0 || tag >> 3 > 0x1fffffff)) *bad = !fail(err, "field number %llu at byte %zu",
                                                                         (unsigned long long)(tag >> 3),
                                                                         cursor_offset(c));
    *field = (uint32_t)(tag >> 3);
    *wire = (int)(tag & 7);
    return !*bad;
}

static bool read_len(Cursor *c, Cursor *sub, Error *err) {
    uint64_t length;
    if (!read_varint(c, &length, err)) return false;
    if (length > (uint64_t)(c->end - c->p))
        return fail(err, "length %llu at byte %zu runs past its message (%zu bytes left)", (unsigned long long)length,
                    cursor_offset(c), (size_t)(c->end - c->p));
    *sub = (Cursor){c->start, c->p, c->p + length};
    c->p += length;
    return true;
}

static bool skip_field(Cursor *c, int wire, Error *err) {
    uint64_t ignored;
    Cursor sub;
    size_t fixed = wire == WIRE_FIXED64 ? 8 : 4;
    switch (wire) {
    case WIRE_VARINT: return read_varint(c, &ignored, err);
    case WIRE_LEN: return read_len(c, &sub, err);
    case WIRE_FIXED64:
    case WIRE_FIXED32:
        if ((size_t)(c->end - c->p) < fixed) return fail(err, "fixed-size field runs past its message at byte %zu",
                                                         cursor_offset(c));
        c->p += fixed;
        return true;
    default: return fail(err, "wire type %d (groups or invalid) at byte %zu", wire, cursor_offset(c) - 1);
    }
}

// capacity(count) = the power of two at or above count (0 for 0): grows *array for `more` elements.
static bool grow(void **array, int64_t count, int64_t more, size_t elem, Error *err) {
    uint64_t capacity = 0, needed = (uint64_t)(count + more);
    if (count > 0) for (capacity = 1; capacity < (uint64_t)count; capacity <<= 1) {}
    if (needed <= capacity) return true;
    uint64_t new_capacity = 1;
    while (new_capacity < needed) new_capacity <<= 1;
    if (new_capacity > SIZE_MAX / 2 / elem) return fail(err, "%llu values: too many", (unsigned long long)needed);
    void *grown = realloc(*array, new_capacity * elem);
    if (!grown) return fail(err, "out of memory for %llu values", (unsigned long long)needed);
    *array = grown;
    return true;
}

static void feature_clear_values(Feature *f) {
    free(f->bytes);
    free(f->floats);
    free(f->int64s);
    f->bytes = NULL, f->floats = NULL, f->int64s = NULL;
    f->count = 0;
    f->kind = FEATURE_EMPTY;
}

static bool parse_bytes_list(Cursor c, Feature *f, Error *err) {
    uint32_t field;
    int wire;
    bool bad;
    while (next_field(&c, &field, &wire, &bad, err)) {
        if (field != 1) {
            if (!skip_field(&c, wire, err)) return false;
            continue;
        }
        Cursor value;
        if (wire != WIRE_LEN) return fail(err, "bytes_list value with wire type %d at byte %zu", wire, cursor_offset(&c));
        if (!read_len(&c, &value, err) || !grow((void **)&f->bytes, f->count, 1, sizeof *f->bytes, err)) return false;
        f->bytes[f->count++] = (ByteView){value.p, (size_t)(value.end - value.p)};
    }
    return !bad;
}

static bool parse_float_list(Cursor c, Feature *f, Error *err) {
    uint32_t field;
    int wire;
    bool bad;
    while (next_field(&c, &field, &wire, &bad, err)) {
        if (field != 1) {
            if (!skip_field(&c, wire, err)) return false;
            continue;
        }
        Cursor values = c;
        if (wire == WIRE_LEN) {
            if (!read_len(&c, &values, err)) return false;
            if ((values.end - values.p) % 4)
                return fail(err, "float_list: packed length %zu is not a multiple of 4 at byte %zu",
                            (size_t)(values.end - values.p), cursor_offset(&values));
        } else if (wire == WIRE_FIXED32) {
            if (c.end - c.p < 4) return fail(err, "float_list value runs past its message at byte %zu",
                                             cursor_offset(&c));
            values.end = c.p + 4;
            c.p += 4;
        } else {
            return fail(err, "float_list value with wire type %d at byte %zu", wire, cursor_offset(&c));
        }
        int64_t n = (values.end - values.p) / 4;
        if (!grow((void **)&f->floats, f->count, n, sizeof *f->floats, err)) return false;
        for (int64_t i = 0; i < n; i++) {
            uint32_t bits = (uint32_t)values.p[4 * i] | (uint32_t)values.p[4 * i + 1] << 8 |
                            (uint32_t)values.p[4 * i + 2] << 16 | (uint32_t)values.p[4 * i + 3] << 24;
            memcpy(&f->floats[f->count++], &bits, 4);
        }
    }
    return !bad;
}

static bool parse_int64_list(Cursor c, Feature *f, Error *err) {
    uint32_t field;
    int wire;
    bool bad;
    while (next_field(&c, &field, &wire, &bad, err)) {
        if (field != 1) {
            if (!skip_field(&c, wire, err)) return false;
            continue;
        }
        Cursor values;
        if (wire == WIRE_LEN) {
            if (!read_len(&c, &values, err)) return false;
        } else if (wire == WIRE_VARINT) {
            values = c; // one varint, read below
        } else {
            return fail(err, "int64_list value with wire type %d at byte %zu", wire, cursor_offset(&c));
        }
        int64_t n = 0; // varints end in a byte < 0x80
        for (const uint8_t *p = values.p; p < values.end; p++) n += *p < 0x80;
        if (wire == WIRE_VARINT) n = 1;
        if (!grow((void **)&f->int64s, f->count, n, sizeof *f->int64s, err)) return false;
        for (int64_t i = 0; i < n; i++) {
            uint64_t v;
            if (!read_varint(&values, &v, err)) return false;
            f->int64s[f->count++] = (int64_t)v;
        }
        if (wire == WIRE_VARINT) c.p = values.p;
        else if (values.p != values.end)
            return fail(err, "int64_list: packed values end inside a varint at byte %zu", cursor_offset(&values));
    }
    return !bad;
}

// Feature: the oneof member last present wins; the same member again merges.
static bool parse_feature(Cursor c, Feature *f, Error *err) {
    uint32_t field;
    int wire;
    bool bad;
    static const FeatureKind KINDS[4] = {FEATURE_EMPTY, FEATURE_BYTES, FEATURE_FLOATS, FEATURE_INT64S};
    while (next_field(&c, &field, &wire, &bad, err)) {
        if (field < 1 || field > 3) {
            if (!skip_field(&c, wire, err)) return false;
            continue;
        }
        Cursor list;
        if (wire != WIRE_LEN) return fail(err, "%s with wire type %d at byte %zu", feature_kind_name(KINDS[field]),
                                          wire, cursor_offset(&c));
        if (!read_len(&c, &list, err)) return false;
        if (f->kind != KINDS[field]) feature_clear_values(f);
        f->kind = KINDS[field];
        bool ok = field == 1 ? parse_bytes_list(list, f, err)
                : field == 2 ? parse_float_list(list, f, err)
                             : parse_int64_list(list, f, err);
        if (!ok) return false;
    }
    return !bad;
}

// One map<string, Feature> entry: key = 1, value = 2.
static bool parse_entry(Cursor c, Feature *f, Error *err) {
    uint32_t field;
    int wire;
    bool bad;
    const uint8_t *key = NULL;
    size_t key_size = 0;
    while (next_field(&c, &field, &wire, &bad, err)) {
        Cursor sub;
        if ((field == 1 || field == 2) && wire != WIRE_LEN)
            return fail(err, "feature map entry field %u with wire type %d at byte %zu", field, wire,
                        cursor_offset(&c));
        if (field == 1) {
            if (!read_len(&c, &sub, err)) return false;
            key = sub.p, key_size = (size_t)(sub.end - sub.p);
        } else if (field == 2) {
            if (!read_len(&c, &sub, err) || !parse_feature(sub, f, err)) return false;
        } else if (!skip_field(&c, wire, err)) {
            return false;
        }
    }
    if (bad) return false;
    if (key && memchr(key, 0, key_size)) return fail(err, "feature key with a NUL byte");
    f->key = malloc(key_size + 1);
    if (!f->key) return fail(err, "out of memory for a feature key");
    if (key_size) memcpy(f->key, key, key_size);
    f->key[key_size] = '\0';
    return true;
}

static bool parse_features(Cursor c, Example *ex, Error *err) {
    uint32_t field;
    int wire;
    bool bad;
    while (next_field(&c, &field, &wire, &bad, err)) {
        if (field != 1) {
            if (!skip_field(&c, wire, err)) return false;
            continue;
        }
        Cursor entry;
        if (wire != WIRE_LEN) return fail(err, "feature map entry with wire type %d at byte %zu", wire,
                                          cursor_offset(&c));
        if (!read_len(&c, &entry, err) || !grow((void **)&ex->features, ex->n_features, 1, sizeof *ex->features, err))
            return false;
        if (ex->n_features == INT32_MAX) return fail(err, "too many features");
        Feature *f = &ex->features[ex->n_features++];
        memset(f, 0, sizeof *f);
        if (!parse_entry(entry, f, err)) return false;
    }
    return !bad;
}

// Pointers into the parse-order array, by key, then by position (their address).
static int compare_key_then_position(const void *a, const void *b) {
    const Feature *fa = *(const Feature *const *)a, *fb = *(const Feature *const *)b;
    int by_key = strcmp(fa->key, fb->key);
    return by_key ? by_key : (fa > fb) - (fa < fb);
}

// Sorts the features by key (example_feature searches them) and keeps the last of each key.
static bool sort_keeping_last(Example *ex, Error *err) {
    int n = ex->n_features, kept = 0;
    if (n < 2) return true;
    Feature **order = checked_malloc((size_t)n * sizeof *order, "feature order", err);
    Feature *sorted = order ? checked_malloc((size_t)n * sizeof *sorted, "features", err) : NULL;
    if (!sorted) {
        free(order);
        return false;
    }
    for (int i = 0; i < n; i++) order[i] = &ex->features[i];
    qsort(order, (size_t)n, sizeof *order, compare_key_then_position);
    for (int i = 0; i < n; i++) {
        if (i + 1 < n && strcmp(order[i]->key, order[i + 1]->key) == 0) {
            feature_clear_values(order[i]);
            free(order[i]->key);
        } else {
            sorted[kept++] = *order[i];
        }
    }
    free(order);
    free(ex->features);
    ex->features = sorted;
    ex->n_features = kept;
    return true;
}

bool example_parse(const uint8_t *data, size_t size, Example *out, Error *err) {
    memset(out, 0, sizeof *out);
    Cursor c = {data, data, data + size};
    uint32_t field;
    int wire;
    bool bad;
    while (next_field(&c, &field, &wire, &bad, err)) {
        Cursor features;
        if (field != 1) {
            if (!skip_field(&c, wire, err)) goto fail;
            continue;
        }
        if (wire != WIRE_LEN) {
            fail(err, "features with wire type %d at byte %zu", wire, cursor_offset(&c));
            goto fail;
        }
        if (!read_len(&c, &features, err) || !parse_features(features, out, err)) goto fail;
    }
    if (bad || !sort_keeping_last(out, err)) goto fail;
    return true;
fail:
    example_free(out);
    return false;
}

void example_free(Example *example) {
    for (int i = 0; i < example->n_features; i++) {
        feature_clear_values(&example->features[i]);
        free(example->features[i].key);
    }
    free(example->features);
    memset(example, 0, sizeof *example);
}

const Feature *example_feature(const Example *example, const char *key) {
    int lo = 0, hi = example->n_features;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        int order = strcmp(example->features[mid].key, key);
        if (order == 0) return &example->features[mid];
        if (order < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

const char *feature_kind_name(FeatureKind kind) {
    switch (kind) {
    case FEATURE_BYTES: return "bytes_list";
    case FEATURE_FLOATS: return "float_list";
    case FEATURE_INT64S: return "int64_list";
    default: return "no value";
    }
}
