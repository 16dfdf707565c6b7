"""The request bodies, as pydantic models (they make the OpenAPI schema at /openapi.json).

Field names and meanings are OpenAI's, with llama-server's extras (top_k, min_p,
repeat_penalty, grammar, ...). Unknown fields are accepted and ignored, as OpenAI clients send
fields a local server has no use for (user, store, ...); fields that would change the answer
and that clexrt cannot honour (n > 1, ...) are a 400 where the request is read (app.py)."""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CompletionRequest", "ChatRequest", "EmbeddingRequest", "TokenizeRequest",
           "DetokenizeRequest"]

Stop = Optional[Union[str, list[str]]]


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Optional[str] = Field(None, description="the served model's id (GET /v1/models)")
    max_tokens: Optional[int] = Field(None, ge=1, description="None: until the model stops or "
                                      "the slot's context is full")
    temperature: float = Field(0.8, ge=0.0, le=100.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    min_p: float = Field(0.05, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.0, gt=0.0, le=100.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stop: Stop = None
    seed: Optional[int] = None
    stream: bool = False
    stream_options: Optional[dict[str, Any]] = Field(
        None, description='{"include_usage": true}: a last chunk with no choices and the usage')
    logit_bias: Optional[dict[str, float]] = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    grammar: Optional[str] = Field(None, description="llama.cpp GBNF (or Lark) the output matches")
    response_format: Optional[dict[str, Any]] = Field(
        None, description='{"type": "json_object"} or {"type": "json_schema", "json_schema": '
                          '{"name": ..., "schema": {...}}}')


class CompletionRequest(_Sampling):
    prompt: Union[str, list[int]] = Field(..., description="text, or token ids")
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0, le=20)


class ChatRequest(_Sampling):
    messages: list[dict[str, Any]] = Field(..., min_length=1)
    temperature: float = Field(0.2, ge=0.0, le=100.0)       # llama-cpp-python's chat default
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[Literal["none", "auto", "required"], dict[str, Any]]] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    max_completion_tokens: Optional[int] = Field(None, ge=1)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    input: Union[str, list[str], list[int], list[list[int]]]
    model: Optional[str] = None
    encoding_format: Literal["float", "base64"] = "float"
    embd_normalize: int = Field(2, ge=-1, description="llama-server's: -1 none, 0 max-abs "
                                "(int16 range), 1 taxicab, 2 euclidean, p > 2 p-norm")


class TokenizeRequest(BaseModel):
    content: str = ""
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(BaseModel):
    tokens: list[int] = []
