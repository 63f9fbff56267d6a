// Image stores: the files an LLaVA record names ("coco/train2017/0001.jpg"),
// read from a folder or in place from a .tar, .tar.gz / .tgz or .zip archive.
//
// An archive is indexed in one sequential pass through libarchive into a
// table of (member name -> offset, size), sorted for binary search:
//   - uncompressed tar: the offset is where the member's bytes lie in the
//     archive file itself (libarchive's position in the stream after the
//     header); reads are one pread, nothing is copied at index time.
//   - zip: each member is decompressed once; a stored member whose bytes lie
//     verbatim at its stream position is read in place like tar.
//   - everything else (.tar.gz, deflated zip members): gzip and deflate have
//     no random access, so the index pass decompresses each member once into
//     an anonymous in-memory file (memfd, swappable, never a file on disk)
//     and reads come from there. Its size is the members' uncompressed bytes:
//     for large image sets an uncompressed tar is the format to use.
#include "data.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct StoreEntry {
    char *name;
    int64_t offset;  // in the archive file, or in the spool when spooled
    int64_t size;
    int64_t order;   // position in the archive: the last of duplicate names wins, as tar extraction
    bool spooled;
} StoreEntry;

struct ImageStore {
    char *path;
    bool is_folder;
    int archive_fd;   // -1 for a folder
    int spool_fd;     // memfd of decompressed members, -1 until needed
    int64_t spool_size;
    StoreEntry *entries;
    int64_t n_entries, capacity;
};

// ----------------------------------------------------------------------------
// names

// Member names as records spell them: "./a/b.jpg" -> "a/b.jpg".
static const char *normalized_name(const char *name) {
    while (name[0] == '.' && name[1] == '/') name += 2;
    while (name[0] == '/') name++;
    return name;
}

// A record's image name may not leave the folder: no absolute path, no "..".
static bool is_safe_relative(const char *name) {
    if (name[0] == '\0' || name[0] == '/') return false;
    for (const char *part = name; part; part = strchr(part, '/')) {
        if (part[0] == '/') part++;
        if (strncmp(part, "..", 2) == 0 && (part[2] == '/' || part[2] == '\0')) return false;
    }
    return true;
}

// ----------------------------------------------------------------------------
// the index

static bool add_entry(ImageStore *store, const char *name, int64_t offset, int64_t size, bool spooled,
                      Error *err) {
    if (store->n_entries == store->capacity) {
        int64_t capacity = store->capacity ? 2 * store->capacity : 1024;
        StoreEntry *bigger = realloc(store->entries, (size_t)capacity * sizeof *bigger);
        if (!bigger) return fail(err, "%s: out of memory indexing %lld members", store->path, (long long)capacity);
        store->entries = bigger;
        store->capacity = capacity;
    }
    char *copy = checked_strdup(normalized_name(name), err);
    if (!copy) return false;
    store->entries[store->n_entries] = (StoreEntry){.name = copy, .offset = offset, .size = size,
                                                    .order = store->n_entries, .spooled = spooled};
    store->n_entries++;
    return true;
}

static int compare_entries(const void *a, const void *b) {
    const StoreEntry *x = a, *y = b;
    int by_name = strcmp(x->name, y->name);
    if (by_name) return by_name;
    return (x->order > y->order) - (x->order < y->order);
}

// Sorts by name and keeps the last of each run of equal names.
static void sort_and_dedupe(ImageStore *store) {
    if (store->n_entries == 0) return; // entries is NULL: qsort's argument must not be
    qsort(store->entries, (size_t)store->n_entries, sizeof *store->entries, compare_entries);
    int64_t kept = 0;
    for (int64_t i = 0; i < store->n_entries; i++) {
        bool last_of_run = i + 1 == store->n_entries || strcmp(store->entries[i].name, store->entries[i + 1].name);
        if (last_of_run) store->entries[kept++] = store->entries[i];
        else free(store->entries[i].name);
    }
    store->n_entries = kept;
}

static const StoreEntry *find_entry(const ImageStore *store, const char *name) {
    StoreEntry key = {.name = (char *)normalized_name(name), .order = -1};
    int64_t lo = 0, hi = store->n_entries;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (strcmp(store->entries[mid].name, key.name) < 0) lo = mid + 1;
        else hi = mid;
    }
    if (lo < store->n_entries && strcmp(store->entries[lo].name, key.name) == 0) return &store->entries[lo];
    return NULL;
}

