// NF4 linear weights in backend memory: allocation, quantization on load,
// bitsandbytes-serialized weights, dequantization into a scratch buffer.
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

typedef struct Nf4Sizes {
    size_t numel, packed, blocks, nested;
} Nf4Sizes;

static Nf4Sizes sizes_of(int64_t rows, int64_t cols) {
    size_t numel = (size_t)rows * (size_t)cols, blocks = nf4_blocks(numel, NF4_BLOCK);
    return (Nf4Sizes){numel, nf4_packed_bytes(numel), blocks, nf4_blocks(blocks, NF4_NESTED_BLOCK)};
}

size_t nf4_weight_bytes(int64_t rows, int64_t cols, bool double_quant) {
    Nf4Sizes s = sizes_of(rows, cols);
    size_t statistics = double_quant ? s.blocks + s.nested * sizeof(float) + NF4_DYNAMIC_MAP_SIZE * sizeof(float)
                                     : s.blocks * sizeof(float);
    return s.packed + statistics + 16 * sizeof(float);
}

bool nf4_weight_alloc(Nf4Weight *w, const Ops *ops, int64_t rows, int64_t cols, bool double_quant, Error *err) {
    Nf4Sizes s = sizes_of(rows, cols);
    *w = (Nf4Weight){.rows = rows, .cols = cols, .double_quant = double_quant};
    bool ok = (w->packed = ops->alloc(ops, s.packed, err)) && (w->code = ops->alloc(ops, 16 * sizeof(float), err));
    if (ok && double_quant) {
        ok = (w->absmax_q = ops->alloc(ops, s.blocks, err)) &&
             (w->nested_absmax = ops->alloc(ops, s.nested * sizeof(float), err)) &&
             (w->nested_map = ops->alloc(ops, NF4_DYNAMIC_MAP_SIZE * sizeof(float), err));
    } else if (ok) {
        ok = (w->absmax = ops->alloc(ops, s.blocks * sizeof(float), err)) != NULL;
    }
    if (!ok) nf4_weight_free(w, ops);
    return ok;
}

void nf4_weight_free(Nf4Weight *w, const Ops *ops) {
    void *buffers[] = {w->packed, w->absmax, w->absmax_q, w->nested_absmax, w->code, w->nested_map};
    for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; i++) {
        if (buffers[i]) ops->free(ops, buffers[i]);
    }
    *w = (Nf4Weight){0};
}

bool nf4_weight_quantize_from(Nf4Weight *w, const Ops *ops, const float *values, Error *err) {
    Nf4Sizes s = sizes_of(w->rows, w->cols);
    uint8_t *packed = checked_malloc(s.packed + s.blocks, "NF4 codes", err);
    float *absmax = checked_malloc((s.blocks + s.nested) * sizeof(float), "NF4 absmax", err);
    bool ok = packed && absmax;
    if (ok) {
        nf4_quantize(values, s.numel, packed, absmax);
        ops->upload(ops, w->packed, packed, s.packed);
        ops->upload(ops, w->code, NF4_CODE, sizeof NF4_CODE);
    }
    if (ok && w->double_quant) {
        float map[NF4_DYNAMIC_MAP_SIZE];
        nf4_dynamic_map(map);
        uint8_t *absmax_q = packed + s.packed;
        float *nested = absmax + s.blocks;
        nf4_double_quantize(absmax, s.blocks, map, absmax_q, nested, &w->offset);
        ops->upload(ops, w->absmax_q, absmax_q, s.blocks);
        ops->upload(ops, w->nested_absmax, nested, s.nested * sizeof(float));
        ops->upload(ops, w->nested_map, map, sizeof map);
    } else if (ok) {
        ops->upload(ops, w->absmax, absmax, s.blocks * sizeof(float));
    }
    ops->synchronize(ops);
    free(packed);
    free(absmax);
    return ok;
}

// ----------------------------------------------------------------------------
// bitsandbytes' serialized quant state

static bool json_int_equals(json_object *state, const char *key, int64_t want) {
    json_object *value;
    return json_object_object_get_ex(state, key, &value) && json_object_is_type(value, json_type_int) &&
           json_object_get_int64(value) == want;
}

