terraform {
  required_version = ">= 1.5.0"

  required_providers {
    # 1.80 or later: custom_image with code_type (1.79.2), delegated_domain_name = op_svc_*
    # (1.69.0) and apig_group_domain_associate (1.73.4) need it; arguments are checked against
    # the docs of 1.80.0 and 1.97.1 (tests/data/infra/provider-docs.json).
    huaweicloud = {
      source  = "huaweicloud/huaweicloud"
      version = "~> 1.80"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6" # docs of 3.6.0 and 3.9.0 checked
    }
  }
}

# Credentials of whoever runs Terraform come from the provider's own environment variables
# (HW_ACCESS_KEY, HW_SECRET_KEY, or a profile): never from this configuration.
# https://registry.terraform.io/providers/huaweicloud/huaweicloud/1.97.1/docs
provider "huaweicloud" {
  region = var.region
}
