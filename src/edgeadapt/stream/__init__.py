"""What agent and trainer share about the adaptation stream: messages, tokens, TLS."""
