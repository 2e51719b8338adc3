"""The HTTP API (spec §8): ``app`` builds the aiohttp application, ``events`` holds commit waiters
and the SSE hub, ``openapi`` describes every endpoint."""
