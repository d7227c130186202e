# The snapshot bucket: encrypted with the cluster's KMS key, versioned, never public, TLS only,
# with a lifecycle for old snapshots. Snapshot objects are written once and read by every cold
# start, so replaced/deleted versions expire and old snapshots move to infrequent access.

resource "aws_s3_bucket" "snapshots" {
  bucket = local.snapshot_bucket_name

  #checkov:skip=CKV_AWS_18:Access logs would need a second bucket per cluster; reads come only from the Ray node roles, which CloudTrail already records.
  #checkov:skip=CKV_AWS_144:Snapshots are derived data, re-creatable from the model source; cross-region replication would double storage for no durability gain.
  #checkov:skip=CKV2_AWS_62:No consumer of object events exists; snapshot.json written last is the commit marker that readers poll.
}

resource "aws_s3_bucket_public_access_block" "snapshots" {
  bucket                  = aws_s3_bucket.snapshots.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.thawline.arn
    }
    # One data key per bucket instead of per object: far fewer KMS calls for multi-GB snapshots.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id

  rule {
    id     = "old-snapshots"
    status = "Enabled"
    filter {
      prefix = "${var.snapshot_prefix}/"
    }
    transition {
      days          = var.snapshot_infrequent_access_days
      storage_class = "STANDARD_IA"
    }
    noncurrent_version_expiration {
      noncurrent_days = var.snapshot_noncurrent_days
    }
  }

  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    # A crashed snapshot writer leaves multipart uploads behind; they cost money until aborted.
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.snapshots]
}

data "aws_iam_policy_document" "snapshots_bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.snapshots.arn, "${aws_s3_bucket.snapshots.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "snapshots" {
  bucket     = aws_s3_bucket.snapshots.id
  policy     = data.aws_iam_policy_document.snapshots_bucket.json
  depends_on = [aws_s3_bucket_public_access_block.snapshots]
}
