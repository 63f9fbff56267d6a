// cuda_emu: cuBLASLt's matmul on the CPU; include/cublasLt.h says which case.
// Every call validates synchronously and returns its status; the product is
// stream work (emu::Work) that runs when the runtime runs the stream.
//
// Refusals are printed to stderr. CUBLAS_STATUS_NOT_SUPPORTED, a case this
// emulator does not do (a GPU might), also goes through emu::fault, so it is
// sticky like a GPU fault and cannot pass unnoticed.
#include <cublasLt.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <new>
#include <utility>
#include <unordered_map>
#include <vector>

#include "internal.h"

// ----------------------------------------------------------------------------
// objects: every live one is registered with its kind, so a destroyed or
// mistyped handle is refused rather than read

struct cublasLtContext {
    static constexpr const char *kind = "cublasLtHandle_t";
};

struct cublasLtMatmulDescEmu {
    static constexpr const char *kind = "cublasLtMatmulDesc_t";
    int32_t compute_type = CUBLAS_COMPUTE_32F;
    int32_t scale_type = CUDA_R_32F;
    int32_t pointer_mode = CUBLASLT_POINTER_MODE_HOST;
    int32_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_N, trans_c = CUBLAS_OP_N;
    uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
};

struct cublasLtMatrixLayoutEmu {
    static constexpr const char *kind = "cublasLtMatrixLayout_t";
    uint32_t type = CUDA_R_32F;
    int32_t order = CUBLASLT_ORDER_COL;
    uint64_t rows = 0, cols = 0;
    int64_t ld = 0;            // elements between columns
    int32_t batch_count = 1;
    int64_t batch_stride = 0;  // elements between batches
};

struct cublasLtMatmulPreferenceEmu {
    static constexpr const char *kind = "cublasLtMatmulPreference_t";
    uint32_t search_mode = CUBLASLT_SEARCH_BEST_FIT;
    uint64_t max_workspace_bytes = 0;
    uint32_t min_alignment[4] = {256, 256, 256, 256};  // bytes, A B C D
};

static std::unordered_map<const void *, const char *> &live_objects() {
    static std::unordered_map<const void *, const char *> objects;
    return objects;
}

template <class T>
static bool live(const T *object) {
    auto it = live_objects().find(object);
    return it != live_objects().end() && it->second == T::kind;
}

static const char *status_name(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

// Reports why `function` refuses and returns `status`.
__attribute__((format(printf, 3, 4))) static cublasStatus_t refuse(const char *function, cublasStatus_t status,
                                                                   const char *format, ...) {
    char why[512];
    va_list args;
    va_start(args, format);
    vsnprintf(why, sizeof why, format, args);
    va_end(args);
    if (status == CUBLAS_STATUS_NOT_SUPPORTED)
        emu::fault(cudaErrorNotSupported, "%s: %s: not supported by cuda_emu", function, why);
    else
        fprintf(stderr, "cuda_emu: %s: %s: %s\n", function, status_name(status), why);
    return status;
}

template <class T>
static cublasStatus_t create(const char *function, T **out) {
    if (!out) return refuse(function, CUBLAS_STATUS_INVALID_VALUE, "NULL output pointer");
    T *object = new (std::nothrow) T();
    if (!object) return refuse(function, CUBLAS_STATUS_ALLOC_FAILED, "out of host memory");
    live_objects()[object] = T::kind;
    *out = object;
    return CUBLAS_STATUS_SUCCESS;
}

template <class T>
static cublasStatus_t destroy(const char *function, T *object) {
    if (!object) return CUBLAS_STATUS_SUCCESS;
    if (!live(object)) return refuse(function, CUBLAS_STATUS_INVALID_VALUE, "%p is not a live %s", object, T::kind);
    live_objects().erase(object);
    delete object;
    return CUBLAS_STATUS_SUCCESS;
}

// ----------------------------------------------------------------------------
// attributes: each is a field of the object, set and read by size

struct Field {
    void *data;   // NULL: an attribute this emulator does not have
    size_t size;
};

template <class T>
static Field field(T &value) { return {&value, sizeof value}; }

static Field desc_field(cublasLtMatmulDescEmu *desc, cublasLtMatmulDescAttributes_t attr) {
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: return field(desc->compute_type);
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: return field(desc->scale_type);
    case CUBLASLT_MATMUL_DESC_POINTER_MODE: return field(desc->pointer_mode);
    case CUBLASLT_MATMUL_DESC_TRANSA: return field(desc->trans_a);
    case CUBLASLT_MATMUL_DESC_TRANSB: return field(desc->trans_b);
    case CUBLASLT_MATMUL_DESC_TRANSC: return field(desc->trans_c);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return field(desc->epilogue);
    default: return {nullptr, 0};
    }
}

