terraform {
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 8.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }
}

# Credentials come from Application Default Credentials (gcloud auth application-default login,
# or the CI's workload identity): never from this configuration.
provider "google" {
  project = var.project_id
  region  = var.region
}
