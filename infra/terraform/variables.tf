variable "region" {
  description = "AWS region for the VPC, the snapshot bucket and the Ray nodes (cluster/aws-gpu.yaml reads it back as an output)."
  type        = string
  default     = "us-west-2"
}

variable "cluster_name" {
  description = "Ray cluster name; must equal cluster_name in cluster/aws-gpu.yaml, because the head's IAM policy may only terminate instances tagged ray-cluster-name=<this>."
  type        = string
  default     = "thawline"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.cluster_name))
    error_message = "cluster_name must be 2-31 characters of lowercase letters, digits and dashes, starting with a letter."
  }
}

variable "admin_cidr_blocks" {
  description = "CIDR blocks allowed to reach the head node's SSH (22) and Ray dashboard ports, e.g. your office or VPN egress. Never 0.0.0.0/0."
  type        = list(string)

  validation {
    condition     = length(var.admin_cidr_blocks) > 0 && alltrue([for c in var.admin_cidr_blocks : can(cidrhost(c, 0))])
    error_message = "admin_cidr_blocks must list at least one valid CIDR block."
  }

  validation {
    condition     = alltrue([for c in var.admin_cidr_blocks : !contains(["0.0.0.0/0", "::/0"], c)])
    error_message = "admin_cidr_blocks must not open SSH or the dashboard to the whole internet (0.0.0.0/0 or ::/0)."
  }
}

variable "dashboard_port" {
  description = "Ray dashboard port on the head node (also where `serve deploy` and the job API talk)."
  type        = number
  default     = 8265
}

variable "vpc_cidr" {
  description = "CIDR block of the VPC; public and private subnets are carved out of it."
  type        = string
  default     = "10.42.0.0/16"
}

variable "availability_zones" {
  description = "Availability zones for the subnets (pick zones that offer your GPU instance types); null means <region>a and <region>b."
  type        = list(string)
  default     = null

  validation {
    condition     = var.availability_zones == null ? true : (length(var.availability_zones) >= 1 && length(var.availability_zones) <= 4)
    error_message = "availability_zones must list 1 to 4 zones."
  }
}

variable "snapshot_bucket_name" {
  description = "Name of the S3 bucket that holds Thawline snapshots; null means <cluster_name>-snapshots-<account id>."
  type        = string
  default     = null
}

variable "snapshot_prefix" {
  description = "Key prefix inside the bucket under which snapshots are stored (the snapshot store URL is s3://<bucket>/<prefix>)."
  type        = string
  default     = "snapshots"
}

variable "snapshot_noncurrent_days" {
  description = "Days a replaced or deleted snapshot object version is kept before the lifecycle rule expires it."
  type        = number
  default     = 30
}

variable "snapshot_infrequent_access_days" {
  description = "Days after which snapshot objects move to STANDARD_IA (old snapshots are rarely restored, but stay restorable at the same latency)."
  type        = number
  default     = 60

  validation {
    condition     = var.snapshot_infrequent_access_days >= 30
    error_message = "S3 accepts STANDARD_IA transitions only after at least 30 days."
  }
}

variable "ray_node_ami_id" {
  description = "AMI id of every Ray node, pinned: an NVIDIA-driver AMI such as the Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) of your region, or your own AMI with the node image baked in. Choose it once with `aws ec2 describe-images` (infra/terraform/README.md, \"Choosing the AMI\") and change it deliberately: a new AMI brings a new driver."
  type        = string

  validation {
    condition     = can(regex("^ami-[0-9a-f]{8,17}$", var.ray_node_ami_id))
    error_message = "ray_node_ami_id must be an AMI id such as ami-0123456789abcdef0."
  }
}

variable "flow_log_retention_days" {
  description = "Days VPC flow logs are kept in CloudWatch Logs."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Extra tags applied to every resource."
  type        = map(string)
  default     = {}
}

variable "node_image_tag" {
  description = "Tag of the node image in the ECR repository (cluster/docker/Dockerfile); name the pinned versions in it. Tags are immutable."
  type        = string
  default     = "thawline0.1.0-vllm0.32.0-ray2.60.0"
}

variable "gateway_port" {
  description = "Port on the head node where the gateway replicas listen (args.listen.port of the gateway app in serve_apps/configs/aws-cluster.yaml)."
  type        = number
  default     = 8000
}

variable "gateway_certificate_arn" {
  description = "ACM certificate ARN for the gateway load balancer's HTTPS listener (TLS ends there)."
  type        = string
}

variable "gateway_cidr_blocks" {
  description = "CIDR blocks allowed to reach the gateway load balancer on 443 (your clients). Never 0.0.0.0/0."
  type        = list(string)

  validation {
    condition     = length(var.gateway_cidr_blocks) > 0 && alltrue([for c in var.gateway_cidr_blocks : can(cidrhost(c, 0)) && !contains(["0.0.0.0/0", "::/0"], c)])
    error_message = "gateway_cidr_blocks must list at least one valid CIDR block, and not 0.0.0.0/0 or ::/0."
  }
}

variable "gateway_prefix" {
  description = "Key prefix in the snapshot bucket under which the gateway keeps its key store (<prefix>/keys) and cost ledger (<prefix>/ledger)."
  type        = string
  default     = "gateway"
}