static Field layout_field(cublasLtMatrixLayoutEmu *layout, cublasLtMatrixLayoutAttribute_t attr) {
    switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_TYPE: return field(layout->type);
    case CUBLASLT_MATRIX_LAYOUT_ORDER: return field(layout->order);
    case CUBLASLT_MATRIX_LAYOUT_ROWS: return field(layout->rows);
    case CUBLASLT_MATRIX_LAYOUT_COLS: return field(layout->cols);
    case CUBLASLT_MATRIX_LAYOUT_LD: return field(layout->ld);
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: return field(layout->batch_count);
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: return field(layout->batch_stride);
    default: return {nullptr, 0};
    }
}

static Field preference_field(cublasLtMatmulPreferenceEmu *pref, cublasLtMatmulPreferenceAttributes_t attr) {
    switch (attr) {
    case CUBLASLT_MATMUL_PREF_SEARCH_MODE: return field(pref->search_mode);
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: return field(pref->max_workspace_bytes);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: return field(pref->min_alignment[0]);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: return field(pref->min_alignment[1]);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: return field(pref->min_alignment[2]);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: return field(pref->min_alignment[3]);
    default: return {nullptr, 0};
    }
}

static cublasStatus_t set_field(const char *function, Field f, int attr, const void *buf, size_t size) {
    if (!f.data) return refuse(function, CUBLAS_STATUS_NOT_SUPPORTED, "attribute %d", attr);
    if (!buf || size != f.size)
        return refuse(function, CUBLAS_STATUS_INVALID_VALUE, "attribute %d takes %zu bytes, given %zu%s", attr,
                      f.size, size, buf ? "" : " at NULL");
    memcpy(f.data, buf, size);
    return CUBLAS_STATUS_SUCCESS;
}

// sizeInBytes 0 asks for the size (into *written); otherwise it must be the size.
static cublasStatus_t get_field(const char *function, Field f, int attr, void *buf, size_t size, size_t *written) {
    if (!f.data) return refuse(function, CUBLAS_STATUS_NOT_SUPPORTED, "attribute %d", attr);
    if (size == 0 && written) {
        *written = f.size;
        return CUBLAS_STATUS_SUCCESS;
    }
    if (!buf || size != f.size)
        return refuse(function, CUBLAS_STATUS_INVALID_VALUE, "attribute %d takes %zu bytes, given %zu%s", attr,
                      f.size, size, buf ? "" : " at NULL");
    memcpy(buf, f.data, size);
    if (written) *written = size;
    return CUBLAS_STATUS_SUCCESS;
}

// ----------------------------------------------------------------------------
// the problem: the four layouts and the descriptor checked against each other

struct Operand {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld, stride;  // elements between columns, between batches
    size_t element;      // bytes per element
    size_t extent;       // bytes from the first element of batch 0 to past the last of the last batch
};

// D (m, n) = alpha op(A) (m, k) @ op(B) (k, n) + beta C (m, n), `batches` times.
struct Problem {
    Operand a, b, c, d;
    bool trans_a, trans_b;
    uint64_t m, n, k;
    int batches;
};

static const char *type_name(uint32_t type) {
    switch (type) {
    case CUDA_R_16BF: return "CUDA_R_16BF";
    case CUDA_R_32F: return "CUDA_R_32F";
    case CUDA_R_16F: return "CUDA_R_16F";
    case CUDA_R_64F: return "CUDA_R_64F";
    case CUDA_R_8I: return "CUDA_R_8I";
    case CUDA_R_32I: return "CUDA_R_32I";
    }
    return "an unknown type";
}

static cublasStatus_t check_desc(const char *function, const cublasLtMatmulDescEmu *desc) {
    const cublasStatus_t no = CUBLAS_STATUS_NOT_SUPPORTED;
    if (desc->compute_type != CUBLAS_COMPUTE_32F)
        return refuse(function, no, "compute type %d (only CUBLAS_COMPUTE_32F)", desc->compute_type);
    if (desc->scale_type != CUDA_R_32F)
        return refuse(function, no, "scale type %s (only CUDA_R_32F)", type_name(desc->scale_type));
    if (desc->pointer_mode != CUBLASLT_POINTER_MODE_HOST)
        return refuse(function, no, "pointer mode %d (only CUBLASLT_POINTER_MODE_HOST)", desc->pointer_mode);
    if (desc->epilogue != CUBLASLT_EPILOGUE_DEFAULT)
        return refuse(function, no, "epilogue %u (only CUBLASLT_EPILOGUE_DEFAULT)", desc->epilogue);
    if (desc->trans_c != CUBLAS_OP_N) return refuse(function, no, "TRANSC %d (only CUBLAS_OP_N)", desc->trans_c);
    int32_t trans[2] = {desc->trans_a, desc->trans_b};
    for (int i = 0; i < 2; i++) {
        if (trans[i] == CUBLAS_OP_C) return refuse(function, no, "TRANS%c CUBLAS_OP_C", "AB"[i]);
        if (trans[i] != CUBLAS_OP_N && trans[i] != CUBLAS_OP_T)
            return refuse(function, CUBLAS_STATUS_INVALID_VALUE, "TRANS%c %d is no cublasOperation_t", "AB"[i],
                          trans[i]);
    }
    return CUBLAS_STATUS_SUCCESS;
}

