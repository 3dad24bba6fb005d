"""Wire formats, one module each: /chat's SSE (chat), OpenAI's (openai), SSE framing (sse)."""
