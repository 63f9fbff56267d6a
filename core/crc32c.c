// CRC-32C (Castagnoli, reflected polynomial 0x82f63b78) and TFRecord's mask
// of it, shared by the event files the trainer writes and the TFRecord files
// data/ reads.
#include "core.h"

static uint32_t crc_table[256];

static void crc_table_fill(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t crc = i;
        for (int bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >> 1) ^ 0x82f63b78u : crc >> 1;
        crc_table[i] = crc;
    }
}

uint32_t crc32c(const void *data, size_t size) {
    if (crc_table[1] == 0) crc_table_fill();
    const uint8_t *bytes = data;
    uint32_t crc = 0xffffffffu;
    for (size_t i = 0; i < size; i++) crc = crc_table[(crc ^ bytes[i]) & 0xff] ^ (crc >> 8);
    return crc ^ 0xffffffffu;
}

uint32_t crc32c_masked(const void *data, size_t size) {
    uint32_t crc = crc32c(data, size);
    return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}
