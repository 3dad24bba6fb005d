"""Tollgate: a streaming chat gateway for the OpenAI API with budgets, memory and cost records."""
