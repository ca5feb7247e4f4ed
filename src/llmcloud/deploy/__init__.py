"""Deployment: systemd units, shared secret keys across web instances, upgrades."""
