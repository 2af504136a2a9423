"""The adaptation engine: AMS (Adaptive Model Streaming) and its baselines, as pure logic."""
