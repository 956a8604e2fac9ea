"""Ready-made entity kinds on top of the runtime: the agent loop (reasoning), tools,
the model protocol and its adapters (ScriptedModel, OpenAIChat, AnthropicMessages).
The router and sub-agents come next. Uses only the public API of `wakeful.runtime`."""

from __future__ import annotations

from .agent import Agent
from .anthropic import AnthropicMessages
from .models import Model, ModelError, Reply, ScriptedModel, ToolCall
from .openai import OpenAIChat
from .tools import InvalidToolCall, Tool, tool

__all__ = [
    "Agent",
    "AnthropicMessages",
    "InvalidToolCall",
    "Model",
    "ModelError",
    "OpenAIChat",
    "Reply",
    "ScriptedModel",
    "Tool",
    "ToolCall",
    "tool",
]
