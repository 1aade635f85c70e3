terraform {
  required_version = ">= 1.5.0"

  required_providers {
    huaweicloud = {
      source  = "huaweicloud/huaweicloud"
      version = "~> 1.64"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }
}

# Credentials of whoever runs Terraform come from the provider's own environment variables
# (HW_ACCESS_KEY, HW_SECRET_KEY, or a profile): never from this configuration.
provider "huaweicloud" {
  region = var.region
}
