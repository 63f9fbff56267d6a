// Shared by the libFuzzer harnesses: most parsers under test read files, so
// each input is written to one temporary file per process and parsed there.
#pragma once
#include <stddef.h>
#include <stdint.h>

// Path of a file holding exactly data[0..size); suffix picks the name's
// extension (".tar" ...). The same path is rewritten on every call.
const char *fuzz_write_temp(const uint8_t *data, size_t size, const char *suffix);
