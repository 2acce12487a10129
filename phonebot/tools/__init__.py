"""The bot's tools: plain typed async functions that know nothing of Twilio or Gemini."""

from phonebot.tools.context import ToolContext, ToolError

__all__ = ["ToolContext", "ToolError"]
