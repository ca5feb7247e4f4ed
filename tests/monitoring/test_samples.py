"""Rates and quantiles derived from two registry readings."""

from __future__ import annotations

import math

from llmcloud.monitoring.samples import Reading, derive, histogram_quantile


def test_quantile_interpolates_inside_bucket() -> None:
    buckets = {1.0: 0.0, 2.0: 0.0, 5.0: 10.0, math.inf: 10.0}

    assert histogram_quantile(0.95, buckets) == 2.0 + 3.0 * 0.95


def test_quantile_of_empty_histogram_is_none() -> None:
    assert histogram_quantile(0.95, {1.0: 0.0, math.inf: 0.0}) is None


def test_quantile_in_inf_bucket_is_highest_bound() -> None:
    assert histogram_quantile(0.5, {1.0: 0.0, math.inf: 4.0}) == 1.0


def reading(requests: float, errors: float) -> Reading:
    return {
        ("llmcloud_http_requests_total", (("status", "200"),)): requests,
        ("llmcloud_http_requests_total", (("status", "503"),)): errors,
    }


def test_derive_turns_counters_into_rates() -> None:
    sample = derive(reading(110, 20), 10.0, (0.0, reading(10, 0)))

    assert sample.requests_per_second == 12.0
    assert sample.errors_per_second == 2.0


def test_derive_treats_counter_drop_as_restart() -> None:
    sample = derive(reading(5, 0), 10.0, (0.0, reading(100, 0)))

    assert sample.requests_per_second == 0.5


def test_first_sample_has_no_rates() -> None:
    sample = derive(reading(5, 0), 10.0, None)

    assert sample.requests_per_second is None
