// Robot data: the input parsed as one tf.train.Example, then as the shard of an
// RLDS folder (TFRecord framing and CRCs, every record's Example, the episode
// checks). A mutated record mostly fails its CRC, hence the direct parse.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/rlds.h"

static char folder[64], shard[128];

static void remove_folder(void) {
    char info[128];
    snprintf(info, sizeof info, "%s/dataset_info.json", folder);
    unlink(info);
    unlink(shard);
    rmdir(folder);
}

// A folder with dataset_info.json, made once per process.
static void make_folder(void) {
    snprintf(folder, sizeof folder, "/tmp/lora-train-fuzz-rlds-XXXXXX");
    if (!mkdtemp(folder)) abort();
    char info[128];
    snprintf(info, sizeof info, "%s/dataset_info.json", folder);
    FILE *file = fopen(info, "w");
    if (!file || fputs("{\"name\": \"fuzz\"}\n", file) < 0 || fclose(file) != 0) abort();
    snprintf(shard, sizeof shard, "%s/fuzz-train.tfrecord-00000-of-00001", folder);
    atexit(remove_folder);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Error err;
    Example example;
    example_parse(data, size, &example, &err);
    example_free(&example);

    if (!folder[0]) make_folder();
    FILE *file = fopen(shard, "wb");
    if (!file || (size && fwrite(data, 1, size, file) != size) || fclose(file) != 0) abort();
    RobotDataOptions options = {.path = folder};
    RobotDataset *dataset = robot_dataset_open(&options, &err);
    for (int64_t i = 0; dataset && i < robot_dataset_size(dataset); i++) {
        RobotStep step = robot_dataset_step(dataset, i);
        if (step.action[0] != step.action[0]) abort(); // actions kept are finite
    }
    robot_dataset_destroy(dataset);
    return 0;
}
