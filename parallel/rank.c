// Rank information from torchrun's (or Slurm's) environment variables.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parallel.h"

// *value = the variable as a non-negative int; false (no error) when unset.
static bool env_int(const char *name, int *value, bool *present, Error *err) {
    const char *text = getenv(name);
    *present = text && text[0];
    if (!*present) return true;
    char *end;
    errno = 0;
    long parsed = strtol(text, &end, 10);
    if (errno || *end || parsed < 0 || parsed > 1 << 20) return fail(err, "%s='%s' is not a rank or count", name, text);
    *value = (int)parsed;
    return true;
}

static bool read_ranks(RankInfo *info, const char *rank_var, const char *world_var, const char *local_var,
                       const char *local_world_var, bool *found, Error *err) {
    bool has_rank, has_world, has_local, has_local_world;
    if (!env_int(rank_var, &info->rank, &has_rank, err) || !env_int(world_var, &info->world_size, &has_world, err) ||
        !env_int(local_var, &info->local_rank, &has_local, err))
        return false;
    if (local_world_var && !env_int(local_world_var, &info->local_world_size, &has_local_world, err)) return false;
    *found = has_rank || has_world;
    if (!*found) return true;
    if (!has_rank || !has_world) return fail(err, "%s and %s must be set together", rank_var, world_var);
    if (!has_local) info->local_rank = info->rank;
    if (!local_world_var || !has_local_world) info->local_world_size = info->world_size;
    return true;
}

static bool check_ranks(const RankInfo *info, Error *err) {
    if (info->world_size < 1 || info->rank >= info->world_size)
        return fail(err, "rank %d is outside world size %d", info->rank, info->world_size);
    if (info->local_world_size < 1 || info->local_rank >= info->local_world_size)
        return fail(err, "local rank %d is outside local world size %d", info->local_rank, info->local_world_size);
    return true;
}

static bool read_master(RankInfo *info, Error *err) {
    const char *addr = getenv("MASTER_ADDR");
    snprintf(info->master_addr, sizeof info->master_addr, "%s", addr && addr[0] ? addr : "127.0.0.1");
    bool has_port;
    info->master_port = 29500;
    if (!env_int("MASTER_PORT", &info->master_port, &has_port, err)) return false;
    if (info->master_port < 1 || info->master_port > 65535)
        return fail(err, "MASTER_PORT=%d is not a TCP port", info->master_port);
    return true;
}

bool rank_info_from_env(RankInfo *info, Error *err) {
    *info = (RankInfo){.rank = 0, .world_size = 1, .local_rank = 0, .local_world_size = 1};
    bool found;
    if (!read_ranks(info, "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", &found, err)) return false;
    if (!found && !read_ranks(info, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", NULL, &found, err)) return false;
    if (!found) *info = (RankInfo){.rank = 0, .world_size = 1, .local_rank = 0, .local_world_size = 1};
    return check_ranks(info, err) && read_master(info, err);
}

void dist_shard_range(size_t n, int world_size, int rank, size_t *begin, size_t *end) {
    size_t shard = (n + (size_t)world_size - 1) / (size_t)world_size;
    size_t b = shard * (size_t)rank, e = b + shard;
    *begin = b < n ? b : n;
    *end = e < n ? e : n;
}

size_t dist_padded_size(size_t n, int world_size) {
    size_t shard = (n + (size_t)world_size - 1) / (size_t)world_size;
    return shard * (size_t)world_size;
}

void dist_owned_range(size_t n, int world_size, int rank, size_t begin, size_t end, size_t *owned_begin,
                      size_t *owned_end) {
    size_t shard_begin, shard_end;
    dist_shard_range(n, world_size, rank, &shard_begin, &shard_end);
    *owned_begin = shard_begin > begin ? shard_begin : begin;
    *owned_end = shard_end < end ? shard_end : end;
    if (*owned_end < *owned_begin) *owned_end = *owned_begin;
}
