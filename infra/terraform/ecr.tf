# The node image of cluster/aws-gpu.yaml (cluster/docker/Dockerfile: CUDA, Python 3.12, Ray 2.60,
# the pinned vLLM). `make node-image NODE_IMAGE=$(terraform output -raw node_image)` builds and
# pushes it; every Ray node pulls it (the node roles may read this repository only).

resource "aws_ecr_repository" "node" {
  name                 = "${var.cluster_name}-node"
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.thawline.arn
  }
}

data "aws_iam_policy_document" "node_image_pull" {
  statement {
    sid = "EcrLogin"
    # GetAuthorizationToken has no resource-level permissions.
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid       = "PullNodeImage"
    actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
    resources = [aws_ecr_repository.node.arn]
  }

  statement {
    sid       = "DecryptNodeImage"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.thawline.arn]
  }
}

resource "aws_iam_role_policy" "ray_worker_node_image" {
  name   = "node-image"
  role   = aws_iam_role.ray_worker.id
  policy = data.aws_iam_policy_document.node_image_pull.json
}

resource "aws_iam_role_policy" "ray_head_node_image" {
  name   = "node-image"
  role   = aws_iam_role.ray_head.id
  policy = data.aws_iam_policy_document.node_image_pull.json
}
