# AWS: the PostgreSQL data volume as an EBS volume encrypted with a customer-managed KMS
# key, attached to the database instance; EBS encryption by default for the region; and
# the instance role's permission that ebk's preflight needs to prove it
# (ec2:DescribeVolumes: Encrypted, KmsKeyId).  A snippet: merge it into your configuration.
# Never run by this project (README.md).

# The provider version the 180-day key rotation needs (aws_kms_key.rotation_period_in_days).
# One terraform block per snippet, so each file also checks on its own.
terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.39"
    }
  }
}

variable "db_instance_id" {
  description = "EC2 instance that runs PostgreSQL"
  type        = string
}

variable "db_instance_role_name" {
  description = "IAM role of that instance's profile (ebk's preflight runs under it)"
  type        = string
}

variable "availability_zone" {
  description = "The instance's availability zone"
  type        = string
}

variable "pgdata_size_gib" {
  type    = number
  default = 200
}

# Rotated every 180 days, the key-management policy (docs/key-management.md): AWS keeps
# every old key version, so existing volumes and snapshots stay readable.
# rotation_period_in_days needs hashicorp/aws >= 5.39.
resource "aws_kms_key" "pgdata" {
  description             = "PostgreSQL data volumes (EBS)"
  enable_key_rotation     = true
  rotation_period_in_days = 180
  deletion_window_in_days = 30

  # Written out instead of AWS's implicit default: the account administers the key
  # through IAM, and EBS (for this account, in this region) may use it for volumes.
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdministersThroughIAM"
        Effect    = "Allow"
        Principal = { AWS = "arn:aws:iam::${data.aws_caller_identity.current.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        Sid       = "EbsUsesTheKey"
        Effect    = "Allow"
        Principal = { AWS = "*" }
        Action = [
          "kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
          "kms:CreateGrant", "kms:DescribeKey",
        ]
        Resource = "*"
        Condition = {
          StringEquals = {
            "kms:CallerAccount" = data.aws_caller_identity.current.account_id
            "kms:ViaService"    = "ec2.${data.aws_region.current.name}.amazonaws.com"
          }
        }
      },
    ]
  })
}

data "aws_caller_identity" "current" {}

data "aws_region" "current" {}

resource "aws_kms_alias" "pgdata" {
  name          = "alias/pgdata"
  target_key_id = aws_kms_key.pgdata.key_id
}

# Every new EBS volume and snapshot copy in this region is encrypted, with this key
# unless another is named: no unencrypted volume by accident (also for the EKS nodes).
resource "aws_ebs_encryption_by_default" "this" {
  enabled = true
}

resource "aws_ebs_default_kms_key" "this" {
  key_arn = aws_kms_key.pgdata.arn
}

resource "aws_ebs_volume" "pgdata" {
  availability_zone = var.availability_zone
  size              = var.pgdata_size_gib
  type              = "gp3"
  encrypted         = true
  kms_key_id        = aws_kms_key.pgdata.arn

  tags = {
    Name    = "pgdata"
    purpose = "postgresql-data"
  }
}

resource "aws_volume_attachment" "pgdata" {
  device_name = "/dev/sdf" # an NVMe namespace on Nitro: /dev/nvme1n1, serial = volume id
  volume_id   = aws_ebs_volume.pgdata.id
  instance_id = var.db_instance_id
}

# ebk's preflight maps the NVMe serial to the volume id and asks EC2 whether it is
# encrypted and with which key.  Read-only, and only this one call.
resource "aws_iam_role_policy" "ebk_preflight" {
  name = "ebk-preflight-describe-volumes"
  role = var.db_instance_role_name
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = ["ec2:DescribeVolumes"]
      Resource = "*" # DescribeVolumes does not support resource-level permissions
    }]
  })
}

output "pgdata_volume_id" {
  value = aws_ebs_volume.pgdata.id
}

output "pgdata_kms_key_arn" {
  description = "Also the kmsKeyId of infra/kubernetes/storage/aws-ebs/storage-keys.env"
  value       = aws_kms_key.pgdata.arn
}
