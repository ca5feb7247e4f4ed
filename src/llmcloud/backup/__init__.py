"""Backups: consistent snapshots, age encryption, targets, verification by restore, retention.

`operations` contains one function per `llmcloud backup` command; `schedule`
runs backups and restore tests inside `llmcloud web` and `llmcloud up`.
"""
