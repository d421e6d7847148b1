"""Wire-level loopback fakes for APIs no local server speaks (Anthropic extras, Ollama native).

Each fake is a small Starlette app on 127.0.0.1 (a port the OS picks) that records every request
body and replays responses in the documented wire format; tests drive it through the official
SDKs and assert on what the SDK sent.
"""
