variable "region" {
  description = "Huawei Cloud region the functions run in and the images are made in, e.g. ap-southeast-3."
  type        = string
}

variable "project_id" {
  description = "IAM project id of that region (32 hex characters, \"My Credentials\"): becomes WHOLEIMAGE_PROJECT_ID."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-zA-Z]{1,64}$", var.project_id))
    error_message = "The project id is letters and digits (32 hex characters on Huawei Cloud)."
  }
}

variable "name_prefix" {
  description = "Prefix of every resource name (functions, agency, API group, database)."
  type        = string
  default     = "wholeimage"
}

variable "image_url" {
  description = "SWR address of the image built from infra/Dockerfile, e.g. swr.ap-southeast-3.myhuaweicloud.com/org/wholeimage:0.1.0 (FunctionGraph requires an SWR image)."
  type        = string

  validation {
    condition     = startswith(var.image_url, "swr.")
    error_message = "FunctionGraph pulls custom images from SWR only: the URL starts with swr."
  }
}

variable "app" {
  description = "FunctionGraph application (function group) the three functions belong to."
  type        = string
  default     = "default"
}

variable "agency_name" {
  description = "Existing agency delegated to FunctionGraph (op_svc_cff) to use instead of the one this configuration creates; it must hold SWR Admin and the image roles (agency_image_roles) itself. Empty creates one."
  type        = string
  default     = ""
}

variable "memory_size" {
  description = "Memory of each function in MB."
  type        = number
  default     = 256
}

variable "http_timeout" {
  description = "Timeout of the create and notify functions in seconds."
  type        = number
  default     = 60

  validation {
    condition     = var.http_timeout >= 3 && var.http_timeout <= 259200
    error_message = "FunctionGraph timeouts are 3 to 259200 seconds (fgs_function docs, timeout)."
  }
}

variable "check_timeout" {
  description = "Timeout of the check function in seconds; keep it above WHOLEIMAGE_CHECK_TIME_BUDGET (120) plus one IMS timeout."
  type        = number
  default     = 180

  validation {
    condition     = var.check_timeout >= 3 && var.check_timeout <= 259200
    error_message = "FunctionGraph timeouts are 3 to 259200 seconds (fgs_function docs, timeout)."
  }
}

variable "max_instances" {
  description = "Most instances of each function at once (FunctionGraph v2)."
  type        = number
  default     = 20

  validation {
    condition     = var.max_instances >= -1 && var.max_instances <= 1000
    error_message = "max_instance_num is -1 (unlimited) to 1000 (fgs_function docs)."
  }
}

variable "concurrency" {
  description = "Requests one instance of create or notify serves at once (HTTP functions on FunctionGraph v2)."
  type        = number
  default     = 8

  validation {
    condition     = var.concurrency >= 1 && var.concurrency <= 1000
    error_message = "concurrency_num is 1 to 1000 (fgs_function docs)."
  }
}

variable "apig_instance_id" {
  description = "ID of the dedicated API Gateway (APIG) instance that exposes create and notify."
  type        = string
}

variable "apig_domain" {
  description = "Domain bound to the API group for callers (its DNS a CNAME of the group's sub-domain, output apig_subdomain; an SSL certificate bound in APIG for HTTPS); empty enables and uses the group's debugging domain instead."
  type        = string
  default     = ""
}

variable "check_schedule" {
  description = "How often the timer trigger runs check, as a FunctionGraph Rate schedule (e.g. 1m, 5m)."
  type        = string
  default     = "1m"
}

variable "access_key" {
  description = "AK of the IAM user check polls IMS with (IMS job and image reads): becomes check's HUAWEICLOUD_SDK_AK, in encrypted environment variables. Needed unless check_auth_in_header; create never gets it (it uses the agency's temporary keys)."
  type        = string
  sensitive   = true
  default     = ""
}

variable "secret_key" {
  description = "SK of that IAM user: becomes check's HUAWEICLOUD_SDK_SK, in encrypted environment variables. Needed unless check_auth_in_header."
  type        = string
  sensitive   = true
  default     = ""
}

