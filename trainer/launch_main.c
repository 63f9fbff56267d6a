// lora-launch: one lora-train (or any program) per local rank, torchrun-style.
#include "trainer.h"

int main(int argc, char **argv) { return lora_launch_main(argc, argv); }