// One layout on its own: its order, type, sizes and extent.
static cublasStatus_t check_layout(const char *function, char name, const cublasLtMatrixLayoutEmu *layout,
                                   Operand *x) {
    const cublasStatus_t no = CUBLAS_STATUS_NOT_SUPPORTED, invalid = CUBLAS_STATUS_INVALID_VALUE;
    if (layout->order != CUBLASLT_ORDER_COL)
        return refuse(function, no, "%c: order %d (only CUBLASLT_ORDER_COL)", name, layout->order);
    if (layout->type != CUDA_R_16BF && layout->type != CUDA_R_32F)
        return refuse(function, no, "%c: type %s (only CUDA_R_16BF, CUDA_R_32F)", name, type_name(layout->type));
    if (layout->rows == 0 || layout->cols == 0)
        return refuse(function, no, "%c: empty (%llu, %llu)", name, (unsigned long long)layout->rows,
                      (unsigned long long)layout->cols);
    if (layout->rows > INT32_MAX || layout->cols > INT32_MAX)
        return refuse(function, no, "%c: (%llu, %llu) beyond int32", name, (unsigned long long)layout->rows,
                      (unsigned long long)layout->cols);
    if (layout->ld < (int64_t)layout->rows)
        return refuse(function, invalid, "%c: ld %lld < rows %llu", name, (long long)layout->ld,
                      (unsigned long long)layout->rows);
    if (layout->batch_count < 1) return refuse(function, invalid, "%c: batch count %d", name, layout->batch_count);
    if (layout->batch_stride < 0)
        return refuse(function, no, "%c: negative batch stride %lld", name, (long long)layout->batch_stride);
    x->type = (cudaDataType_t)layout->type;
    x->rows = layout->rows, x->cols = layout->cols;
    x->ld = layout->ld, x->stride = layout->batch_stride;
    x->element = x->type == CUDA_R_16BF ? 2 : 4;
    // (batches - 1) stride + (cols - 1) ld + rows elements, checked against overflow
    unsigned __int128 elements = (unsigned __int128)(layout->batch_count - 1) * (uint64_t)layout->batch_stride +
                                 (unsigned __int128)(layout->cols - 1) * (uint64_t)layout->ld + layout->rows;
    if (elements * x->element > (unsigned __int128)INT64_MAX)
        return refuse(function, invalid, "%c: extent beyond 2^63 bytes", name);
    x->extent = (size_t)(elements * x->element);
    return CUBLAS_STATUS_SUCCESS;
}

static cublasStatus_t check_types(const char *function, const Problem *p) {
    const cublasStatus_t no = CUBLAS_STATUS_NOT_SUPPORTED;
    if (p->a.type != p->b.type)
        return refuse(function, no, "A %s with B %s (A and B must share a type)", type_name(p->a.type),
                      type_name(p->b.type));
    if (p->c.type != p->d.type)
        return refuse(function, no, "C %s with D %s (C and D must share a type)", type_name(p->c.type),
                      type_name(p->d.type));
    if (p->a.type == CUDA_R_32F && p->d.type != CUDA_R_32F)
        return refuse(function, no, "A and B CUDA_R_32F with D %s (fp32 inputs give fp32 D)", type_name(p->d.type));
    return CUBLAS_STATUS_SUCCESS;
}

