// Writing an uncompressed ustar archive through libarchive (the demo packs its
// pictures in one; ImageStore reads them back in place).
#include <archive.h>
#include <archive_entry.h>
#include <stdio.h>
#include <stdlib.h>

#include "data.h"

struct TarWriter {
    struct archive *archive;
    char path[1024];
};

TarWriter *tar_writer_open(const char *path, Error *err) {
    TarWriter *writer = checked_calloc(1, sizeof *writer, path, err);
    if (!writer) return NULL;
    snprintf(writer->path, sizeof writer->path, "%s", path);
    writer->archive = archive_write_new();
    if (writer->archive && archive_write_set_format_ustar(writer->archive) == ARCHIVE_OK &&
        archive_write_open_filename(writer->archive, path) == ARCHIVE_OK)
        return writer;
    fail(err, "%s: cannot create the tar archive: %s", path,
         writer->archive ? archive_error_string(writer->archive) : "out of memory");
    if (writer->archive) archive_write_free(writer->archive);
    free(writer);
    return NULL;
}

bool tar_writer_add(TarWriter *writer, const char *name, const uint8_t *data, size_t size, Error *err) {
    struct archive_entry *entry = archive_entry_new();
    if (!entry) return fail(err, "%s: out of memory adding %s", writer->path, name);
    archive_entry_set_pathname(entry, name);
    archive_entry_set_size(entry, (la_int64_t)size);
    archive_entry_set_filetype(entry, AE_IFREG);
    archive_entry_set_perm(entry, 0644);
    bool ok = archive_write_header(writer->archive, entry) == ARCHIVE_OK &&
              archive_write_data(writer->archive, data, size) == (la_ssize_t)size;
    archive_entry_free(entry);
    return ok || fail(err, "%s: writing %s: %s", writer->path, name, archive_error_string(writer->archive));
}

bool tar_writer_close(TarWriter *writer, Error *err) {
    bool ok = archive_write_close(writer->archive) == ARCHIVE_OK;
    if (!ok) fail(err, "%s: closing the tar archive: %s", writer->path, archive_error_string(writer->archive));
    archive_write_free(writer->archive);
    free(writer);
    return ok;
}
