// Durable file writes: write(2) in chunks, fsync, re-read and verify. Every
// write goes through one hook so tests can make the Nth write fail (ENOSPC,
// EIO) exactly as a full or broken disk would, and every write, fsync,
// rename and removal through another that can make it fail or SIGKILL the
// process there.
#include "checkpoints_internal.h"
#include "checkpoints_testing.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WRITE_CHUNK_BYTES (1u << 20)

static int writes_until_failure; // 0 = no failure injected
static int injected_errno;

void checkpoint_inject_write_failure(int nth_write, int errno_value) {
    writes_until_failure = nth_write > 0 ? nth_write : 0;
    injected_errno = errno_value;
}

static int operations_until_fault; // 0 = no fault injected
static int fault_errno;            // 0: SIGKILL

void checkpoint_inject_fault(int nth_operation, int errno_value) {
    operations_until_fault = nth_operation > 0 ? nth_operation : 0;
    fault_errno = errno_value;
}

// False (errno set) when the injected fault is this operation's failure.
static bool fault_point(void) {
    if (operations_until_fault == 0 || --operations_until_fault > 0) return true;
    if (fault_errno == 0) raise(SIGKILL);
    errno = fault_errno;
    return false;
}

static ssize_t write_chunk(int fd, const uint8_t *data, size_t bytes) {
    if (!fault_point()) return -1;
    if (writes_until_failure > 0 && --writes_until_failure == 0) {
        errno = injected_errno;
        return -1;
    }
    return write(fd, data, bytes);
}

static bool write_fully(int fd, const FileImage *image) {
    for (size_t done = 0; done < image->size;) {
        size_t chunk = image->size - done < WRITE_CHUNK_BYTES ? image->size - done : WRITE_CHUNK_BYTES;
        ssize_t n = write_chunk(fd, image->bytes + done, chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (n == 0) errno = EIO;
            return false;
        }
        done += (size_t)n;
    }
    return true;
}

void file_image_free(FileImage *image) {
    free(image->bytes);
    *image = (FileImage){0};
}

bool json_to_text(const char *name, json_object *obj, FileImage *image, Error *err) {
    int flags = JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE;
    const char *text = obj ? json_object_to_json_string_ext(obj, flags) : NULL;
    if (!text) return fail(err, "%s: out of memory serialising JSON", name);
    size_t length = strlen(text);
    image->bytes = checked_malloc(length + 1, name, err);
    if (!image->bytes) return false;
    memcpy(image->bytes, text, length);
    image->bytes[length] = '\n';
    image->size = length + 1;
    return true;
}

bool write_file_durable(const char *path, const FileImage *image, Error *err) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return fail(err, "%s: %s", path, strerror(errno));
    bool ok = write_fully(fd, image) && fault_point() && fsync(fd) == 0;
    int saved_errno = errno;
    if (ok) {
        // Advisory: drop the cached pages so verify_file reads what the disk holds.
        (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    }
    bool closed = close(fd) == 0;
    if (ok && !closed) saved_errno = errno;
    if (ok && closed) return true;
    unlink(path);
    return fail(err, "%s: write failed: %s", path, strerror(saved_errno));
}

bool sync_dir(const char *dir, Error *err) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return fail(err, "%s: %s", dir, strerror(errno));
    bool ok = fault_point() && fsync(fd) == 0;
    int saved_errno = errno;
    close(fd);
    if (!ok) return fail(err, "%s: fsync of the directory failed: %s", dir, strerror(saved_errno));
    return true;
}

bool verify_file(const char *path, uint64_t size, uint64_t checksum, Error *err) {
    char *data;
    size_t found_size;
    if (!read_file(path, &data, &found_size, err)) return false;
    uint64_t found_checksum = fnv1a64(data, found_size, FNV1A64_INIT);
    free(data);
    if (found_size != size)
        return fail(err, "%s: %zu bytes on disk, %llu expected (truncated or overwritten)", path, found_size,
                    (unsigned long long)size);
    if (found_checksum != checksum)
        return fail(err, "%s: checksum %016llx on disk, %016llx expected (corrupted)", path,
                    (unsigned long long)found_checksum, (unsigned long long)checksum);
    return true;
}

bool rename_path(const char *from, const char *to, Error *err) {
    if (!fault_point() || rename(from, to) != 0) return fail(err, "renaming %s to %s: %s", from, to, strerror(errno));
    return true;
}

static int remove_entry(const char *path, const struct stat *info, int type, struct FTW *ftw) {
    (void)info, (void)type, (void)ftw;
    return fault_point() ? remove(path) : -1;
}

bool remove_folder(const char *path, Error *err) {
    if (!path_exists(path)) return true;
    if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) return fail(err, "removing %s: %s", path, strerror(errno));
    return true;
}