// ----------------------------------------------------------------------------
// reading members at index time

static bool write_all(int fd, const uint8_t *data, size_t size, Error *err) {
    while (size > 0) {
        ssize_t written = write(fd, data, size);
        if (written < 0 && errno == EINTR) continue;
        if (written < 0) return fail(err, "writing the decompression spool: %s", strerror(errno));
        data += written;
        size -= (size_t)written;
    }
    return true;
}

static bool pread_all(int fd, uint8_t *data, size_t size, int64_t offset, Error *err) {
    while (size > 0) {
        ssize_t got = pread(fd, data, size, (off_t)offset);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return fail(err, "read: %s", strerror(errno));
        if (got == 0) return fail(err, "unexpected end of file at byte %lld", (long long)offset);
        data += got;
        size -= (size_t)got;
        offset += got;
    }
    return true;
}

// The member's whole data, decompressed by libarchive, into a malloc'd buffer.
// The buffer grows with the data that arrives (doubling from 1 MiB up to the
// declared size): a header that lies about the size cannot force a huge allocation.
static bool read_member(struct archive *a, const char *name, int64_t size, uint8_t **data, Error *err) {
    int64_t capacity = size < (1 << 20) ? size : (1 << 20), done = 0;
    *data = checked_malloc(capacity > 0 ? (size_t)capacity : 1, "an archive member", err);
    while (*data && done < size) {
        if (done == capacity) {
            capacity = capacity > size / 2 ? size : 2 * capacity;
            uint8_t *bigger = realloc(*data, (size_t)capacity);
            if (!bigger) {
                fail(err, "member %s: out of memory for %lld bytes", name, (long long)capacity);
                break;
            }
            *data = bigger;
        }
        la_ssize_t got = archive_read_data(a, *data + done, (size_t)(capacity - done));
        if (got <= 0) {
            fail(err, "member %s: %s", name, got < 0 ? archive_error_string(a) : "data ends early");
            break;
        }
        done += got;
    }
    if (*data && done == size) return true;
    free(*data);
    *data = NULL;
    return false;
}

// True when the member's bytes lie verbatim at offset in the archive file.
static bool lies_in_place(const ImageStore *store, const uint8_t *data, int64_t size, int64_t offset) {
    uint8_t *raw = malloc(size > 0 ? (size_t)size : 1);
    Error ignored;
    bool same = raw && pread_all(store->archive_fd, raw, (size_t)size, offset, &ignored) &&
                memcmp(raw, data, (size_t)size) == 0;
    free(raw);
    return same;
}

static bool spool_member(ImageStore *store, const char *name, const uint8_t *data, int64_t size, Error *err) {
    if (store->spool_fd < 0) {
        store->spool_fd = memfd_create("lora-train-images", MFD_CLOEXEC);
        if (store->spool_fd < 0) return fail(err, "memfd_create: %s", strerror(errno));
    }
    if (!write_all(store->spool_fd, data, (size_t)size, err)) return false;
    bool ok = add_entry(store, name, store->spool_size, size, true, err);
    store->spool_size += size;
    return ok;
}

// One regular member: in place for uncompressed tar (skipped, not read), read
// and compared or spooled otherwise.
static bool index_member(ImageStore *store, struct archive *a, struct archive_entry *entry, Error *err) {
    const char *name = archive_entry_pathname(entry);
    if (!name || !archive_entry_size_is_set(entry)) return fail(err, "a member without a name or size");
    int64_t size = archive_entry_size(entry);
    if (size < 0) return fail(err, "member %s: negative size %lld", name, (long long)size);
    int64_t offset = archive_filter_bytes(a, 0); // position of the member's data in the uncompressed stream
    bool uncompressed = archive_filter_code(a, 0) == ARCHIVE_FILTER_NONE;
    bool is_tar = (archive_format(a) & ARCHIVE_FORMAT_BASE_MASK) == ARCHIVE_FORMAT_TAR;
    if (uncompressed && is_tar) {
        if (archive_read_data_skip(a) != ARCHIVE_OK) return fail(err, "member %s: %s", name, archive_error_string(a));
        return add_entry(store, name, offset, size, false, err);
    }
    uint8_t *data = NULL;
    if (!read_member(a, name, size, &data, err)) return false;
    bool ok = uncompressed && lies_in_place(store, data, size, offset)
                  ? add_entry(store, name, offset, size, false, err)
                  : spool_member(store, name, data, size, err);
    free(data);
    return ok;
}

