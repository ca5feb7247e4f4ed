"""Monitoring: Prometheus metrics, health checks, the built-in alerter and the status page.

Every metric is defined in `llmcloud.monitoring.metrics`.
"""
