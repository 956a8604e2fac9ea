"""Ready-made entity kinds on top of the runtime: the agent loop (reasoning), tools,
the model protocol and its adapters (ScriptedModel, OpenAIChat, AnthropicMessages),
route mode's router (rules, LLM routing) and the embedders its semantic conditions
use; sub-agents are agents given to `Agent(subagents=[...])`. Uses only the public
API of `wakeful.runtime`."""

from __future__ import annotations

from .agent import Agent
from .anthropic import AnthropicMessages
from .embeddings import Embedder, HashingEmbedder, OpenAIEmbeddings, WordLlamaEmbeddings
from .models import Model, ModelError, Reply, ScriptedModel, ToolCall
from .openai import OpenAIChat
from .routing import Capability, Condition, Decision, Router, Rule, llm_route
from .tools import InvalidToolCall, Tool, tool

__all__ = [
    "Agent",
    "AnthropicMessages",
    "Capability",
    "Condition",
    "Decision",
    "Embedder",
    "HashingEmbedder",
    "InvalidToolCall",
    "Model",
    "ModelError",
    "OpenAIChat",
    "OpenAIEmbeddings",
    "Reply",
    "Router",
    "Rule",
    "ScriptedModel",
    "Tool",
    "ToolCall",
    "WordLlamaEmbeddings",
    "llm_route",
    "tool",
]
