"""OpenAI's Responses API (`/v1/responses`) over the same engine: bodies convert to a chat request
(convert.py), answers render as output items and typed events (render.py), and stored responses
keep their conversation for `previous_response_id` (store.py), its KV in a session."""
