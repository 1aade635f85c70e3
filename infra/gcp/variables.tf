variable "project_id" {
  description = "Google Cloud project the services, secrets, scheduler job and database go in."
  type        = string
}

variable "region" {
  description = "Google Cloud region of the Cloud Run services, the Cloud Scheduler job and Cloud SQL, e.g. europe-west3."
  type        = string
  default     = "europe-west3"
}

variable "name_prefix" {
  description = "Prefix of every resource name (services, service accounts, secrets, job, database)."
  type        = string
  default     = "wholeimage"
}

variable "image" {
  description = "Image built from infra/Dockerfile, in Artifact Registry of this project, best by digest: europe-west3-docker.pkg.dev/PROJECT/REPO/wholeimage@sha256:..."
  type        = string
}

variable "cloud" {
  description = "Which cloud IMS is in (WHOLEIMAGE_CLOUD): huaweicloud or otc."
  type        = string
  default     = "huaweicloud"

  validation {
    condition     = contains(["huaweicloud", "otc"], var.cloud)
    error_message = "The cloud is huaweicloud or otc."
  }
}

variable "ims_region" {
  description = "Region of Huawei Cloud or Open Telekom Cloud the images are made in (WHOLEIMAGE_REGION), e.g. eu-de or ap-southeast-3."
  type        = string
}

variable "ims_project_id" {
  description = "IAM project id of that region (WHOLEIMAGE_PROJECT_ID)."
  type        = string
}

variable "ims_endpoint" {
  description = "IMS base URL (WHOLEIMAGE_IMS_ENDPOINT) when it is not the one derived from cloud and region; empty derives it."
  type        = string
  default     = ""
}

variable "log_level" {
  description = "WHOLEIMAGE_LOG_LEVEL: DEBUG, INFO, WARNING or ERROR."
  type        = string
  default     = "INFO"

  validation {
    condition     = contains(["DEBUG", "INFO", "WARNING", "ERROR"], var.log_level)
    error_message = "The log level is DEBUG, INFO, WARNING or ERROR."
  }
}

variable "extra_settings" {
  description = "More non-secret WHOLEIMAGE_* settings for all three services (see the README's settings table), e.g. { WHOLEIMAGE_WEBHOOK_ON = \"failures\" }."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for name in keys(var.extra_settings) : startswith(name, "WHOLEIMAGE_")])
    error_message = "Only WHOLEIMAGE_* settings go here."
  }
}

variable "webhook_enabled" {
  description = "Give check and notify the WHOLEIMAGE_WEBHOOK_URL secret (its value is added with gcloud, see the README)."
  type        = bool
  default     = true
}

variable "create_invokers" {
  description = "IAM members allowed to call create (roles/run.invoker), e.g. [\"serviceAccount:ci@PROJECT.iam.gserviceaccount.com\"]. They send an OIDC token in Authorization and the API token in X-Api-Token."
  type        = list(string)
  default     = []
}

variable "notify_invokers" {
  description = "IAM members allowed to call notify (roles/run.invoker)."
  type        = list(string)
  default     = []
}

variable "check_schedule" {
  description = "Cron schedule of the Cloud Scheduler job that calls check (unix-cron format)."
  type        = string
  default     = "* * * * *"
}

variable "check_time_zone" {
  description = "Time zone of the check schedule."
  type        = string
  default     = "Etc/UTC"
}

variable "max_instances" {
  description = "Most instances of the create and notify services at once."
  type        = number
  default     = 10
}

variable "deletion_protection" {
  description = "Refuse terraform destroy of the Cloud Run services and the Cloud SQL instance."
  type        = bool
  default     = true
}

variable "enable_apis" {
  description = "Enable the Google APIs this configuration uses (Cloud Run, Secret Manager, Cloud Scheduler, Cloud SQL Admin)."
  type        = bool
  default     = true
}

variable "enable_cloud_sql" {
  description = "Create a Cloud SQL for PostgreSQL instance for the state and store its URL in the state-url secret; false expects you to add that secret's value yourself."
  type        = bool
  default     = false
}

variable "cloud_sql_version" {
  description = "Cloud SQL database version: a PostgreSQL one, POSTGRES_<major> (documented: POSTGRES_9_6 to POSTGRES_18)."
  type        = string
  default     = "POSTGRES_18"

  validation {
    condition     = can(regex("^POSTGRES_[0-9]+(_[0-9]+)?$", var.cloud_sql_version))
    error_message = "The state store is PostgreSQL: the version is POSTGRES_<major>, e.g. POSTGRES_18."
  }
}

variable "cloud_sql_edition" {
  description = "Cloud SQL edition, ENTERPRISE or ENTERPRISE_PLUS. Always set: PostgreSQL 16+ would default to ENTERPRISE_PLUS, which refuses db-custom-* and shared-core tiers."
  type        = string
  default     = "ENTERPRISE"

  validation {
    condition     = contains(["ENTERPRISE", "ENTERPRISE_PLUS"], var.cloud_sql_edition)
    error_message = "The edition is ENTERPRISE or ENTERPRISE_PLUS."
  }
}

variable "cloud_sql_tier" {
  description = "Cloud SQL machine tier: db-custom-<vCPUs>-<MB> or shared-core with ENTERPRISE, db-perf-optimized-N-<vCPUs> with ENTERPRISE_PLUS."
  type        = string
  default     = "db-custom-1-3840"
}

variable "cloud_sql_availability" {
  description = "Cloud SQL availability type: ZONAL or REGIONAL (high availability)."
  type        = string
  default     = "ZONAL"

  validation {
    condition     = contains(["ZONAL", "REGIONAL"], var.cloud_sql_availability)
    error_message = "The availability type is ZONAL or REGIONAL."
  }
}
