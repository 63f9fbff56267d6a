// lora-train: LoRA / QLoRA fine-tuning of Llama-family and vision-language models.
#include "trainer.h"

int main(int argc, char **argv) { return lora_train_main(argc, argv); }
