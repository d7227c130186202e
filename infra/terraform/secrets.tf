# The node environment's secrets (the gateway's admin key, hosted providers' API keys, ...) as one
# Secrets Manager secret: a JSON object of environment variable -> value. Each node reads it once
# at start (`thawline cluster render-env` in cluster/aws-gpu.yaml's setup_commands) into a mode-600
# env file that `ray start` sources, so the gateway replicas find them in their environment.
#
# Terraform creates the secret, never its value: a value set here would be stored in plain text in
# the Terraform state. The operator puts it once (README.md, "Quickstart: AWS"):
#   aws secretsmanager put-secret-value --secret-id <node_secret_arn> --secret-string file://node-env.json

resource "aws_secretsmanager_secret" "node_env" {
  #checkov:skip=CKV2_AWS_57:Values are operator-issued keys (the gateway admin key, hosted providers' API keys); the issuing provider rotates them, then the operator puts the new value.
  name                    = "${var.cluster_name}/node-env"
  description             = "Thawline ${var.cluster_name}: environment of the Ray nodes (JSON object of env var -> value)"
  kms_key_id              = aws_kms_key.thawline.arn
  recovery_window_in_days = 7
}

# Read access to that one secret and nothing else: no ListSecrets, no other secret, no SSM. The key
# may decrypt only for Secrets Manager, and only this secret (the encryption context names it).
data "aws_iam_policy_document" "node_secret_read" {
  statement {
    sid       = "ReadNodeEnvSecret"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.node_env.arn]
  }

  statement {
    sid       = "DecryptNodeEnvSecret"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.thawline.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${var.region}.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "kms:EncryptionContext:SecretARN"
      values   = [aws_secretsmanager_secret.node_env.arn]
    }
  }
}

# Both roles: the gateway's replicas are Serve replicas, placed on whichever node has room.
resource "aws_iam_role_policy" "ray_head_node_secret" {
  name   = "node-env-secret"
  role   = aws_iam_role.ray_head.id
  policy = data.aws_iam_policy_document.node_secret_read.json
}

resource "aws_iam_role_policy" "ray_worker_node_secret" {
  name   = "node-env-secret"
  role   = aws_iam_role.ray_worker.id
  policy = data.aws_iam_policy_document.node_secret_read.json
}
