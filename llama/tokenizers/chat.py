"""Chat formats: a conversation as the token ids a chat model was fine-tuned on.

Message contents are encoded as ordinary text (a "<|im_end|>" typed by a user stays text), and the
special tokens of the format are inserted by id, so the ids equal those of the model's chat template
rendered to a string and tokenized with special tokens recognised.
"""

from __future__ import annotations

import re
from typing import Sequence

from llama.tokenizers.base import Message, Tokenizer, check_messages


def special_id(tokenizer: Tokenizer, text: str, specials: dict[str, int]) -> int:
    if text not in specials:
        raise ValueError(f"{tokenizer.name}: the chat format needs the special token {text}, which this "
                         f"vocabulary lacks")
    return specials[text]


def chatml(tokenizer: Tokenizer, specials: dict[str, int], messages: Sequence[Message],
           add_generation_prompt: bool = True, default_system: str | None = None) -> list[int]:
    """ChatML (SmolLM, Qwen): `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, then
    `<|im_start|>assistant\\n` when a reply is wanted. `default_system` is inserted first when the
    conversation does not start with a system message (what SmolLM2's chat template does)."""
    check_messages(messages)
    start = special_id(tokenizer, "<|im_start|>", specials)
    end = special_id(tokenizer, "<|im_end|>", specials)
    if default_system is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": default_system}, *messages]
    newline = tokenizer.encode("\n")
    ids: list[int] = []
    for message in messages:
        ids += [start, *tokenizer.encode(f"{message['role']}\n{message['content']}"), end, *newline]
    if add_generation_prompt:
        ids += [start, *tokenizer.encode("assistant\n")]
    return ids


def llama3_chat(tokenizer: Tokenizer, specials: dict[str, int], messages: Sequence[Message],
                add_generation_prompt: bool = True) -> list[int]:
    """Llama 3 (Meta's `ChatFormat`): `<|begin_of_text|>`, then per message
    `<|start_header_id|>{role}<|end_header_id|>\\n\\n{content stripped}<|eot_id|>`, then an open
    assistant header when a reply is wanted."""
    check_messages(messages)
    start = special_id(tokenizer, "<|start_header_id|>", specials)
    end = special_id(tokenizer, "<|end_header_id|>", specials)
    eot = special_id(tokenizer, "<|eot_id|>", specials)

    def header(role: str) -> list[int]:
        return [start, *tokenizer.encode(role), end, *tokenizer.encode("\n\n")]

    ids = [tokenizer.bos_id]
    for message in messages:
        ids += header(message["role"]) + tokenizer.encode(message["content"].strip()) + [eot]
    if add_generation_prompt:
        ids += header("assistant")
    return ids


def llama2_chat(tokenizer: Tokenizer, messages: Sequence[Message],
                add_generation_prompt: bool = True) -> list[int]:
    """Llama 2 (Meta's `chat_completion`): a system message is folded into the first user turn as
    `<<SYS>>\\n...\\n<</SYS>>\\n\\n`; each user/assistant pair is `<s>[INST] {user} [/INST] {answer} </s>`;
    a final user turn is left open for the reply."""
    check_messages(messages)
    messages = list(messages)
    if messages[0]["role"] == "system":
        if len(messages) < 2:
            raise ValueError("a Llama 2 chat needs a user message after the system message")
        folded = f"<<SYS>>\n{messages[0]['content']}\n<</SYS>>\n\n{messages[1]['content']}"
        messages = [{"role": messages[1]["role"], "content": folded}, *messages[2:]]
    roles = [m["role"] for m in messages]
    if any(role != ("user" if i % 2 == 0 else "assistant") for i, role in enumerate(roles)):
        raise ValueError("a Llama 2 chat alternates user and assistant messages, starting with user")
    ids: list[int] = []
    for prompt, answer in zip(messages[::2], messages[1::2]):
        text = f"[INST] {prompt['content'].strip()} [/INST] {answer['content'].strip()} "
        ids += tokenizer.encode(text, bos=True, eos=True)
    if len(messages) % 2 == 1:
        ids += tokenizer.encode(f"[INST] {messages[-1]['content'].strip()} [/INST]", bos=True)
    elif add_generation_prompt:
        raise ValueError("a Llama 2 chat that asks for a reply must end with a user message")
    return ids


def default_system_prompt(chat_template: str | None) -> str | None:
    """The system prompt a ChatML template writes when the conversation has none, if any.

    SmolLM2's template: `{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system
    \\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}`."""
    if not chat_template:
        return None
    match = re.search(r"'<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", chat_template, re.DOTALL)
    return match.group(1) if match else None


def encode_prompt(tokenizer: Tokenizer, text: str, *, chat: bool, bos: bool) -> list[int]:
    """Tokens of a prompt formatted as an SAE's training text was: as a user message of the chat template
    (`chat`) or plain, with BOS first (`bos`) or not (the SAE config's `chat` and `prepend_bos`)."""
    ids = tokenizer.encode_chat([{"role": "user", "content": text}]) if chat else tokenizer.encode(text)
    if bos and ids[:1] != [tokenizer.bos_id]:
        ids = [tokenizer.bos_id, *ids]
    return ids
