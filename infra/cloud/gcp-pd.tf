# Google Cloud: the PostgreSQL data disk as a persistent disk encrypted with a Cloud KMS
# key (CMEK) instead of a Google-managed key, attached to the database VM, and the VM
# service account's read access that ebk's preflight needs to report the key
# (compute.instances.get, compute.disks.get).  A snippet: merge it into your
# configuration.  Never run by this project (README.md).

# The provider version the 180-day key rotation needs (google_kms_crypto_key.rotation_period).
# One terraform block per snippet, so each file also checks on its own.
terraform {
  required_version = ">= 1.5"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0"
    }
  }
}

variable "project_id" {
  type = string
}

variable "region" {
  type    = string
  default = "europe-west1"
}

variable "zone" {
  type    = string
  default = "europe-west1-b"
}

variable "db_instance_name" {
  description = "Compute Engine VM that runs PostgreSQL"
  type        = string
}

variable "db_instance_service_account" {
  description = "Email of that VM's service account (ebk's preflight runs under it)"
  type        = string
}

variable "pgdata_size_gb" {
  type    = number
  default = 200
}

data "google_project" "this" {
  project_id = var.project_id
}

resource "google_kms_key_ring" "pgdata" {
  project  = var.project_id
  name     = "pgdata"
  location = var.region
}

resource "google_kms_crypto_key" "pgdata" {
  #checkov:skip=CKV_GCP_43:180-day rotation is this project's key policy (docs/key-management.md); rotation re-wraps no disk, old versions stay enabled
  name            = "pgdata"
  key_ring        = google_kms_key_ring.pgdata.id
  rotation_period = "15552000s" # 180 days (the policy); existing disks keep working

  lifecycle {
    prevent_destroy = true # destroying the key destroys every disk encrypted with it
  }
}

# Compute Engine encrypts and decrypts the disk through its service agent.
resource "google_kms_crypto_key_iam_member" "compute_agent" {
  crypto_key_id = google_kms_crypto_key.pgdata.id
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:service-${data.google_project.this.number}@compute-system.iam.gserviceaccount.com"
}

resource "google_compute_disk" "pgdata" {
  project = var.project_id
  name    = "pgdata"
  zone    = var.zone
  type    = "pd-ssd"
  size    = var.pgdata_size_gb

  disk_encryption_key {
    kms_key_self_link = google_kms_crypto_key.pgdata.id
  }

  depends_on = [google_kms_crypto_key_iam_member.compute_agent]
}

resource "google_compute_attached_disk" "pgdata" {
  project     = var.project_id
  disk        = google_compute_disk.pgdata.id
  instance    = "projects/${var.project_id}/zones/${var.zone}/instances/${var.db_instance_name}"
  device_name = "pgdata" # -> /dev/disk/by-id/google-pgdata, how ebk's preflight finds the disk
}

# Read-only view of instances and disks for the preflight (compute.viewer is the
# smallest predefined role holding compute.instances.get and compute.disks.get).
resource "google_project_iam_member" "ebk_preflight" {
  project = var.project_id
  role    = "roles/compute.viewer"
  member  = "serviceAccount:${var.db_instance_service_account}"
}

output "pgdata_kms_key" {
  description = "Also the disk-encryption-kms-key of infra/kubernetes/storage/gce-pd/storage-keys.env"
  value       = google_kms_crypto_key.pgdata.id
}
