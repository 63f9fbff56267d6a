// Images/s on one core: decode (PNG/JPEG from memory) + CLIP-336 preprocessing
// (shortest-edge bicubic resize, center crop, normalize to float32 CHW) of the
// photos fixtures. Compare with scripts/bench_images_pillow.py (Pillow + numpy).
// usage: bench_images [photos_dir] [seconds]   (run from the repo root)
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vision/vision.h"

#define MAX_PHOTOS 64

typedef struct Photo {
    char path[1024];
    char *data;
    size_t size;
} Photo;

static int load_photos(const char *dir_path, Photo *photos, Error *err) {
    DIR *dir = opendir(dir_path);
    if (dir == NULL) {
        fail(err, "cannot open %s", dir_path);
        return -1;
    }
    int count = 0;
    for (struct dirent *e; (e = readdir(dir)) != NULL && count < MAX_PHOTOS;) {
        if (e->d_name[0] == '.') continue;
        Photo *p = &photos[count];
        snprintf(p->path, sizeof(p->path), "%s/%s", dir_path, e->d_name);
        if (!read_file(p->path, &p->data, &p->size, err)) {
            closedir(dir);
            return -1;
        }
        count++;
    }
    closedir(dir);
    return count;
}

// Decodes (and preprocesses when out is not NULL) every photo once.
static bool run_pass(const Photo *photos, int count, float *out, Error *err) {
    ImagePreprocess clip = image_preprocess_clip336(IMAGE_FIT_CROP);
    for (int i = 0; i < count; i++) {
        Image image;
        if (!image_decode_memory(photos[i].data, photos[i].size, photos[i].path, &image, err)) {
            return false;
        }
        bool ok = out == NULL || image_preprocess(&image, &clip, out, err);
        image_free(&image);
        if (!ok) return false;
    }
    return true;
}

// Repeats passes for at least `seconds`; returns images per second.
static double measure(const Photo *photos, int count, float *out, double seconds, Error *err) {
    if (!run_pass(photos, count, out, err)) return -1.0; // warm-up
    long images = 0;
    double start = time_seconds(), elapsed = 0.0;
    while (elapsed < seconds) {
        if (!run_pass(photos, count, out, err)) return -1.0;
        images += count;
        elapsed = time_seconds() - start;
    }
    return images / elapsed;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "../shared/fixtures/images/photos";
    double seconds = argc > 2 ? atof(argv[2]) : 3.0;
    Photo photos[MAX_PHOTOS] = {0};
    Error err = {0};
    int count = load_photos(dir, photos, &err);
    float *out = malloc(sizeof(float) * 3 * 336 * 336);
    if (count <= 0 || out == NULL) {
        fprintf(stderr, "bench_images: %s\n", count == 0 ? "no photos found" : err.message);
        return 1;
    }
    double decode = measure(photos, count, NULL, seconds, &err);
    double total = decode < 0 ? -1.0 : measure(photos, count, out, seconds, &err);
    if (total < 0) {
        fprintf(stderr, "bench_images: %s\n", err.message);
        return 1;
    }
    printf("bench_images: %d photos from %s, one core\n", count, dir);
    printf("decode only:                     %8.1f images/s\n", decode);
    printf("decode + CLIP-336 preprocess:    %8.1f images/s\n", total);
    for (int i = 0; i < count; i++) free(photos[i].data);
    free(out);
    return 0;
}
