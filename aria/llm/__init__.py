"""Model access: prices, budgets, routing, retries, breakers and fallbacks."""
