# One security group for every Ray node. Ray's ports (GCS, raylets, object manager, workers,
# NCCL/EFA between GPU nodes) are open only between members of the group; from outside, only SSH
# and the dashboard, and only from admin_cidr_blocks (whose validation rejects 0.0.0.0/0).

resource "aws_security_group" "ray_nodes" {
  name        = "${var.cluster_name}-ray-nodes"
  description = "Ray nodes of ${var.cluster_name}: Ray ports within the group, SSH/dashboard from the admin allowlist"
  vpc_id      = aws_vpc.this.id
  #checkov:skip=CKV2_AWS_5:Attached outside Terraform: the Ray cluster launcher puts every node in it (SecurityGroupIds in aws-gpu.yaml).

  ingress {
    description = "All Ray traffic between nodes of this cluster (GCS, raylet, object manager, workers, NCCL)"
    protocol    = "-1"
    from_port   = 0
    to_port     = 0
    self        = true
  }

  ingress {
    description = "SSH for ray up / ray attach from the admin allowlist"
    protocol    = "tcp"
    from_port   = 22
    to_port     = 22
    cidr_blocks = var.admin_cidr_blocks
  }

  ingress {
    description = "Ray dashboard and job/serve REST API from the admin allowlist"
    protocol    = "tcp"
    from_port   = var.dashboard_port
    to_port     = var.dashboard_port
    cidr_blocks = var.admin_cidr_blocks
  }

  #checkov:skip=CKV_AWS_382:Nodes install pinned packages from PyPI and fetch model sources at snapshot time; inbound stays allowlisted.
  egress {
    description = "Outbound: package installs through the NAT, S3 through the gateway endpoint"
    protocol    = "-1"
    from_port   = 0
    to_port     = 0
    cidr_blocks = ["0.0.0.0/0"]
  }

  tags = { Name = "${var.cluster_name}-ray-nodes" }
}