static bool check_quant_state(const Nf4Weight *w, json_object *state, const char *name, Error *err) {
    json_object *type, *shape, *offset;
    if (!json_object_is_type(state, json_type_object)) return fail(err, "%s.quant_state: not a JSON object", name);
    if (!json_object_object_get_ex(state, "quant_type", &type) || strcmp(json_object_get_string(type), "nf4") != 0)
        return fail(err, "%s.quant_state: quant_type is not \"nf4\"", name);
    if (!json_int_equals(state, "blocksize", NF4_BLOCK))
        return fail(err, "%s.quant_state: blocksize must be %d", name, NF4_BLOCK);
    if (!json_object_object_get_ex(state, "shape", &shape) || json_object_array_length(shape) != 2 ||
        json_object_get_int64(json_object_array_get_idx(shape, 0)) != w->rows ||
        json_object_get_int64(json_object_array_get_idx(shape, 1)) != w->cols)
        return fail(err, "%s.quant_state: shape is not [%lld, %lld]", name, (long long)w->rows, (long long)w->cols);
    bool nested = json_object_object_get_ex(state, "nested_offset", &offset);
    if (nested != w->double_quant)
        return fail(err, "%s: double quantization is %s in the checkpoint but %s in the model", name,
                    nested ? "on" : "off", w->double_quant ? "on" : "off");
    if (nested && !json_int_equals(state, "nested_blocksize", NF4_NESTED_BLOCK))
        return fail(err, "%s.quant_state: nested_blocksize must be %d", name, NF4_NESTED_BLOCK);
    return true;
}

static bool parse_quant_state(Nf4Weight *w, const Nf4Serialized *src, const char *name, Error *err) {
    json_tokener *tokener = json_tokener_new();
    if (!tokener) return fail(err, "%s.quant_state: out of memory", name);
    json_object *state = json_tokener_parse_ex(tokener, src->quant_state_json, (int)src->quant_state_len);
    bool ok = state ? check_quant_state(w, state, name, err)
                    : fail(err, "%s.quant_state.bitsandbytes__nf4: invalid JSON (%s)", name,
                           json_tokener_error_desc(json_tokener_get_error(tokener)));
    json_object *offset;
    if (ok && w->double_quant && json_object_object_get_ex(state, "nested_offset", &offset))
        w->offset = (float)json_object_get_double(offset);
    json_object_put(state);
    json_tokener_free(tokener);
    return ok;
}

static bool check_count(const char *name, const char *part, size_t found, size_t want, Error *err) {
    if (found == want) return true;
    return fail(err, "%s%s has %zu elements, expected %zu", name, part, found, want);
}

bool nf4_weight_upload_serialized(Nf4Weight *w, const Ops *ops, const Nf4Serialized *src, const char *name,
                                  Error *err) {
    Nf4Sizes s = sizes_of(w->rows, w->cols);
    if (!parse_quant_state(w, src, name, err) || !check_count(name, "", src->packed_bytes, s.packed, err) ||
        !check_count(name, ".absmax", src->n_absmax, s.blocks, err))
        return false;
    if (w->double_quant && !check_count(name, ".nested_absmax", src->n_nested_absmax, s.nested, err)) return false;
    ops->upload(ops, w->packed, src->packed, s.packed);
    ops->upload(ops, w->code, src->quant_map, 16 * sizeof(float));
    if (w->double_quant) {
        ops->upload(ops, w->absmax_q, src->absmax, s.blocks);
        ops->upload(ops, w->nested_absmax, src->nested_absmax, s.nested * sizeof(float));
        ops->upload(ops, w->nested_map, src->nested_map, NF4_DYNAMIC_MAP_SIZE * sizeof(float));
    } else {
        ops->upload(ops, w->absmax, src->absmax, s.blocks * sizeof(float));
    }
    ops->synchronize(ops);
    return true;
}

void nf4_weight_dequantize(const Nf4Weight *w, const Ops *ops, void *out, float *absmax_scratch) {
    Nf4Sizes s = sizes_of(w->rows, w->cols);
    const float *absmax = w->absmax;
    if (w->double_quant) {
        ops->dequantize_blockwise_u8(ops, absmax_scratch, w->absmax_q, w->nested_map, w->nested_absmax, w->offset,
                                     s.blocks, NF4_NESTED_BLOCK);
        absmax = absmax_scratch;
    }
    ops->dequantize_nf4(ops, out, w->packed, w->code, absmax, s.numel);
}