static bool index_archive(ImageStore *store, Error *err) {
    struct archive *a = archive_read_new();
    if (!a) return fail(err, "%s: out of memory for libarchive", store->path);
    bool ok = archive_read_support_filter_all(a) == ARCHIVE_OK && archive_read_support_format_tar(a) == ARCHIVE_OK &&
              archive_read_support_format_zip(a) == ARCHIVE_OK;
    if (ok && archive_read_open_filename(a, store->path, 1 << 16) != ARCHIVE_OK) ok = false;
    if (!ok) fail(err, "%s: %s", store->path, archive_error_string(a));
    struct archive_entry *entry;
    int status;
    while (ok && (status = archive_read_next_header(a, &entry)) != ARCHIVE_EOF) {
        if (status != ARCHIVE_OK && status != ARCHIVE_WARN) {
            ok = fail(err, "%s: %s", store->path, archive_error_string(a));
        } else if (archive_entry_filetype(entry) == AE_IFREG) {
            ok = index_member(store, a, entry, err);
            if (!ok) fail_context(err, "%s: ", store->path);
        }
    }
    archive_read_free(a);
    return ok;
}

// ----------------------------------------------------------------------------
// public

static bool is_directory(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

ImageStore *image_store_open(const char *path, Error *err) {
    ImageStore *store = checked_calloc(1, sizeof *store, "an image store", err);
    if (!store) return NULL;
    store->archive_fd = -1;
    store->spool_fd = -1;
    store->path = checked_strdup(path, err);
    bool ok = store->path != NULL;
    if (ok && is_directory(path)) {
        store->is_folder = true;
    } else if (ok) {
        store->archive_fd = open(path, O_RDONLY | O_CLOEXEC);
        ok = store->archive_fd >= 0 ? index_archive(store, err) : fail(err, "%s: %s", path, strerror(errno));
        if (ok) sort_and_dedupe(store);
    }
    if (!ok) {
        image_store_destroy(store);
        return NULL;
    }
    return store;
}

void image_store_destroy(ImageStore *store) {
    if (!store) return;
    for (int64_t i = 0; i < store->n_entries; i++) free(store->entries[i].name);
    free(store->entries);
    if (store->archive_fd >= 0) close(store->archive_fd);
    if (store->spool_fd >= 0) close(store->spool_fd);
    free(store->path);
    free(store);
}

int64_t image_store_count(const ImageStore *store) { return store->n_entries; }
int64_t image_store_spooled_bytes(const ImageStore *store) { return store->spool_size; }

static bool folder_path(const ImageStore *store, const char *name, char *path, size_t path_size, Error *err) {
    if (!is_safe_relative(name)) return fail(err, "image '%s': not a relative path inside %s", name, store->path);
    if ((size_t)snprintf(path, path_size, "%s/%s", store->path, name) >= path_size)
        return fail(err, "image '%s': path too long", name);
    return true;
}

bool image_store_has(const ImageStore *store, const char *name) {
    if (!store->is_folder) return find_entry(store, name) != NULL;
    char path[4096];
    Error ignored;
    struct stat st;
    return folder_path(store, name, path, sizeof path, &ignored) && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

bool image_store_read(const ImageStore *store, const char *name, uint8_t **data, size_t *size, Error *err) {
    *data = NULL;
    *size = 0;
    if (store->is_folder) {
        char path[4096];
        return folder_path(store, name, path, sizeof path, err) && read_file(path, (char **)data, size, err);
    }
    const StoreEntry *entry = find_entry(store, name);
    if (!entry) return fail(err, "%s: no member '%s'", store->path, name);
    uint8_t *bytes = checked_malloc(entry->size > 0 ? (size_t)entry->size : 1, "an image", err);
    if (!bytes) return false;
    int fd = entry->spooled ? store->spool_fd : store->archive_fd;
    if (!pread_all(fd, bytes, (size_t)entry->size, entry->offset, err)) {
        free(bytes);
        return fail_context(err, "%s: member '%s': ", store->path, name);
    }
    *data = bytes;
    *size = (size_t)entry->size;
    return true;
}
