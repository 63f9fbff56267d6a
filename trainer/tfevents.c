// TensorBoard event files, as tf.summary writes them: a TFRecord file of
// Event protobufs (tensorflow/core/util/event.proto). Only these fields are
// written, so the protobuf encoding is done by hand:
//   Event       { double wall_time = 1; int64 step = 2; string file_version = 3;
//                 Summary summary = 5; SessionLog session_log = 7; }
//   Summary     { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
//   SessionLog  { SessionStatus status = 1; }   START = 1
// TFRecord: uint64 length, uint32 masked CRC-32C of the length bytes, the
// data, uint32 masked CRC-32C of the data; integers little-endian.
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "metrics.h"

#define EVENT_MAX 512
#define TAG_MAX 128

struct EventWriter {
    FILE *file;
    char path[1200];
};

// ----------------------------------------------------------------------------
// protobuf encoding of the few fields above

typedef struct Proto {
    uint8_t bytes[EVENT_MAX];
    size_t size;
} Proto;

static void put_byte(Proto *p, uint8_t byte) { p->bytes[p->size++] = byte; }

static void put_varint(Proto *p, uint64_t value) {
    for (; value >= 0x80; value >>= 7) put_byte(p, (uint8_t)(value | 0x80));
    put_byte(p, (uint8_t)value);
}

static void put_fixed(Proto *p, const void *value, size_t size) { // little-endian hosts (x86-64, aarch64)
    memcpy(p->bytes + p->size, value, size);
    p->size += size;
}

// A length-delimited field (field number << 3 | 2).
static void put_bytes(Proto *p, int field, const void *data, size_t size) {
    put_varint(p, (uint64_t)field << 3 | 2);
    put_varint(p, size);
    put_fixed(p, data, size);
}

// Event header: wall_time (now) and step.
static void put_event_head(Proto *p, int64_t step) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    double wall_time = (double)now.tv_sec + now.tv_nsec * 1e-9;
    put_byte(p, 1 << 3 | 1);
    put_fixed(p, &wall_time, sizeof wall_time);
    put_byte(p, 2 << 3 | 0);
    put_varint(p, (uint64_t)step);
}

// ----------------------------------------------------------------------------
// records

static bool write_record(EventWriter *writer, const Proto *event, Error *err) {
    uint64_t length = event->size;
    uint32_t length_crc = crc32c_masked(&length, sizeof length), data_crc = crc32c_masked(event->bytes, event->size);
    if (fwrite(&length, sizeof length, 1, writer->file) != 1 || fwrite(&length_crc, sizeof length_crc, 1, writer->file) != 1 ||
        fwrite(event->bytes, 1, event->size, writer->file) != event->size ||
        fwrite(&data_crc, sizeof data_crc, 1, writer->file) != 1)
        return fail(err, "%s: writing failed: %s", writer->path, strerror(errno));
    return true;
}

bool event_writer_scalar(EventWriter *writer, const char *tag, int64_t step, double value, Error *err) {
    size_t tag_size = strlen(tag);
    if (tag_size > TAG_MAX) return fail(err, "%s: the tag '%s' is longer than %d bytes", writer->path, tag, TAG_MAX);
    Proto item = {0}, summary = {0}, event = {0};
    float simple_value = (float)value;
    put_bytes(&item, 1, tag, tag_size);
    put_byte(&item, 2 << 3 | 5);
    put_fixed(&item, &simple_value, sizeof simple_value);
    put_bytes(&summary, 1, item.bytes, item.size);
    put_event_head(&event, step);
    put_bytes(&event, 5, summary.bytes, summary.size);
    return write_record(writer, &event, err);
}

static bool write_file_version(EventWriter *writer, Error *err) {
    static const char version[] = "brain.Event:2";
    Proto event = {0};
    put_event_head(&event, 0);
    put_bytes(&event, 3, version, strlen(version));
    return write_record(writer, &event, err);
}

static bool write_session_start(EventWriter *writer, int64_t step, Error *err) {
    Proto event = {0};
    uint8_t session_log[] = {1 << 3 | 0, 1}; // status: START
    put_event_head(&event, step);
    put_bytes(&event, 7, session_log, sizeof session_log);
    return write_record(writer, &event, err);
}

// The file name's last field, as TensorFlow's global uid: files opened in the same second by one process differ.
static int files_opened;

EventWriter *event_writer_open(const char *run_dir, int start_step, Error *err) {
    EventWriter *writer = checked_calloc(1, sizeof *writer, "a TensorBoard event writer", err);
    if (!writer) return NULL;
    char host[64] = "localhost";
    gethostname(host, sizeof host - 1);
    snprintf(writer->path, sizeof writer->path, "%s/events.out.tfevents.%lld.%s.%d.%d", run_dir, (long long)time(NULL),
             host, (int)getpid(), files_opened++);
    writer->file = fopen(writer->path, "wb");
    bool ok = writer->file || fail(err, "%s: %s", writer->path, strerror(errno));
    ok = ok && write_file_version(writer, err) && write_session_start(writer, start_step + 1, err) &&
         event_writer_flush(writer, err);
    if (ok) return writer;
    event_writer_close(writer, &(Error){{0}});
    return NULL;
}

bool event_writer_flush(EventWriter *writer, Error *err) {
    if (fflush(writer->file) != 0) return fail(err, "%s: writing failed: %s", writer->path, strerror(errno));
    return true;
}

bool event_writer_close(EventWriter *writer, Error *err) {
    if (!writer) return true;
    bool ok = !writer->file || fclose(writer->file) == 0 || fail(err, "%s: closing failed: %s", writer->path, strerror(errno));
    free(writer);
    return ok;
}