// op(A) (m, k), op(B) (k, n), C and D (m, n), one batch count.
static cublasStatus_t check_shapes(const char *function, Problem *p,
                                   const cublasLtMatrixLayoutEmu *const layouts[4]) {
    const cublasStatus_t invalid = CUBLAS_STATUS_INVALID_VALUE;
    uint64_t a_rows = p->trans_a ? p->a.cols : p->a.rows, a_cols = p->trans_a ? p->a.rows : p->a.cols;
    uint64_t b_rows = p->trans_b ? p->b.cols : p->b.rows, b_cols = p->trans_b ? p->b.rows : p->b.cols;
    p->m = p->d.rows, p->n = p->d.cols, p->k = a_cols;
    if (a_rows != p->m || b_cols != p->n || b_rows != p->k || p->c.rows != p->m || p->c.cols != p->n)
        return refuse(function, invalid,
                      "shapes disagree: op(A) (%llu, %llu) @ op(B) (%llu, %llu) + C (%llu, %llu) -> D (%llu, %llu)",
                      (unsigned long long)a_rows, (unsigned long long)a_cols, (unsigned long long)b_rows,
                      (unsigned long long)b_cols, (unsigned long long)p->c.rows, (unsigned long long)p->c.cols,
                      (unsigned long long)p->m, (unsigned long long)p->n);
    p->batches = layouts[3]->batch_count;
    for (int i = 0; i < 3; i++)
        if (layouts[i]->batch_count != p->batches)
            return refuse(function, invalid, "batch counts disagree: %c %d, D %d", "ABC"[i], layouts[i]->batch_count,
                          p->batches);
    if (p->batches > 1 && (uint64_t)p->d.stride < p->d.cols * (uint64_t)p->d.ld)
        return refuse(function, invalid, "D's batches overlap: stride %lld < ld %lld * cols %llu",
                      (long long)p->d.stride, (long long)p->d.ld, (unsigned long long)p->d.cols);
    return CUBLAS_STATUS_SUCCESS;
}

static cublasStatus_t check_problem(const char *function, const cublasLtMatmulDescEmu *desc,
                                    const cublasLtMatrixLayoutEmu *const layouts[4], Problem *p) {
    cublasStatus_t status = check_desc(function, desc);
    Operand *operands[4] = {&p->a, &p->b, &p->c, &p->d};
    for (int i = 0; i < 4 && status == CUBLAS_STATUS_SUCCESS; i++)
        status = check_layout(function, "ABCD"[i], layouts[i], operands[i]);
    if (status != CUBLAS_STATUS_SUCCESS) return status;
    p->trans_a = desc->trans_a == CUBLAS_OP_T, p->trans_b = desc->trans_b == CUBLAS_OP_T;
    status = check_types(function, p);
    return status != CUBLAS_STATUS_SUCCESS ? status : check_shapes(function, p, layouts);
}

// The handle, descriptor and layouts as live objects.
static cublasStatus_t check_objects(const char *function, cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                    const cublasLtMatrixLayoutEmu *const layouts[4]) {
    if (!live(handle)) return refuse(function, CUBLAS_STATUS_NOT_INITIALIZED, "%p is no live handle", handle);
    if (!live(desc)) return refuse(function, CUBLAS_STATUS_INVALID_VALUE, "%p is no live matmul desc", desc);
    for (int i = 0; i < 4; i++)
        if (!live(layouts[i]))
            return refuse(function, CUBLAS_STATUS_INVALID_VALUE, "%c: %p is no live layout", "ABCD"[i], layouts[i]);
    return CUBLAS_STATUS_SUCCESS;
}

// ----------------------------------------------------------------------------
// algorithms: one, which records the pointer alignments it was chosen for

static const uint64_t ALGO_TAG = 0x6375646125656d75ull;  // data[0]; data[1..4]: alignment of A, B, C, D in bytes

static uint32_t lowest_power_of_two(uint32_t x) { return x & (~x + 1); }

static void algo_alignments(const cublasLtMatmulAlgo_t *algo, const Problem *p, uint64_t alignment[4]) {
    const Operand *operands[4] = {&p->a, &p->b, &p->c, &p->d};
    for (int i = 0; i < 4; i++) {
        uint64_t promised = algo ? algo->data[1 + i] : 0;  // NULL algo: chosen for these very pointers
        alignment[i] = promised > operands[i]->element ? promised : operands[i]->element;
    }
}

// ----------------------------------------------------------------------------
// arithmetic: bf16 <-> float as CUDA's __bfloat162float / __float2bfloat16_rn

static float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

// Round to nearest even; NaN becomes the canonical 0x7FFF.
static uint16_t float_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FFF;
    bits += 0x7FFFu + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

static float load(const char *base, cudaDataType_t type, uint64_t index) {
    if (type == CUDA_R_32F) {
        float f;
        memcpy(&f, base + index * 4, sizeof f);
        return f;
    }
    uint16_t h;
    memcpy(&h, base + index * 2, sizeof h);
    return bf16_to_float(h);
}

static void store(char *base, cudaDataType_t type, uint64_t index, float value) {
    if (type == CUDA_R_32F) {
        memcpy(base + index * 4, &value, sizeof value);
        return;
    }
    uint16_t h = float_to_bf16(value);
    memcpy(base + index * 2, &h, sizeof h);
}

// The product works on tiles of TILE_M rows of op(A) by TILE_N columns of
// op(B), packed as floats so that step q of the k loop reads them contiguously.
// A tile row is TILE_N / 4 SSE-sized vectors (portable, no -mavx needed).
enum { TILE_M = 4, TILE_N = 8, VECTORS = TILE_N / 4 };
typedef float Vec4 __attribute__((vector_size(4 * sizeof(float))));

