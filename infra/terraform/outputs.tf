# Every ${tf:NAME} placeholder in cluster/aws-gpu.yaml is one of these outputs:
#   terraform output -json > tf-outputs.json
#   thawline cluster up ../../cluster/aws-gpu.yaml --tf-outputs tf-outputs.json

output "region" {
  description = "AWS region of the cluster (provider.region in aws-gpu.yaml)."
  value       = var.region
}

output "vpc_id" {
  description = "VPC the Ray nodes run in."
  value       = aws_vpc.this.id
}

output "public_subnet_ids" {
  description = "Public subnets; the head node goes in the first."
  value       = aws_subnet.public[*].id
}

output "private_subnet_ids" {
  description = "Private subnets for the GPU worker nodes."
  value       = aws_subnet.private[*].id
}

output "ray_security_group_id" {
  description = "Security group of every Ray node."
  value       = aws_security_group.ray_nodes.id
}

output "ray_head_instance_profile_arn" {
  description = "Instance profile of the head node (snapshot bucket + autoscaler permissions)."
  value       = aws_iam_instance_profile.ray_head.arn
}

output "ray_worker_instance_profile_arn" {
  description = "Instance profile of the GPU worker nodes (snapshot bucket only)."
  value       = aws_iam_instance_profile.ray_worker.arn
}

output "ray_node_ami_id" {
  description = "AMI of all Ray nodes: var.ray_node_ami_id, pinned (NVIDIA driver preinstalled)."
  value       = var.ray_node_ami_id
}

output "snapshot_bucket_name" {
  description = "S3 bucket holding the snapshots."
  value       = aws_s3_bucket.snapshots.bucket
}

output "snapshot_bucket_arn" {
  description = "ARN of the snapshot bucket."
  value       = aws_s3_bucket.snapshots.arn
}

output "snapshot_store_url" {
  description = "fsspec URL of the snapshot store, for `thawline snapshot create --store` and serve configs."
  value       = "s3://${aws_s3_bucket.snapshots.bucket}/${var.snapshot_prefix}"
}

output "snapshot_kms_key_arn" {
  description = "KMS key encrypting the snapshot bucket."
  value       = aws_kms_key.thawline.arn
}

output "node_image" {
  description = "Node image of every Ray node (docker.image in aws-gpu.yaml); `make node-image NODE_IMAGE=...` pushes it."
  value       = "${aws_ecr_repository.node.repository_url}:${var.node_image_tag}"
}

output "node_image_registry" {
  description = "ECR registry host the nodes log in to before pulling the node image."
  value       = split("/", aws_ecr_repository.node.repository_url)[0]
}

output "gateway_target_group_arn" {
  description = "Target group of the gateway load balancer; the head registers itself in it."
  value       = aws_lb_target_group.gateway.arn
}

output "gateway_url" {
  description = "HTTPS URL of the gateway (point your DNS name for the ACM certificate at gateway_lb_dns_name)."
  value       = "https://${aws_lb.gateway.dns_name}"
}

output "gateway_lb_dns_name" {
  description = "DNS name of the gateway load balancer (CNAME your certificate's name to it)."
  value       = aws_lb.gateway.dns_name
}

output "node_secret_arn" {
  description = "Secrets Manager secret holding the nodes' environment (JSON of env var -> value); each node renders it at start (thawline cluster render-env)."
  value       = aws_secretsmanager_secret.node_env.arn
}

output "gateway_store_url" {
  description = "fsspec URL under which the gateway keeps its key store and cost ledger (THAWLINE_GATEWAY_STORE on the nodes)."
  value       = "s3://${aws_s3_bucket.snapshots.bucket}/${var.gateway_prefix}"
}
