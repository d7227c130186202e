# Two roles. Workers may read and write snapshots in the one bucket, nothing else. The head may do
# the same and, as the Ray autoscaler, launch and terminate this cluster's worker instances.

locals {
  ec2_arn_prefix = "arn:${local.partition}:ec2:${var.region}:${local.account_id}"
}

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

# Least privilege on the snapshot store: the bucket ARN for listing, its objects for
# read/write/delete (`thawline snapshot rm|gc`), the cluster key for SSE-KMS. No other bucket.
data "aws_iam_policy_document" "snapshot_access" {
  statement {
    sid       = "ListSnapshotBucket"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
    resources = [aws_s3_bucket.snapshots.arn]
  }

  statement {
    sid = "ReadWriteSnapshotObjects"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${aws_s3_bucket.snapshots.arn}/*"]
  }

  statement {
    sid       = "UseSnapshotBucketKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.thawline.arn]
  }
}

# The autoscaler on the head: launch workers into this VPC's private subnets with the worker
# profile, and stop/terminate only instances Ray tagged as this cluster's.
data "aws_iam_policy_document" "autoscaler" {
  statement {
    sid     = "DescribeForAutoscaler"
    actions = ["ec2:DescribeInstances", "ec2:DescribeInstanceTypes", "ec2:DescribeImages", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeKeyPairs"]
    # EC2 Describe* calls do not support resource-level permissions.
    resources = ["*"]
  }

  statement {
    sid     = "LaunchWorkers"
    actions = ["ec2:RunInstances"]
    resources = concat(
      [
        "${local.ec2_arn_prefix}:instance/*",
        "${local.ec2_arn_prefix}:volume/*",
        "${local.ec2_arn_prefix}:network-interface/*",
        "${local.ec2_arn_prefix}:key-pair/*",
        "arn:${local.partition}:ec2:${var.region}::image/*",
        aws_security_group.ray_nodes.arn,
      ],
      aws_subnet.private[*].arn,
    )
  }

  statement {
    sid       = "TagOnLaunch"
    actions   = ["ec2:CreateTags"]
    resources = ["${local.ec2_arn_prefix}:instance/*", "${local.ec2_arn_prefix}:volume/*"]
    condition {
      test     = "StringEquals"
      variable = "ec2:CreateAction"
      values   = ["RunInstances"]
    }
  }

  statement {
    sid       = "ManageOwnWorkers"
    actions   = ["ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances", "ec2:CreateTags"]
    resources = ["${local.ec2_arn_prefix}:instance/*"]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/ray-cluster-name"
      values   = [var.cluster_name]
    }
  }

  statement {
    sid       = "PassWorkerRole"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.ray_worker.arn]
  }
}

resource "aws_iam_role" "ray_worker" {
  name               = "${var.cluster_name}-ray-worker"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_role_policy" "ray_worker_snapshots" {
  name   = "snapshot-bucket"
  role   = aws_iam_role.ray_worker.id
  policy = data.aws_iam_policy_document.snapshot_access.json
}

resource "aws_iam_instance_profile" "ray_worker" {
  name = "${var.cluster_name}-ray-worker"
  role = aws_iam_role.ray_worker.name
}

resource "aws_iam_role" "ray_head" {
  name               = "${var.cluster_name}-ray-head"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_role_policy" "ray_head_snapshots" {
  name   = "snapshot-bucket"
  role   = aws_iam_role.ray_head.id
  policy = data.aws_iam_policy_document.snapshot_access.json
}

resource "aws_iam_role_policy" "ray_head_autoscaler" {
  name   = "ray-autoscaler"
  role   = aws_iam_role.ray_head.id
  policy = data.aws_iam_policy_document.autoscaler.json
}

resource "aws_iam_instance_profile" "ray_head" {
  name = "${var.cluster_name}-ray-head"
  role = aws_iam_role.ray_head.name
}
