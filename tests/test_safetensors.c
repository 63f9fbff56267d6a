// safetensors reader and writer against files of the Python `safetensors`
// package (scripts/ref_safetensors.py), and malformed headers that must give
// an error, never a crash.
#include "test_util.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"

#define REFERENCE_FILE "tests/fixtures/safetensors/reference.safetensors"
#define EXPECTED_JSON "tests/fixtures/safetensors/expected.json"

static void skip_with(const char *message) {
    print_message("%s\n", message);
    skip();
}

static json_object *load_expected(void) {
    if (!path_exists(EXPECTED_JSON) || !path_exists(REFERENCE_FILE)) {
        skip_with("missing fixtures: run python3 scripts/ref_safetensors.py");
    }
    json_object *expected = json_object_from_file(EXPECTED_JSON);
    assert_non_null(expected);
    return expected;
}

static DType dtype_from_torch(const char *torch_name) {
    if (strcmp(torch_name, "float32") == 0) return DTYPE_F32;
    if (strcmp(torch_name, "bfloat16") == 0) return DTYPE_BF16;
    if (strcmp(torch_name, "float16") == 0) return DTYPE_F16;
    assert_string_equal(torch_name, "int64");
    return DTYPE_I64;
}

// The tensor read by our reader equals torch's view of it, element for element.
static void assert_tensor_matches(const Tensor *t, json_object *want) {
    json_object *dtype = json_object_object_get(want, "dtype");
    json_object *shape = json_object_object_get(want, "shape");
    json_object *values = json_object_object_get(want, "values");
    assert_int_equal(t->dtype, dtype_from_torch(json_object_get_string(dtype)));
    assert_int_equal(t->ndim, (int)json_object_array_length(shape));
    for (int d = 0; d < t->ndim; d++) {
        assert_int_equal(t->shape[d], json_object_get_int64(json_object_array_get_idx(shape, (size_t)d)));
    }
    size_t n = (size_t)tensor_numel(t);
    assert_int_equal(n, json_object_array_length(values));
    if (t->dtype == DTYPE_I64) {
        for (size_t i = 0; i < n; i++) {
            assert_int_equal(((const int64_t *)t->data)[i], json_object_get_int64(json_object_array_get_idx(values, i)));
        }
        return;
    }
    float *got = malloc((n ? n : 1) * sizeof *got);
    Error err;
    assert_true(convert_to_f32(got, t->data, t->dtype, n, &err));
    for (size_t i = 0; i < n; i++) {
        float want_value = (float)json_object_get_double(json_object_array_get_idx(values, i));
        assert_memory_equal(&got[i], &want_value, sizeof want_value);
    }
    free(got);
}

static void test_reads_python_file(void **state) {
    json_object *expected = load_expected();
    Error err = {0};
    SafetensorsFile *file = safetensors_open(REFERENCE_FILE, &err);
    assert_non_null(file);
    json_object *tensors = json_object_object_get(expected, "tensors");
    assert_int_equal(safetensors_count(file), json_object_object_length(tensors));
    json_object_object_foreach(tensors, name, want) {
        Tensor t;
        assert_true(safetensors_get(file, name, &t, &err));
        assert_tensor_matches(&t, want);
    }
    json_object_object_foreach(json_object_object_get(expected, "metadata"), key, value) {
        assert_non_null(safetensors_metadata(file, key));
        assert_string_equal(safetensors_metadata(file, key), json_object_get_string(value));
    }
    assert_null(safetensors_metadata(file, "absent"));
    Tensor t;
    assert_false(safetensors_get(file, "absent", &t, &err));
    assert_non_null(strstr(err.message, "absent"));
    safetensors_close(file);
    json_object_put(expected);
}

// Copies every tensor of the reference file (in its order) through our writer.
static const char *rewrite_reference(const char *dir) {
    static char path[512];
    snprintf(path, sizeof path, "%s/rewritten.safetensors", dir);
    Error err = {0};
    SafetensorsFile *file = safetensors_open(REFERENCE_FILE, &err);
    assert_non_null(file);
    int n = safetensors_count(file);
    SafetensorsEntry *entries = calloc((size_t)n, sizeof *entries);
    for (int i = 0; i < n; i++) {
        entries[i].name = safetensors_name(file, i);
        assert_true(safetensors_get(file, entries[i].name, &entries[i].tensor, &err));
    }
    const char *metadata[] = {"format", safetensors_metadata(file, "format"), "producer",
                              safetensors_metadata(file, "producer")};
    bool ok = safetensors_write(path, entries, n, metadata, 2, &err);
    if (!ok) fail_msg("%s", err.message);
    free(entries);
    safetensors_close(file);
    return path;
}

