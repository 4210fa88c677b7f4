# Azure: the PostgreSQL data disk as a managed disk encrypted with a customer-managed
# Key Vault key through a disk encryption set, attached to the database VM, and the VM
# identity's read access that ebk's preflight needs to report the key
# (Microsoft.Compute/disks/read).  A snippet: merge it into your configuration.
# Never run by this project (README.md).

# The provider version the 180-day key rotation needs (azurerm_key_vault_key.rotation_policy).
# One terraform block per snippet, so each file also checks on its own.
terraform {
  required_version = ">= 1.5"
  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = ">= 3.44"
    }
  }
}

variable "resource_group_name" {
  type = string
}

variable "location" {
  type    = string
  default = "westeurope"
}

variable "db_vm_id" {
  description = "Resource id of the VM that runs PostgreSQL"
  type        = string
}

variable "db_vm_principal_id" {
  description = "Principal id of that VM's managed identity (ebk's preflight runs under it)"
  type        = string
}

variable "pgdata_size_gb" {
  type    = number
  default = 200
}

variable "key_vault_admin_cidrs" {
  description = "Public addresses (CIDR) allowed to the Key Vault's data plane: where Terraform runs"
  type        = list(string)
  default     = []
}

data "azurerm_client_config" "current" {}

resource "azurerm_key_vault" "pgdata" {
  name                       = "pgdata-kv"
  location                   = var.location
  resource_group_name        = var.resource_group_name
  tenant_id                  = data.azurerm_client_config.current.tenant_id
  sku_name                   = "premium"
  purge_protection_enabled   = true # required for disk encryption sets
  soft_delete_retention_days = 90
  enable_rbac_authorization  = true

  # Reachable only by trusted Azure services (the disk encryption set is one) and the
  # addresses that run Terraform (data plane: it creates the key).
  network_acls {
    default_action = "Deny"
    bypass         = "AzureServices"
    ip_rules       = var.key_vault_admin_cidrs
  }

  #checkov:skip=CKV_AZURE_189:Terraform must reach the data plane to create the key; network_acls deny everything else
  #checkov:skip=CKV2_AZURE_32:a private endpoint needs your VNet and DNS zone; add one when the snippet is merged (infra/README.md)
}

resource "azurerm_key_vault_key" "pgdata" {
  #checkov:skip=CKV_AZURE_40:every version expires through rotation_policy.expire_after; a fixed expiration_date would stop the rotation
  name         = "pgdata"
  key_vault_id = azurerm_key_vault.pgdata.id
  key_type     = "RSA-HSM"
  key_size     = 3072
  key_opts     = ["wrapKey", "unwrapKey"]

  # A new key version every 180 days (the key-management policy); the disk encryption
  # set below follows the newest version by itself (auto_key_rotation_enabled).  A
  # version expires a year after it was created: half a year after it was replaced,
  # long after the disk encryption set has moved on.  Needs hashicorp/azurerm >= 3.44.
  rotation_policy {
    automatic {
      time_after_create = "P180D"
    }
    expire_after         = "P365D"
    notify_before_expiry = "P30D"
  }
}

resource "azurerm_disk_encryption_set" "pgdata" {
  name                      = "pgdata-des"
  location                  = var.location
  resource_group_name       = var.resource_group_name
  key_vault_key_id          = azurerm_key_vault_key.pgdata.versionless_id
  encryption_type           = "EncryptionAtRestWithCustomerKey"
  auto_key_rotation_enabled = true

  identity {
    type = "SystemAssigned"
  }
}

# The disk encryption set wraps and unwraps the disks' keys with the Key Vault key.
resource "azurerm_role_assignment" "des_crypto" {
  scope                = azurerm_key_vault.pgdata.id
  role_definition_name = "Key Vault Crypto Service Encryption User"
  principal_id         = azurerm_disk_encryption_set.pgdata.identity[0].principal_id
}

resource "azurerm_managed_disk" "pgdata" {
  name                          = "pgdata"
  location                      = var.location
  resource_group_name           = var.resource_group_name
  storage_account_type          = "Premium_LRS"
  create_option                 = "Empty"
  disk_size_gb                  = var.pgdata_size_gb
  disk_encryption_set_id        = azurerm_disk_encryption_set.pgdata.id
  network_access_policy         = "DenyAll"
  public_network_access_enabled = false

  depends_on = [azurerm_role_assignment.des_crypto]
}

resource "azurerm_virtual_machine_data_disk_attachment" "pgdata" {
  managed_disk_id    = azurerm_managed_disk.pgdata.id
  virtual_machine_id = var.db_vm_id
  lun                = 10 # -> /dev/disk/azure/scsi1/lun10, how ebk's preflight finds the disk
  caching            = "None"
}

# Read the disk resource (its encryption type and disk encryption set) for the preflight.
resource "azurerm_role_assignment" "ebk_preflight" {
  scope                = azurerm_managed_disk.pgdata.id
  role_definition_name = "Reader"
  principal_id         = var.db_vm_principal_id
}

output "pgdata_disk_encryption_set_id" {
  description = "Also the diskEncryptionSetID of infra/kubernetes/storage/azure-disk/storage-keys.env"
  value       = azurerm_disk_encryption_set.pgdata.id
}
