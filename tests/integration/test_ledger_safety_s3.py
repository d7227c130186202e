"""The ledger's quarantine and double-compaction checks on S3 (a moto server on loopback): the
same checks as tests/unit/test_ledger_safety.py and test_broker_mixed_spend.py on memory:// and
file://."""
from __future__ import annotations

import pytest

from tests.unit import test_broker_mixed_spend as b
from tests.unit import test_ledger_safety as t


@pytest.fixture
def url(s3_bucket_url):
    return f"{s3_bucket_url}/ledger"


def test_s3_truncated_part_quarantined(url, caplog):
    t.test_an_unreadable_part_is_quarantined_and_the_rest_counts(url, lambda x: x[: len(x) // 2], caplog)


def test_s3_unreadable_day_file(url):
    t.test_an_unreadable_day_file_is_quarantined_too(url)


def test_s3_two_compactions_count_once(url):
    t.test_two_compactions_of_one_day_count_it_once(url)


def test_s3_racing_compactors(url):
    t.test_racing_compactors_never_double_count(url)


def test_s3_restarted_broker_mixed_spend(url):
    b.test_restarted_broker_counts_local_spend_beside_hosted(url, True)
