terraform {
  required_version = ">= 1.5.0"

  required_providers {
    # 7.22 or later: the first release whose docs list POSTGRES_18; arguments are checked against
    # the docs of 7.22.0 and 7.45.0 (tests/data/infra/provider-docs.json).
    google = {
      source  = "hashicorp/google"
      version = ">= 7.22, < 8.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6" # docs of 3.6.0 and 3.9.0 checked
    }
  }
}

# Credentials come from Application Default Credentials (gcloud auth application-default login,
# or the CI's workload identity): never from this configuration.
# https://registry.terraform.io/providers/hashicorp/google/7.45.0/docs/guides/provider_reference
provider "google" {
  project = var.project_id
  region  = var.region
}