// op(A) (m, k) into panels of TILE_M rows, the panel of row i0 at
// panels[i0 k], element [q][i - i0]; zero rows pad m. Written in order: the
// reads, TILE_M rows at a time, reuse cache lines whether A is transposed or not.
static void pack_a(const Problem *p, const char *a, std::vector<float> &panels) {
    panels.assign((p->m + TILE_M - 1) / TILE_M * TILE_M * p->k, 0.0f);
    for (uint64_t i0 = 0; i0 < p->m; i0 += TILE_M)
        for (uint64_t q = 0; q < p->k; q++)
            for (uint64_t i = i0; i < i0 + TILE_M && i < p->m; i++) {
                uint64_t index = p->trans_a ? q + i * p->a.ld : i + q * p->a.ld;  // op(A)[i, q]
                panels[i0 * p->k + q * TILE_M + (i - i0)] = load(a, p->a.type, index);
            }
}

// op(B) (k, n) into panels of TILE_N columns, the panel of column j0 at
// panels[j0 k], element [q][j - j0]; zero columns pad n.
static void pack_b(const Problem *p, const char *b, std::vector<float> &panels) {
    panels.assign((p->n + TILE_N - 1) / TILE_N * TILE_N * p->k, 0.0f);
    for (uint64_t j0 = 0; j0 < p->n; j0 += TILE_N)
        for (uint64_t q = 0; q < p->k; q++)
            for (uint64_t j = j0; j < j0 + TILE_N && j < p->n; j++) {
                uint64_t index = p->trans_b ? j + q * p->b.ld : q + j * p->b.ld;  // op(B)[q, j]
                panels[j0 * p->k + q * TILE_N + (j - j0)] = load(b, p->b.type, index);
            }
}

// sums[i][j] = sum over q in order of a[q][i] * b[q][j]: each a plain fp32
// running sum, lanes independent, so the result does not depend on tiling.
static void tile_product(const float *a, const float *b, uint64_t k, float sums[TILE_M][TILE_N]) {
    Vec4 acc[TILE_M][VECTORS] = {};
    for (uint64_t q = 0; q < k; q++) {
        Vec4 row[VECTORS];
        memcpy(row, b + q * TILE_N, sizeof row);
#pragma GCC unroll 4
        for (int i = 0; i < TILE_M; i++)
#pragma GCC unroll 2
            for (int v = 0; v < VECTORS; v++) acc[i][v] += a[q * TILE_M + i] * row[v];
    }
    memcpy(sums, acc, sizeof acc);
}

// sums (m, n), column-major, = op(A) @ op(B) from the packed panels.
static void product(const Problem *p, const std::vector<float> &a_panels, const std::vector<float> &b_panels,
                    std::vector<float> &sums) {
    sums.resize(p->m * p->n);
    for (uint64_t j0 = 0; j0 < p->n; j0 += TILE_N)
        for (uint64_t i0 = 0; i0 < p->m; i0 += TILE_M) {
            float tile[TILE_M][TILE_N];
            tile_product(&a_panels[i0 * p->k], &b_panels[j0 * p->k], p->k, tile);
            for (uint64_t i = i0; i < i0 + TILE_M && i < p->m; i++)
                for (uint64_t j = j0; j < j0 + TILE_N && j < p->n; j++) sums[i + j * p->m] = tile[i - i0][j - j0];
        }
}

// D = alpha sums + beta C, in fp32, one rounding to D's type; C unread when beta is 0.
static void write_d(const Problem *p, const std::vector<float> &sums, float alpha, float beta, const char *c,
                    char *d) {
    for (uint64_t j = 0; j < p->n; j++)
        for (uint64_t i = 0; i < p->m; i++) {
            float value = alpha * sums[i + j * p->m];
            if (beta != 0.0f) value = value + beta * load(c, p->c.type, i + j * p->c.ld);
            store(d, p->d.type, i + j * p->d.ld, value);
        }
}

struct MatmulWork : emu::Work {
    Problem p;
    const char *a, *b, *c;
    char *d;
    float alpha, beta;

    std::string name() const override { return "cublasLtMatmul"; }
    bool touches(const char *begin, const char *end) const override {
        return emu::within(a, begin, end) || emu::within(b, begin, end) || emu::within(c, begin, end) ||
               emu::within(d, begin, end);
    }

    bool run() override {
        std::vector<float> a_panels, b_panels, sums;
        for (int batch = 0; batch < p.batches; batch++) {
            pack_a(&p, a + batch * p.a.stride * p.a.element, a_panels);
            pack_b(&p, b + batch * p.b.stride * p.b.element, b_panels);
            product(&p, a_panels, b_panels, sums);
            write_d(&p, sums, alpha, beta, c + batch * p.c.stride * p.c.element,
                    d + batch * p.d.stride * p.d.element);
        }
        return true;
    }
};

