"""Local accounts, login sessions, API keys and the secret keys they rely on."""
