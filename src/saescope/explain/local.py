"""A local Hugging Face chat model as an explainer/judge, run by saescope itself (``saescope.lm.LanguageModel``).

    client = LocalChatClient("Qwen/Qwen2.5-0.5B-Instruct")      # hub id (cached) or a local directory
    client.chat(messages) -> ChatReply                         # same interface as ChatClient

The prompt is the tokenizer's chat template (``add_generation_prompt=True``) when it has one, else a plain
``System: … / User: … / Assistant:`` transcript. Generation is greedy unless a temperature above 0 is given
(seeded), stops at EOS, and runs one request at a time (the model is shared). Token counts are exact.
"""
from __future__ import annotations

import threading

import torch

from .client import ChatReply, ClientConfig, LLMError, Usage


class LocalChatClient:
    def __init__(self, name_or_path: str, device=None, config: ClientConfig = ClientConfig(), lm=None):
        if lm is None:
            from ..lm import LanguageModel

            lm = LanguageModel.from_pretrained(name_or_path, device=device)
        self.lm, self.config = lm, config
        self.model = str(lm.name)
        self.usage = Usage()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.model

    def close(self) -> None:
        pass

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """Token ids of the prompt: the chat template with the generation prompt, or a plain transcript."""
        tok = self.lm.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return list(tok(text, add_special_tokens=False)["input_ids"])
        text = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages) + "\n\nAssistant:"
        return self.lm.to_tokens(text)[0].tolist()

    def chat(self, messages: list[dict], max_tokens: int | None = None, temperature: float | None = None) -> ChatReply:
        ids = self.prompt_ids(messages)
        n_new = max_tokens or self.config.max_tokens
        n_ctx = self.lm.info.n_ctx
        if len(ids) + n_new > n_ctx:
            n_new = n_ctx - len(ids)
            if n_new < 8:
                raise LLMError(f"local model {self.model}: the prompt has {len(ids)} tokens, too many for its context "
                               f"of {n_ctx}")
        temp = self.config.temperature if temperature is None else temperature
        with self._lock, torch.no_grad():
            out = self.lm.generate(torch.tensor([ids], dtype=torch.long), max_new_tokens=n_new, do_sample=temp > 0,
                                   temperature=temp, seed=0, stop_at_eos=True)
        new = out[0, len(ids):].tolist()
        eos = self.lm.info.eos_token_id
        if eos is not None and eos in new:
            new = new[: new.index(eos) + 1]
        text = self.lm.tokenizer.decode(new, skip_special_tokens=True)
        reply = ChatReply(text, self.model, len(ids), len(new))
        self.usage.add(reply)
        return reply