variable "check_auth_in_header" {
  description = "Give check the agency's temporary keys in request headers (enable_auth_in_header) instead of access_key/secret_key. No documentation says a timer delivers them (README, credentials): without them every tick answers 500 misconfigured."
  type        = bool
  default     = false
}

variable "agency_image_roles" {
  description = "System roles or policies the created agency gets in the region's project for the images, beside SWR Admin (and VPC Administrator with enable_rds): what create's temporary keys may do."
  type        = list(string)
  default     = ["IMS FullAccess", "ECS ReadOnlyAccess", "CBR FullAccess"]
}

variable "api_token" {
  description = "Bearer token callers of create and notify must present (WHOLEIMAGE_API_TOKEN); at least 32 random characters."
  type        = string
  sensitive   = true

  validation {
    condition     = length(var.api_token) >= 32
    error_message = "Use at least 32 random characters for the API token."
  }
}

variable "webhook_url" {
  description = "Chat or webhook URL verdicts go to (WHOLEIMAGE_WEBHOOK_URL); empty sends none."
  type        = string
  sensitive   = true
  default     = ""
}

variable "state_url" {
  description = "postgresql:// URL of an existing database (WHOLEIMAGE_STATE_URL), used when enable_rds is false. FunctionGraph instances share no disk, so SQLite does not fit."
  type        = string
  sensitive   = true
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
  description = "More non-secret WHOLEIMAGE_* settings for all three functions (see the README's settings table), e.g. { WHOLEIMAGE_WEBHOOK_ON = \"failures\" }."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for name in keys(var.extra_settings) : startswith(name, "WHOLEIMAGE_")])
    error_message = "Only WHOLEIMAGE_* settings go here."
  }
}

variable "enable_rds" {
  description = "Create an RDS for PostgreSQL instance for the state and connect the functions to its VPC."
  type        = bool
  default     = false
}

variable "vpc_id" {
  description = "VPC of the RDS instance and of the functions' VPC access (with enable_rds)."
  type        = string
  default     = ""
}

variable "subnet_id" {
  description = "Subnet (network id) in that VPC for the RDS instance and the functions (with enable_rds)."
  type        = string
  default     = ""
}

variable "security_group_id" {
  description = "Security group of the RDS instance; it must let the functions' subnet reach port 5432 (with enable_rds)."
  type        = string
  default     = ""
}

variable "availability_zone" {
  description = "Availability zone of the RDS instance, e.g. ap-southeast-3a (with enable_rds)."
  type        = string
  default     = ""
}

variable "rds_flavor" {
  description = "RDS for PostgreSQL flavor (specification code), e.g. rds.pg.n1.large.2."
  type        = string
  default     = "rds.pg.n1.large.2"
}

variable "rds_version" {
  description = "PostgreSQL major version of the RDS instance."
  type        = string
  default     = "16"
}

variable "rds_volume_size" {
  description = "RDS storage in GB (40 to 4000, a multiple of 10)."
  type        = number
  default     = 40

  validation {
    condition     = var.rds_volume_size >= 40 && var.rds_volume_size <= 4000 && var.rds_volume_size % 10 == 0
    error_message = "RDS storage is 40 to 4000 GB, a multiple of 10 (rds_instance docs, volume.size)."
  }
}

variable "rds_backup_keep_days" {
  description = "Days automated RDS backups are kept."
  type        = number
  default     = 7

  validation {
    condition     = var.rds_backup_keep_days >= 0 && var.rds_backup_keep_days <= 732
    error_message = "RDS keeps backups 0 to 732 days (rds_instance docs, backup_strategy.keep_days)."
  }
}

variable "rds_sslmode" {
  description = "libpq sslmode of the state URL built for the RDS instance (require, verify-ca, verify-full)."
  type        = string
  default     = "require"

  validation {
    condition     = contains(["require", "verify-ca", "verify-full"], var.rds_sslmode)
    error_message = "rds_sslmode is require, verify-ca or verify-full."
  }
}
