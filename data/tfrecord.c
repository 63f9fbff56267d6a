// TFRecord files, read through a read-only mapping. Record layout (little-endian):
//   uint64 length | uint32 masked_crc32c(length bytes) | data[length] | uint32 masked_crc32c(data)
// A bad length CRC leaves nothing after it framable; a bad data CRC only
// spoils that record, the next one starts right after it.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rlds.h"

#define TFRECORD_HEADER_BYTES 12 // length + its CRC
#define TFRECORD_FOOTER_BYTES 4  // the data's CRC

struct TfRecordReader {
    char *path;
    const uint8_t *map; // (size,) NULL for an empty file
    size_t size;
    size_t next_offset;  // where the next record starts
    int64_t next_index;  // its index
    int64_t last_index;  // of the record last framed
    int64_t last_offset;
};

static uint32_t read_u32_le(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t read_u64_le(const uint8_t *p) { return (uint64_t)read_u32_le(p) | (uint64_t)read_u32_le(p + 4) << 32; }

TfRecordReader *tfrecord_open(const char *path, Error *err) {
    TfRecordReader *reader = checked_calloc(1, sizeof *reader, "TFRecord reader", err);
    if (!reader) return NULL;
    reader->path = checked_strdup(path, err);
    int fd = reader->path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    struct stat st;
    bool ok = fd >= 0 && fstat(fd, &st) == 0;
    if (reader->path && !ok) fail(err, "%s: %s", path, strerror(errno));
    if (ok && st.st_size > 0) {
        void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        ok = map != MAP_FAILED;
        if (ok) reader->map = map, reader->size = (size_t)st.st_size;
        else fail(err, "%s: mmap: %s", path, strerror(errno));
    }
    if (fd >= 0) close(fd);
    reader->last_index = reader->last_offset = -1;
    if (!ok) {
        tfrecord_close(reader);
        return NULL;
    }
    return reader;
}

void tfrecord_close(TfRecordReader *reader) {
    if (!reader) return;
    if (reader->map) munmap((void *)reader->map, reader->size);
    free(reader->path);
    free(reader);
}

// Frames the record at offset: TFRECORD_OK with its data and the offset past
// it, else why not (err names file, record and offset).
static TfRecordStatus frame_record(const TfRecordReader *reader, size_t offset, int64_t index, const uint8_t **data,
                                   size_t *size, size_t *end, Error *err) {
    size_t left = reader->size - offset;
    if (left < TFRECORD_HEADER_BYTES) {
        fail(err, "%s: record %lld at byte %zu: file ends inside the record's header (%zu of 12 bytes)",
             reader->path, (long long)index, offset, left);
        return TFRECORD_BROKEN;
    }
    const uint8_t *p = reader->map + offset;
    uint64_t length = read_u64_le(p);
    uint32_t stored = read_u32_le(p + 8), computed = crc32c_masked(p, 8);
    if (stored != computed) {
        fail(err, "%s: record %lld at byte %zu: length CRC mismatch (stored 0x%08x, computed 0x%08x)", reader->path,
             (long long)index, offset, stored, computed);
        return TFRECORD_BROKEN;
    }
    if (length > left - TFRECORD_HEADER_BYTES || left - TFRECORD_HEADER_BYTES - length < TFRECORD_FOOTER_BYTES) {
        fail(err, "%s: record %lld at byte %zu: truncated: %llu data bytes + CRC announced, %zu left in the file",
             reader->path, (long long)index, offset, (unsigned long long)length, left - TFRECORD_HEADER_BYTES);
        return TFRECORD_BROKEN;
    }
    *data = p + TFRECORD_HEADER_BYTES;
    *size = (size_t)length;
    *end = offset + TFRECORD_HEADER_BYTES + (size_t)length + TFRECORD_FOOTER_BYTES;
    stored = read_u32_le(*data + length);
    computed = crc32c_masked(*data, (size_t)length);
    if (stored != computed) {
        fail(err, "%s: record %lld at byte %zu: data CRC mismatch (stored 0x%08x, computed 0x%08x)", reader->path,
             (long long)index, offset, stored, computed);
        return TFRECORD_BAD_CRC;
    }
    return TFRECORD_OK;
}

TfRecordStatus tfrecord_next(TfRecordReader *reader, const uint8_t **data, size_t *size, Error *err) {
    if (reader->next_offset == reader->size) return TFRECORD_END;
    size_t end = reader->size;
    reader->last_index = reader->next_index;
    reader->last_offset = (int64_t)reader->next_offset;
    TfRecordStatus status = frame_record(reader, reader->next_offset, reader->next_index, data, size, &end, err);
    reader->next_offset = end; // BROKEN: the rest of the file is given up
    reader->next_index++;
    return status;
}

int64_t tfrecord_last_index(const TfRecordReader *reader) { return reader->last_index; }
int64_t tfrecord_last_offset(const TfRecordReader *reader) { return reader->last_offset; }
const char *tfrecord_path(const TfRecordReader *reader) { return reader->path; }

bool tfrecord_read_at(const TfRecordReader *reader, int64_t offset, int64_t index, const uint8_t **data, size_t *size,
                      Error *err) {
    if (offset < 0 || (uint64_t)offset >= reader->size)
        return fail(err, "%s: record %lld: no record at byte %lld (file of %zu bytes)", reader->path, (long long)index,
                    (long long)offset, reader->size);
    size_t end;
    return frame_record(reader, (size_t)offset, index, data, size, &end, err) == TFRECORD_OK;
}
