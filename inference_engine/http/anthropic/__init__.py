"""The Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`) over the same engine:
bodies convert to a chat request (convert.py), answers render as Anthropic messages (render.py)."""
