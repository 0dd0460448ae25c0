"""OpenAI chat-completion and completion requests, as the OpenAI SDKs send them. Fields this service
does not use are accepted and ignored (SDKs send some by default), except those that would change the
answer in a way it cannot honour (n > 1, tools), which are refused by name."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: only text parts are meaningful here
            return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")
        return self.content or ""


class Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1, description="One choice per request.")
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    # vLLM's extension: keep only the prompt's last k tokens (instead of refusing a prompt too long for
    # the model's context).
    truncate_prompt_tokens: int | None = Field(default=None, ge=1)

    def parameters(self) -> dict[str, Any]:
        """The generation settings, under the names app/ml/generation.py reads (which checks them all;
        the stop strings' bounds included)."""
        return {"max_new_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "stop": self.stop, "truncate_prompt_tokens": self.truncate_prompt_tokens}


class ChatCompletionRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=4096)
    tools: None = Field(default=None, description="Tool calling is not supported.")

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "max_new_tokens": self.max_completion_tokens or self.max_tokens}


class CompletionRequest(Sampling):
    prompt: str | list[str]
    echo: bool = False


# --- answers (documented for /docs; the service builds them as plain JSON) ------------------------------

class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatChoice(BaseModel):
    index: int
    message: dict[str, Any] = Field(description="{role: assistant, content, refusal}")
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class _Answer(BaseModel):
    id: str
    created: int
    model: str
    system_fingerprint: str | None = None
    usage: Usage


class ChatCompletion(_Answer):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class Completion(_Answer):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
