"""The loopback LLM simulator: a real HTTP server speaking the OpenAI and Azure shapes."""