static void test_writer_round_trip(void **state) {
    json_object *expected = load_expected();
    const char *path = rewrite_reference(make_temp_dir("st-write"));
    Error err = {0};
    SafetensorsFile *file = safetensors_open(path, &err);
    if (!file) fail_msg("%s", err.message);
    json_object *tensors = json_object_object_get(expected, "tensors");
    assert_int_equal(safetensors_count(file), json_object_object_length(tensors));
    json_object_object_foreach(tensors, name, want) {
        Tensor t;
        assert_true(safetensors_get(file, name, &t, &err));
        assert_tensor_matches(&t, want);
        assert_int_equal((uintptr_t)t.data % dtype_size(t.dtype), 0);
    }
    assert_string_equal(safetensors_metadata(file, "format"), "pt");
    safetensors_close(file);
    char *bytes;
    size_t size;
    assert_true(read_file(path, &bytes, &size, &err));
    uint64_t header_length;
    memcpy(&header_length, bytes, 8);
    assert_int_equal((8 + header_length) % 8, 0);
    assert_memory_equal(bytes + 8, "{\"__metadata__\":{\"format\":\"pt\"", 30);
    free(bytes);
    json_object_put(expected);
}

static void test_python_reads_our_file(void **state) {
    json_object_put(load_expected());
    if (run_command("python3 -c 'import safetensors.torch' 2>/dev/null") != 0) {
        skip_with("python3 with the safetensors package is not available");
    }
    const char *path = rewrite_reference(make_temp_dir("st-python"));
    char command[1024];
    snprintf(command, sizeof command, "python3 scripts/ref_safetensors.py --verify %s", path);
    assert_int_equal(run_command(command), 0);
}

// ----------------------------------------------------------------------------
// malformed files

// One directory for all malformed files of this process.
static const char *bad_files_dir(void) {
    static char dir[256];
    if (!dir[0]) snprintf(dir, sizeof dir, "%s", make_temp_dir("st-bad"));
    return dir;
}

static const char *write_raw(const char *name, const void *bytes, size_t n) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s.safetensors", bad_files_dir(), name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
    return path;
}

// u64 length, the header as given (length may lie), then data_bytes zero bytes.
static const char *write_file(const char *name, uint64_t header_length, const char *header, size_t data_bytes) {
    size_t json_bytes = strlen(header);
    size_t n = 8 + json_bytes + data_bytes;
    uint8_t *bytes = calloc(n, 1);
    memcpy(bytes, &header_length, 8);
    memcpy(bytes + 8, header, json_bytes);
    const char *path = write_raw(name, bytes, n);
    free(bytes);
    return path;
}

static void assert_rejected(const char *path, const char *needle) {
    Error err = {0};
    SafetensorsFile *file = safetensors_open(path, &err);
    if (file) fail_msg("%s opened; expected an error containing '%s'", path, needle);
    if (!strstr(err.message, needle)) fail_msg("error '%s' lacks '%s'", err.message, needle);
    if (!strstr(err.message, path)) fail_msg("error '%s' does not name the file", err.message);
}

static void assert_header_rejected(const char *header, size_t data_bytes, const char *needle) {
    assert_rejected(write_file("bad", strlen(header), header, data_bytes), needle);
}

static void test_rejects_bad_offsets(void **state) {
    assert_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, "a: data_offsets [0, 16] outside");
    assert_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8, "a: data_offsets [8, 0] outside");
    assert_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 8, "a: data_offsets must be");
    assert_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "b (bytes 4..12) overlaps tensor a");
    assert_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "a: F32 [3] needs 12 bytes");
}

