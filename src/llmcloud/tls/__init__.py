"""TLS certificates: the internal CA, the ACME client and renewal, hot reload, nginx config."""
