"""The fake OpenAI-compatible server: it lives in `aria.evals.model_server`, since `aria eval` scripts its model
with it too."""

from aria.evals.model_server import (
    FakeOpenAI,
    Request,
    ToolCallSpec,
    error_body,
    estimate_completion_tokens,
    estimate_prompt_tokens,
)

__all__ = ["FakeOpenAI", "Request", "ToolCallSpec", "error_body", "estimate_completion_tokens",
           "estimate_prompt_tokens"]
