// `lora-train doctor [--config FILE]`: one screen on the environment a run
// depends on (GPUs, driver and CUDA runtime against the build, NCCL, the
// locked-memory limit, /dev/shm, free disk where checkpoints go, cores,
// memory). Each line says what it means for a run and what to do when wrong.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "parallel/parallel.h"
#include "train_private.h"

#define GIB (1024.0 * 1024.0 * 1024.0)
#define SHM_NEEDED_BYTES ((uint64_t)1 << 30) // NCCL's intra-node buffers; Docker's default is 64 MiB

typedef enum { CHECK_OK, CHECK_NOTE, CHECK_WARN } Verdict;

static void report(Verdict verdict, const char *what, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void report(Verdict verdict, const char *what, const char *fmt, ...) {
    static const char *const marks[] = {"[ ok ]", "[note]", "[warn]"};
    printf("%s %-13s ", marks[verdict], what);
    va_list args;
    va_start(args, fmt);
    vprintf(fmt, args);
    va_end(args);
    printf("\n");
}

// "12.4" from CUDA's 12040.
static void cuda_version_text(int version, char *text, size_t size) {
    snprintf(text, size, "%d.%d", version / 1000, version % 1000 / 10);
}

// The kernel driver's version from /proc/driver/nvidia/version ("" when no driver is loaded).
static void kernel_driver_version(char *text, size_t size) {
    text[0] = '\0';
    FILE *f = fopen("/proc/driver/nvidia/version", "r");
    char line[512];
    if (!f) return;
    if (fgets(line, sizeof line, f)) {
        const char *module = strstr(line, "Kernel Module");
        if (module && sscanf(module + strlen("Kernel Module"), " %63s", text) != 1) text[0] = '\0';
    }
    fclose(f);
}

static void check_gpus(const CudaInfo *info) {
    char driver[64];
    kernel_driver_version(driver, sizeof driver);
    if (info->n_devices == 0) {
        report(CHECK_WARN, "GPUs", "no NVIDIA GPU found (%s%s%s%s): training uses the CPU backend, for tests and "
               "tiny models only; on a GPU machine check nvidia-smi and install the NVIDIA driver",
               driver[0] ? "kernel driver " : "no NVIDIA kernel driver loaded", driver, info->built ? "; " : "",
               info->built ? info->problem : "");
        return;
    }
    bool emulated = ops_cuda_is_emulated();
    for (int d = 0; d < info->n_devices; d++) {
        const CudaDeviceInfo *device = &info->devices[d];
        bool bf16 = device->major >= 8;
        report(!bf16 ? CHECK_WARN : emulated ? CHECK_NOTE : CHECK_OK, d == 0 ? "GPUs" : "",
               "%d: %s, %.1f GiB, compute capability %d.%d%s", d, device->name, device->total_bytes / GIB,
               device->major, device->minor,
               !bf16 ? ": bf16 needs 8.0 (Ampere) or newer; lora-train refuses this GPU"
               : emulated ? " (this build emulates CUDA on the CPU: train.backend auto uses the CPU backend)" : "");
    }
}

static void check_cuda_versions(const CudaInfo *info) {
    if (!info->built) {
        report(CHECK_NOTE, "CUDA", "this lora-train was built without CUDA (no nvcc at build time): CPU backend only; "
               "on a GPU machine install the CUDA toolkit and rebuild (cmake finds nvcc by itself)");
        return;
    }
    char built[16], runtime[16], driver[16];
    cuda_version_text(info->built_version, built, sizeof built);
    cuda_version_text(info->runtime_version, runtime, sizeof runtime);
    cuda_version_text(info->driver_version, driver, sizeof driver);
    if (info->driver_version == 0)
        report(CHECK_WARN, "CUDA", "built for CUDA %s, runtime %s, no NVIDIA driver: install the driver (any that "
               "supports CUDA %s or newer)", built, runtime, built);
    else if (info->driver_version < info->runtime_version)
        report(CHECK_WARN, "CUDA", "the driver supports CUDA up to %s, older than the runtime %s lora-train uses: "
               "update the NVIDIA driver, or rebuild with a CUDA toolkit of %s or older", driver, runtime, driver);
    else
        report(CHECK_OK, "CUDA", "built for %s, runtime %s, driver supports up to %s: they match", built, runtime,
               driver);
}

static void check_nccl(void) {
    int version = nccl_version();
    if (version == 0)
        report(CHECK_NOTE, "NCCL", "not built in: several ranks use the CPU collectives (sockets), for tests; GPU "
               "ranks need a build with CUDA and NCCL (libnccl-dev)");
    else
        report(CHECK_OK, "NCCL", "%d.%d.%d: collectives between GPUs and nodes", version / 10000, version % 10000 / 100,
               version % 100);
}

static void check_locked_memory(void) {
    struct rlimit limit;
    if (getrlimit(RLIMIT_MEMLOCK, &limit) != 0) {
        report(CHECK_NOTE, "locked memory", "unknown (getrlimit failed)");
    } else if (limit.rlim_cur == RLIM_INFINITY) {
        report(CHECK_OK, "locked memory", "unlimited: pinned host buffers (--offload cpu) can take what they need");
    } else {
        report(CHECK_NOTE, "locked memory", "limited to %.1f MiB (ulimit -l): if pinning the --offload cpu buffers "
               "fails, raise it (ulimit -l unlimited; Docker: --ulimit memlock=-1)", limit.rlim_cur / 1048576.0);
    }
}

static void check_shm(void) {
    struct statvfs fs;
    if (statvfs("/dev/shm", &fs) != 0) {
        report(CHECK_WARN, "/dev/shm", "missing: NCCL between the GPUs of a node needs it (Docker: --ipc=host)");
        return;
    }
    uint64_t size = (uint64_t)fs.f_blocks * fs.f_frsize;
    if (size < SHM_NEEDED_BYTES)
        report(CHECK_WARN, "/dev/shm", "%.0f MiB: NCCL between the GPUs of this node may fail with it; give it 1 GiB "
               "or more (Docker: --shm-size=16g or --ipc=host)", size / 1048576.0);
    else
        report(CHECK_OK, "/dev/shm", "%.1f GiB: enough for NCCL within a node", size / GIB);
}

// Free space where checkpoints go: checkpoint.dir, or its nearest existing parent.
static void check_disk(const char *checkpoint_dir) {
    char dir[CONFIG_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", checkpoint_dir);
    while (!path_exists(dir) && strrchr(dir, '/')) *strrchr(dir, '/') = '\0';
    if (!path_exists(dir)) snprintf(dir, sizeof dir, ".");
    uint64_t free_bytes = 0;
    Error err;
    if (!disk_free_bytes(dir, &free_bytes, &err)) {
        report(CHECK_WARN, "disk", "%s", err.message);
        return;
    }
    report(free_bytes < ((uint64_t)10 << 30) ? CHECK_WARN : CHECK_OK, "disk",
           "%.1f GiB free in %s (checkpoints of %s): `lora-train plan` gives the run's need; a run checks it before "
           "step 1 and before every save", free_bytes / GIB, dir, checkpoint_dir);
}

static void check_cores_and_memory(void) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    const char *threads = getenv("OMP_NUM_THREADS");
    report(CHECK_OK, "cores", "%ld online, OMP_NUM_THREADS %s: the CPU backend and the offloaded AdamW run on them",
           cores, threads ? threads : "unset (OpenMP uses all)");
    uint64_t total = machine_memory_bytes();
    long available_pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    double available = available_pages > 0 && page > 0 ? (double)available_pages * page : 0;
    report(CHECK_OK, "memory", "%.1f GiB, %.1f GiB free: `lora-train plan` says whether a run fits it (CPU backend, "
           "pinned offload buffers, loading the weights)", total / GIB, available / GIB);
}

int doctor_main(const Config *config) {
    CudaInfo info;
    ops_cuda_info(&info);
    printf("lora-train doctor: the environment a run depends on\n");
    check_gpus(&info);
    check_cuda_versions(&info);
    check_nccl();
    check_locked_memory();
    check_shm();
    check_disk(config->checkpoint.dir);
    check_cores_and_memory();
    return 0;
}