// ----------------------------------------------------------------------------
// cublasLtMatmul's argument checks

static bool overlap(const void *x, size_t x_bytes, const void *y, size_t y_bytes) {
    const char *x0 = (const char *)x, *y0 = (const char *)y;
    return x0 < y0 + y_bytes && y0 < x0 + x_bytes;
}

// Alignment of each pointer to its element and to what the algorithm was chosen for.
static cublasStatus_t check_alignment(const char *function, const cublasLtMatmulAlgo_t *algo, const Problem *p,
                                      const void *const pointers[4]) {
    uint64_t alignment[4];
    algo_alignments(algo, p, alignment);
    for (int i = 0; i < 4; i++) {
        uintptr_t address = (uintptr_t)pointers[i];
        if (address % alignment[i] != 0)
            return refuse(function, CUBLAS_STATUS_INVALID_VALUE,
                          "%c (%p) is not aligned to %llu bytes, as %s", "ABCD"[i], pointers[i],
                          (unsigned long long)alignment[i],
                          algo ? "the algorithm's preference (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES) promised"
                               : "its element type requires");
    }
    return CUBLAS_STATUS_SUCCESS;
}

// C and D are one matrix (same layout) or apart; D does not overlap A or B.
static cublasStatus_t check_aliasing(const char *function, const Problem *p, const void *const pointers[4]) {
    const cublasStatus_t invalid = CUBLAS_STATUS_INVALID_VALUE;
    const void *a = pointers[0], *b = pointers[1], *c = pointers[2], *d = pointers[3];
    if (c == d && (p->c.ld != p->d.ld || p->c.stride != p->d.stride))
        return refuse(function, invalid, "C == D in place with ld or batch stride differing (%lld/%lld, %lld/%lld)",
                      (long long)p->c.ld, (long long)p->d.ld, (long long)p->c.stride, (long long)p->d.stride);
    if (c != d && overlap(c, p->c.extent, d, p->d.extent))
        return refuse(function, invalid, "C (%p) and D (%p) overlap without being the same matrix", c, d);
    if (overlap(a, p->a.extent, d, p->d.extent)) return refuse(function, invalid, "D overlaps A");
    if (overlap(b, p->b.extent, d, p->d.extent)) return refuse(function, invalid, "D overlaps B");
    return CUBLAS_STATUS_SUCCESS;
}

// Host scalars (CUBLASLT_POINTER_MODE_HOST): present and outside device memory.
static cublasStatus_t check_scalars(const char *function, const void *alpha, const void *beta) {
    const void *scalars[2] = {alpha, beta};
    for (int i = 0; i < 2; i++) {
        const char *name = i == 0 ? "alpha" : "beta";
        if (!scalars[i]) return refuse(function, CUBLAS_STATUS_INVALID_VALUE, "%s is NULL", name);
        if (emu::find(scalars[i]).kind == emu::Memory::device)
            return refuse(function, CUBLAS_STATUS_INVALID_VALUE,
                          "%s (%p) is device memory, but the pointer mode is CUBLASLT_POINTER_MODE_HOST", name,
                          scalars[i]);
    }
    return CUBLAS_STATUS_SUCCESS;
}

// What the GPU would touch lies in device memory: A, B, D, C when read, the workspace.
static bool check_device_memory(const Problem *p, const void *const pointers[4], float beta, const void *workspace,
                                size_t workspace_bytes) {
    const Operand *operands[4] = {&p->a, &p->b, &p->c, &p->d};
    static const char *const what[4] = {"cublasLtMatmul: A", "cublasLtMatmul: B", "cublasLtMatmul: C",
                                        "cublasLtMatmul: D"};
    for (int i = 0; i < 4; i++) {
        if (i == 2 && beta == 0.0f) continue;
        if (!emu::check_device_range(pointers[i], operands[i]->extent, what[i])) return false;
    }
    return !workspace || emu::check_device_range(workspace, workspace_bytes, "cublasLtMatmul: workspace");
}

// ----------------------------------------------------------------------------
// the API

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t *lightHandle) {
    emu::Lock lock;
    return create("cublasLtCreate", lightHandle);
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t lightHandle) {
    emu::Lock lock;
    if (!live(lightHandle))
        return refuse("cublasLtDestroy", CUBLAS_STATUS_NOT_INITIALIZED, "%p is no live handle", lightHandle);
    return destroy("cublasLtDestroy", lightHandle);
}

