"""The model engine: Ollama- and OpenAI-compatible HTTP APIs over llama.cpp."""
