"""Reference chat renderings for data/chat_template.c, made by transformers.

For each (tokenizer fixture, template) pair, renders multi-turn chats (with
and without a system turn) with tokenizer.apply_chat_template(...,
tokenize=True) and records the ids and the assistant-token mask
(return_assistant_tokens_mask, from a copy of the template whose assistant
span is wrapped in {% generation %}; both copies must give the same ids).

The template texts are reproduced here, not downloaded:
  llama3     the chat_template of Meta-Llama-3-8B-Instruct's tokenizer_config.json
             (header, content | trim, <|eot_id|>; bos_token before the first turn)
  llama2     the chat_template of Llama-2-7b-chat-hf's tokenizer_config.json
             (<s>[INST] <<SYS>>\\n...\\n<</SYS>>\\n\\n user [/INST] answer </s>)
  vicuna_v1  LLaVA's conv_vicuna_v1 (llava/conversation.py, SeparatorStyle.TWO):
             system + " " + "USER: " q " " "ASSISTANT: " a "</s>" ..., the default
             system prompt unless the chat has one; BOS first as LLaVA tokenizes
  plain      LLaVA's conv_llava_plain for pretraining: BOS, user text as is,
             assistant text + "\\n" (the only trained part)
Labels: the assistant's text and its end-of-turn token (llama3 <|eot_id|>,
llama2 and vicuna_v1 </s>, plain "\\n").

Writes tests/fixtures/chat_templates/{<template>.jinja, <case>.json}.

    python3 scripts/ref_chat_templates.py
"""
import json
import os

from transformers import PreTrainedTokenizerFast

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "chat_templates")

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA3_MASKED = (
    "{% for message in messages %}{% if loop.index0 == 0 %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}"
    "{% endgeneration %}{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}{% endfor %}"
)

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
LLAMA2_MASKED = LLAMA2.replace(
    "{{ ' '  + content.strip() + ' ' + eos_token }}",
    "{% generation %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endgeneration %}")

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
VICUNA_V1 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = '" + VICUNA_SYSTEM.replace("'", "\\'") + "' %}{% endif %}"
    "{{ bos_token + system_message + ' ' }}{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' }}{{ message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)
VICUNA_V1_MASKED = VICUNA_V1.replace(
    "{{ message['content'] + eos_token }}",
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}")

PLAIN = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}"
    "{{ message['content'] + '\n' }}{% else %}{{ message['content'] }}{% endif %}{% endfor %}"
)
PLAIN_MASKED = PLAIN.replace("{{ message['content'] + '\n' }}",
                             "{% generation %}{{ message['content'] + '\n' }}{% endgeneration %}")

TEMPLATES = {
    "llama3": (LLAMA3, LLAMA3_MASKED),
    "llama2": (LLAMA2, LLAMA2_MASKED),
    "vicuna_v1": (VICUNA_V1, VICUNA_V1_MASKED),
    "plain": (PLAIN, PLAIN_MASKED),
}

CHATS = [
    [{"role": "user", "content": "Hello, who are you?"},
     {"role": "assistant", "content": "I'm a helpful assistant."}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "What is 2 + 2?"},
     {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And times three?"},
     {"role": "assistant", "content": "12, since (2 + 2) * 3 = 12."}],
    [{"role": "user", "content": "<image>\nDescribe the image.  "},
     {"role": "assistant", "content": "  A cat sits on a mat next to a window.\n"},
     {"role": "user", "content": "Café? naïve Ångström, 数字 🦙"},
     {"role": "assistant", "content": "def f(x):\n    return x * 2\n"}],
    [{"role": "system", "content": "Answer in one word.\n"},
     {"role": "user", "content": "Colour of the sky?"},
     {"role": "assistant", "content": "Blue."}],
]

# (case name, tokenizer folder relative to the project root, bos, eos, templates)
CASES = [
    ("llama3_style", "tests/fixtures/hf_tokenizer/llama3_style", "<|begin_of_text|>", "<|end_of_text|>",
     ["llama3", "plain"]),
    ("sentencepiece_style", "tests/fixtures/hf_tokenizer/sentencepiece_style", "<s>", "</s>",
     ["llama2", "vicuna_v1", "plain"]),
    ("mistral", "../shared/fixtures/tokenizers/mistral", "<s>", "</s>", ["llama2", "vicuna_v1", "plain"]),
]


def render(tokenizer, template, masked, chat):
    plain_ids = tokenizer.apply_chat_template(chat, chat_template=template, tokenize=True, return_dict=True)
    result = tokenizer.apply_chat_template(chat, chat_template=masked, tokenize=True, return_dict=True,
                                           return_assistant_tokens_mask=True)
    ids = list(result["input_ids"])
    assert ids == list(plain_ids["input_ids"]), "the masked template renders differently"
    return ids, [int(m) for m in result["assistant_masks"]]


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, (template, _) in TEMPLATES.items():
        with open(os.path.join(OUT, name + ".jinja"), "w") as f:
            f.write(template)
    for case, folder, bos, eos, templates in CASES:
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(ROOT, folder, "tokenizer.json"),
                                            bos_token=bos, eos_token=eos)
        renderings = []
        for name in templates:
            template, masked = TEMPLATES[name]
            for chat in CHATS:
                ids, mask = render(tokenizer, template, masked, chat)
                renderings.append({"template": name, "messages": chat, "ids": ids, "assistant_mask": mask})
        with open(os.path.join(OUT, case + ".json"), "w") as f:
            json.dump({"tokenizer": folder, "bos_token": bos, "eos_token": eos, "renderings": renderings}, f,
                      ensure_ascii=False)
        print(f"{case}: {len(renderings)} renderings")


if __name__ == "__main__":
    main()