const char *cublasLtGetStatusString(cublasStatus_t status) { return status_name(status); }

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *matmulDesc, cublasComputeType_t computeType,
                                        cudaDataType_t scaleType) {
    emu::Lock lock;
    cublasStatus_t status = create("cublasLtMatmulDescCreate", matmulDesc);
    if (status != CUBLAS_STATUS_SUCCESS) return status;
    (*matmulDesc)->compute_type = computeType;
    (*matmulDesc)->scale_type = scaleType;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc) {
    emu::Lock lock;
    return destroy("cublasLtMatmulDescDestroy", matmulDesc);
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t sizeInBytes) {
    emu::Lock lock;
    const char *function = "cublasLtMatmulDescSetAttribute";
    if (!live(matmulDesc)) return refuse(function, CUBLAS_STATUS_INVALID_VALUE, "%p is no live desc", matmulDesc);
    return set_field(function, desc_field(matmulDesc, attr), attr, buf, sizeInBytes);
}

cublasStatus_t cublasLtMatmulDescGetAttribute(cublasLtMatmulDesc_t matmulDesc, cublasLtMatmulDescAttributes_t attr,
                                              void *buf, size_t sizeInBytes, size_t *sizeWritten) {
    emu::Lock lock;
    const char *function = "cublasLtMatmulDescGetAttribute";
    if (!live(matmulDesc)) return refuse(function, CUBLAS_STATUS_INVALID_VALUE, "%p is no live desc", matmulDesc);
    return get_field(function, desc_field(matmulDesc, attr), attr, buf, sizeInBytes, sizeWritten);
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *matLayout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
    emu::Lock lock;
    cublasStatus_t status = create("cublasLtMatrixLayoutCreate", matLayout);
    if (status != CUBLAS_STATUS_SUCCESS) return status;
    (*matLayout)->type = type;
    (*matLayout)->rows = rows, (*matLayout)->cols = cols, (*matLayout)->ld = ld;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout) {
    emu::Lock lock;
    return destroy("cublasLtMatrixLayoutDestroy", matLayout);
}

cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t matLayout, cublasLtMatrixLayoutAttribute_t attr,
                                                const void *buf, size_t sizeInBytes) {
    emu::Lock lock;
    const char *function = "cublasLtMatrixLayoutSetAttribute";
    if (!live(matLayout)) return refuse(function, CUBLAS_STATUS_INVALID_VALUE, "%p is no live layout", matLayout);
    return set_field(function, layout_field(matLayout, attr), attr, buf, sizeInBytes);
}

cublasStatus_t cublasLtMatrixLayoutGetAttribute(cublasLtMatrixLayout_t matLayout, cublasLtMatrixLayoutAttribute_t attr,
                                                void *buf, size_t sizeInBytes, size_t *sizeWritten) {
    emu::Lock lock;
    const char *function = "cublasLtMatrixLayoutGetAttribute";
    if (!live(matLayout)) return refuse(function, CUBLAS_STATUS_INVALID_VALUE, "%p is no live layout", matLayout);
    return get_field(function, layout_field(matLayout, attr), attr, buf, sizeInBytes, sizeWritten);
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref) {
    emu::Lock lock;
    return create("cublasLtMatmulPreferenceCreate", pref);
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
    emu::Lock lock;
    return destroy("cublasLtMatmulPreferenceDestroy", pref);
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t sizeInBytes) {
    emu::Lock lock;
    const char *function = "cublasLtMatmulPreferenceSetAttribute";
    if (!live(pref)) return refuse(function, CUBLAS_STATUS_INVALID_VALUE, "%p is no live preference", pref);
    return set_field(function, preference_field(pref, attr), attr, buf, sizeInBytes);
}

