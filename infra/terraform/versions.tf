terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.60"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge(var.tags, {
      "thawline:cluster" = var.cluster_name
      "managed-by"       = "terraform"
    })
  }
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  # Zones are named, not discovered, so the subnet layout never shifts when AWS adds a zone.
  azs = coalesce(var.availability_zones, ["${var.region}a", "${var.region}b"])
  # Globally unique by default: the account id keeps two accounts' clusters apart.
  snapshot_bucket_name = coalesce(var.snapshot_bucket_name, "${var.cluster_name}-snapshots-${local.account_id}")
}