static void test_rejects_bad_shapes_and_dtypes(void **state) {
    assert_header_rejected("{\"big\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,0]}}", 0,
                           "big: shape [4294967296, 4294967296, 16] overflows");
    assert_header_rejected("{\"neg\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0, "neg: shape entry 0");
    assert_header_rejected("{\"frac\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,0]}}", 0, "frac: shape entry 0");
    assert_header_rejected("{\"w\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "w: unknown dtype \"F33\"");
    assert_header_rejected("{\"w\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "w: unknown dtype 7");
    assert_header_rejected("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "w: needs an object");
    assert_header_rejected("{\"w\":[1,2]}", 0, "w: needs an object");
}

static void test_rejects_bad_headers(void **state) {
    assert_rejected(write_file("long", 1000, "{}", 4), "header length 1000 but only 6 bytes follow");
    assert_rejected(write_file("huge", 1ull << 62, "{}", 0), "exceeds the 100000000 byte limit");
    assert_rejected(write_raw("short", "\x02\0\0\0", 4), "too short");
    assert_rejected(write_raw("empty", "", 0), "too short");
    assert_header_rejected("not json at all", 0, "not valid JSON");
    assert_header_rejected("{\"a\":", 0, "not valid JSON");
    assert_header_rejected("[1, 2]", 0, "not a JSON object");
    assert_header_rejected("{}  x", 0, "bytes after the header's JSON");
    assert_header_rejected("{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ value of k");
    assert_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                           "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
                           "tensor \"a\" appears more than once");
    Error err = {0};
    assert_null(safetensors_open("/nonexistent/x.safetensors", &err));
    assert_non_null(strstr(err.message, "/nonexistent/x.safetensors"));
}

// Every proper prefix of a valid file is rejected (and none crashes).
static void test_rejects_every_truncation(void **state) {
    json_object_put(load_expected());
    char *bytes;
    size_t size;
    Error err = {0};
    assert_true(read_file(REFERENCE_FILE, &bytes, &size, &err));
    for (size_t n = 0; n < size; n++) {
        SafetensorsFile *file = safetensors_open(write_raw("cut", bytes, n), &err);
        if (file) fail_msg("prefix of %zu of %zu bytes was accepted", n, size);
    }
    free(bytes);
}

static void test_write_reports_errors(void **state) {
    float x[2] = {1, 2};
    SafetensorsEntry entries[2] = {{"x", {DTYPE_F32, 1, {2}, x}}, {"x", {DTYPE_F32, 1, {2}, x}}};
    Error err = {0};
    assert_false(safetensors_write("/nonexistent/dir/out.safetensors", entries, 1, NULL, 0, &err));
    assert_non_null(strstr(err.message, "/nonexistent/dir/out.safetensors"));
    char path[512];
    snprintf(path, sizeof path, "%s/dup.safetensors", make_temp_dir("st-dup"));
    assert_false(safetensors_write(path, entries, 2, NULL, 0, &err));
    assert_non_null(strstr(err.message, "tensor x given twice"));
}

// The process's resident pages (/proc/self/statm's second field), in bytes.
static double resident_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%ld %ld", &size, &resident), 2);
    fclose(f);
    return (double)resident * 4096.0;
}

static bool fill_from_entries(void *context, int index, void *bytes, size_t size, Error *err) {
    const SafetensorsEntry *entries = context;
    memcpy(bytes, entries[index].tensor.data, size);
    return true;
}

// Streamed writing (one tensor's bytes at a time) gives the file safetensors_write gives.
static void test_streamed_write(void **state) {
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint16_t b[3] = {0x3f80, 0x4000, 0xc000};
    SafetensorsEntry entries[] = {{"a", {DTYPE_F32, 2, {2, 3}, a}}, {"b", {DTYPE_BF16, 1, {3}, b}}};
    const char *metadata[] = {"format", "pt"};
    const char *dir = make_temp_dir("st-stream");
    char whole[1100], streamed[1100];
    Error err;
    snprintf(whole, sizeof whole, "%s/whole.safetensors", dir);
    snprintf(streamed, sizeof streamed, "%s/streamed.safetensors", dir);
    assert_true(safetensors_write(whole, entries, 2, metadata, 1, &err));
    assert_true(safetensors_write_streamed(streamed, entries, 2, metadata, 1, fill_from_entries, entries, &err));
    char *x, *y;
    size_t nx, ny;
    assert_true(read_file(whole, &x, &nx, &err) && read_file(streamed, &y, &ny, &err));
    assert_int_equal(nx, ny);
    assert_memory_equal(x, y, nx);
    free(x);
    free(y);
}

// A tensor read through the mapping and released leaves the resident set.
static void test_release_mapped_pages(void **state) {
    enum { N = 16 << 20 }; // 64 MiB of F32
    float *data = malloc(N * sizeof(float));
    assert_non_null(data);
    for (size_t i = 0; i < N; i++) data[i] = (float)(i % 1000);
    SafetensorsEntry entry = {"big", {DTYPE_F32, 1, {N}, data}};
    char path[1100];
    Error err;
    snprintf(path, sizeof path, "%s/big.safetensors", make_temp_dir("st-release"));
    assert_true(safetensors_write(path, &entry, 1, NULL, 0, &err));
    free(data);
    SafetensorsFile *file = safetensors_open(path, &err);
    assert_non_null(file);
    Tensor view;
    assert_true(safetensors_get(file, "big", &view, &err));
    double before = resident_bytes(), sum = 0;
    for (size_t i = 0; i < N; i++) sum += ((const float *)view.data)[i];
    double touched = resident_bytes();
    safetensors_release(&view);
    double released = resident_bytes();
    print_message("resident: %.0f MiB, reading the tensor %.0f MiB, released %.0f MiB (sum %.0f)\n", before / 1048576,
                  touched / 1048576, released / 1048576, sum);
    assert_true(touched - before > 48.0 * 1048576);
    assert_true(touched - released > 48.0 * 1048576);
    assert_true(((const float *)view.data)[12345] == 345.0f); // read again from the file
    safetensors_close(file);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reads_python_file),
        cmocka_unit_test(test_streamed_write),
        cmocka_unit_test(test_release_mapped_pages),
        cmocka_unit_test(test_writer_round_trip),
        cmocka_unit_test(test_python_reads_our_file),
        cmocka_unit_test(test_rejects_bad_offsets),
        cmocka_unit_test(test_rejects_bad_shapes_and_dtypes),
        cmocka_unit_test(test_rejects_bad_headers),
        cmocka_unit_test(test_rejects_every_truncation),
        cmocka_unit_test(test_write_reports_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