cublasStatus_t cublasLtMatmulPreferenceGetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, void *buf,
                                                    size_t sizeInBytes, size_t *sizeWritten) {
    emu::Lock lock;
    const char *function = "cublasLtMatmulPreferenceGetAttribute";
    if (!live(pref)) return refuse(function, CUBLAS_STATUS_INVALID_VALUE, "%p is no live preference", pref);
    return get_field(function, preference_field(pref, attr), attr, buf, sizeInBytes, sizeWritten);
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc,
                                              cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                              cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                              cublasLtMatmulPreference_t preference, int requestedAlgoCount,
                                              cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                              int *returnAlgoCount) {
    emu::Lock lock;
    const char *function = "cublasLtMatmulAlgoGetHeuristic";
    const cublasLtMatrixLayoutEmu *const layouts[4] = {Adesc, Bdesc, Cdesc, Ddesc};
    cublasStatus_t status = check_objects(function, lightHandle, operationDesc, layouts);
    if (status != CUBLAS_STATUS_SUCCESS) return status;
    if (!live(preference)) return refuse(function, CUBLAS_STATUS_INVALID_VALUE, "%p is no live preference", preference);
    if (requestedAlgoCount < 1 || !heuristicResultsArray || !returnAlgoCount)
        return refuse(function, CUBLAS_STATUS_INVALID_VALUE, "no room for results (requestedAlgoCount %d)",
                      requestedAlgoCount);
    *returnAlgoCount = 0;
    Problem p;
    status = check_problem(function, operationDesc, layouts, &p);
    if (status != CUBLAS_STATUS_SUCCESS) return status;
    if (preference->search_mode != CUBLASLT_SEARCH_BEST_FIT)
        return refuse(function, CUBLAS_STATUS_NOT_SUPPORTED, "search mode %u (only CUBLASLT_SEARCH_BEST_FIT)",
                      preference->search_mode);
    cublasLtMatmulHeuristicResult_t result;
    memset(&result, 0, sizeof result);
    result.algo.data[0] = ALGO_TAG;
    const Operand *operands[4] = {&p.a, &p.b, &p.c, &p.d};
    for (int i = 0; i < 4; i++) {
        // pointers promised `min_alignment` bytes are aligned to its lowest set bit
        uint32_t alignment = lowest_power_of_two(preference->min_alignment[i]);
        if (alignment < operands[i]->element)
            return refuse(function, CUBLAS_STATUS_NOT_SUPPORTED,
                          "no algorithm for %c aligned to %u bytes (MIN_ALIGNMENT %u, element %zu bytes)", "ABCD"[i],
                          alignment, preference->min_alignment[i], operands[i]->element);
        result.algo.data[1 + i] = alignment;
    }
    result.workspaceSize = 0;
    result.state = CUBLAS_STATUS_SUCCESS;
    result.wavesCount = 1.0f;
    heuristicResultsArray[0] = result;
    *returnAlgoCount = 1;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc, const void *alpha,
                              const void *A, cublasLtMatrixLayout_t Adesc, const void *B,
                              cublasLtMatrixLayout_t Bdesc, const void *beta, const void *C,
                              cublasLtMatrixLayout_t Cdesc, void *D, cublasLtMatrixLayout_t Ddesc,
                              const cublasLtMatmulAlgo_t *algo, void *workspace, size_t workspaceSizeInBytes,
                              cudaStream_t stream) {
    emu::Lock lock;
    const char *function = "cublasLtMatmul";
    const cublasStatus_t invalid = CUBLAS_STATUS_INVALID_VALUE;
    const cublasLtMatrixLayoutEmu *const layouts[4] = {Adesc, Bdesc, Cdesc, Ddesc};
    const void *const pointers[4] = {A, B, C, D};
    cublasStatus_t status = check_objects(function, lightHandle, computeDesc, layouts);
    Problem p;
    if (status == CUBLAS_STATUS_SUCCESS) status = check_problem(function, computeDesc, layouts, &p);
    if (status == CUBLAS_STATUS_SUCCESS) status = check_scalars(function, alpha, beta);
    if (status != CUBLAS_STATUS_SUCCESS) return status;
    for (int i = 0; i < 4; i++)
        if (!pointers[i]) return refuse(function, invalid, "%c is NULL", "ABCD"[i]);
    if (algo && algo->data[0] != ALGO_TAG)
        return refuse(function, invalid, "algo did not come from cublasLtMatmulAlgoGetHeuristic");
    if (!workspace && workspaceSizeInBytes > 0)
        return refuse(function, invalid, "NULL workspace of %zu bytes", workspaceSizeInBytes);
    status = check_alignment(function, algo, &p, pointers);
    if (status == CUBLAS_STATUS_SUCCESS) status = check_aliasing(function, &p, pointers);
    if (status != CUBLAS_STATUS_SUCCESS) return status;

    float alpha_value, beta_value;  // host scalars, read now
    memcpy(&alpha_value, alpha, sizeof alpha_value);
    memcpy(&beta_value, beta, sizeof beta_value);
    // an access outside device memory is recorded as a (sticky) fault, as a GPU's would be
    if (!check_device_memory(&p, pointers, beta_value, workspace, workspaceSizeInBytes))
        return CUBLAS_STATUS_EXECUTION_FAILED;
    auto work = std::make_unique<MatmulWork>();
    work->p = p;
    work->a = (const char *)A, work->b = (const char *)B, work->c = (const char *)C, work->d = (char *)D;
    work->alpha = alpha_value, work->beta = beta_value;
    cudaError_t error = emu::enqueue(stream, std::move(work));
    if (error != cudaSuccess) {
        emu::set_last_error(error);
        return refuse(function, CUBLAS_STATUS_EXECUTION_FAILED, "stream %p refused the work: %s", (void *)stream,
                      cudaGetErrorString(error));
    }
    return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
