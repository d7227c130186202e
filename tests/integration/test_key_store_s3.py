"""The key store's races and bad files on S3 (a moto server on loopback): every edit is a
conditional PUT (`If-None-Match: *`) of the next version, so a revoke that answered stays revoked
and one of two creates of an id is refused, with no rename anywhere. Same checks as the memory://
and file:// ones in tests/unit/test_key_store_races.py."""
from __future__ import annotations

import logging

import pytest

from gateway.key_records import KeyMissing, KeyRecordStore
from tests.unit import test_key_store_races as t


@pytest.fixture
def url(s3_bucket_url):
    return f"{s3_bucket_url}/keys-store"


@pytest.mark.parametrize("edit", [t.rotate, t.patch], ids=["rotate", "patch"])
def test_s3_revoke_that_answered_stays_revoked(url, edit):
    t.test_a_revoke_that_answered_stays_revoked(url, edit)


def test_s3_two_creates_of_one_id_one_wins(url):
    t.test_two_creates_of_one_id_one_wins(url)


def test_s3_concurrent_patches_all_land(url):
    t.test_concurrent_patches_all_land_in_order(url)


def test_s3_bad_files_skipped(url, caplog):
    t.test_stray_and_malformed_files_are_skipped_with_a_warning(url, caplog)


def test_s3_gateway_beside_bad_files(url):
    t.test_gateway_starts_lists_and_revokes_beside_bad_files(url)


def test_s3_revoke_then_stale_edit(url):
    a = KeyRecordStore(url)
    a.create_key(t.new_rec("z"))
    assert a.delete_key("z") is True
    with pytest.raises(KeyMissing):
        KeyRecordStore(url).update_key("z", t.rotate)
    assert "z" not in a.read_all().keys
