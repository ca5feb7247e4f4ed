"""llmcloud: a self-hosted LLM chat service for a group of users."""

__version__ = "0.1.0"
