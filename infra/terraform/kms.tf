# One customer-managed key encrypts the snapshot bucket and the flow logs; rotation is on.

data "aws_iam_policy_document" "kms" {
  # This document is a KMS key policy, where resources = ["*"] means "this key" and nothing else.
  #checkov:skip=CKV_AWS_111:Key policy: "*" is this key only; administration stays with the account root.
  #checkov:skip=CKV_AWS_356:Key policy: "*" is this key only, not every resource.
  #checkov:skip=CKV_AWS_109:Key policy: the account root must keep kms:* or the key becomes unmanageable.
  statement {
    sid       = "AccountAdministersKey"
    actions   = ["kms:*"]
    resources = ["*"] # in a key policy, "*" means this key
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchLogsEncryptFlowLogs"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]
    resources = ["*"] # in a key policy, "*" means this key
    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:/thawline/${var.cluster_name}/*"]
    }
  }
}

resource "aws_kms_key" "thawline" {
  description             = "Thawline ${var.cluster_name}: snapshot bucket and VPC flow logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "thawline" {
  name          = "alias/${var.cluster_name}-thawline"
  target_key_id = aws_kms_key.thawline.key_id
}
