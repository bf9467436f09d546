"""Chat templates a recipe can name (``chat_template: chatml``), and the check of a
``chat_template`` value.
"""

from __future__ import annotations

# Written for mergebot (mergekit ships templates under the same names).
NAMED_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
        "+ message['content'] | trim + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "alpaca": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'user' %}"
        "{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
    ),
    "mistral": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
        "{% else %}{{ message['content'] + '\\n\\n' }}"
        "{% endif %}"
        "{% endfor %}"
    ),
}


def check_chat_template(value: str) -> str | None:
    """Why ``chat_template`` is not usable (None when it is): a known name, ``auto``, or
    a literal Jinja template (mergekit: at least 20 characters with a ``{``)."""
    if value in NAMED_TEMPLATES or value == "auto":
        return None
    if len(value) < 20 or "{" not in value:
        return (f"unknown chat template {value!r}; use one of "
                f"{', '.join(sorted(NAMED_TEMPLATES))}, auto, or a literal Jinja template")
    return None
