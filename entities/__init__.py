"""Ready-made entity kinds on top of the runtime: the agent loop (reasoning), tools,
the model protocol, ScriptedModel and OpenAIChat; the router, sub-agents and more
adapters come next. Uses only the public API of `wakeful.runtime`."""

from __future__ import annotations

from .agent import Agent
from .models import Model, ModelError, Reply, ScriptedModel, ToolCall
from .openai import OpenAIChat
from .tools import InvalidToolCall, Tool, tool

__all__ = [
    "Agent",
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
