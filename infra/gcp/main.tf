# wholeimage on Google Cloud: three Cloud Run services from one image (infra/Dockerfile), check
# called by Cloud Scheduler with an OIDC ID token that wholeimage verifies itself, secrets from
# Secret Manager, optional Cloud SQL.
#
# Every argument below is one the pinned provider documents (versions.tf); the page of each
# resource is named above it. tests/system/test_infra.py checks them against those pages, frozen
# in tests/data/infra/provider-docs.json (no provider can be downloaded where the tests run).

locals {
  # cloudresourcemanager: data.google_project reads the project number through it.
  apis = concat(
    ["run.googleapis.com", "secretmanager.googleapis.com", "cloudscheduler.googleapis.com", "iam.googleapis.com", "cloudresourcemanager.googleapis.com"],
    var.enable_cloud_sql ? ["sqladmin.googleapis.com"] : [],
  )

  # One Secret Manager secret per secret setting. hwc-ak, hwc-sk and webhook-url get their values
  # from gcloud (README), so they never pass through Terraform; api-token is generated here, and
  # state-url too when Cloud SQL is created here.
  secrets = merge(
    {
      "hwc-ak"    = "HUAWEICLOUD_SDK_AK"
      "hwc-sk"    = "HUAWEICLOUD_SDK_SK"
      "api-token" = "WHOLEIMAGE_API_TOKEN"
      "state-url" = "WHOLEIMAGE_STATE_URL"
    },
    var.webhook_enabled ? { "webhook-url" = "WHOLEIMAGE_WEBHOOK_URL" } : {},
  )

  # Each service gets only the secrets it uses: notify never calls IMS, create never notifies.
  services = {
    create = {
      secrets = ["hwc-ak", "hwc-sk", "api-token", "state-url"]
      timeout = "60s"
      max     = var.max_instances
    }
    check = {
      secrets = concat(["hwc-ak", "hwc-sk", "api-token", "state-url"], var.webhook_enabled ? ["webhook-url"] : [])
      timeout = "300s"
      max     = 2
    }
    notify = {
      secrets = concat(["api-token", "state-url"], var.webhook_enabled ? ["webhook-url"] : [])
      timeout = "120s"
      max     = var.max_instances
    }
  }

  # The services Google's own callers reach with an OIDC ID token, which wholeimage verifies
  # (WHOLEIMAGE_OIDC_AUDIENCE, WHOLEIMAGE_OIDC_SERVICE_ACCOUNTS; docs/platforms.md §2): only
  # check, called by Cloud Scheduler (no Pub/Sub push here). Cloud Run's own invoker check is off
  # on them, since it would strip the token's signature before wholeimage sees it
  # (docs/platforms.md §2.3).
  # The audience is check's deterministic URL, https://SERVICE-PROJECT_NUMBER.REGION.run.app
  # (Cloud Run, "Deterministic URL"): known before the service exists, so the service can carry
  # it without a cycle (its own uri would be one). Only the scheduler and wholeimage compare it,
  # so it holds even where Cloud Run assigns no such URL (a DNS label over 63 characters).
  oidc = {
    check = {
      audience = "https://${var.name_prefix}-check-${data.google_project.this.number}.${var.region}.run.app"
      accounts = [google_service_account.scheduler.email]
    }
  }

  settings = merge(
    var.extra_settings,
    {
      WHOLEIMAGE_CLOUD      = var.cloud
      WHOLEIMAGE_REGION     = var.ims_region
      WHOLEIMAGE_PROJECT_ID = var.ims_project_id
      WHOLEIMAGE_LOG_LEVEL  = var.log_level
      # Cloud Run sets no X-CFF-* credential headers, and check now admits callers without IAM:
      # never read them (docs/platform-credentials.md §2).
      WHOLEIMAGE_PLATFORM_CREDENTIALS = "off"
    },
    var.ims_endpoint == "" ? {} : { WHOLEIMAGE_IMS_ENDPOINT = var.ims_endpoint },
  )

  # Per service: the settings above, and the OIDC pair on the services in local.oidc.
  service_settings = {
    for name in keys(local.services) : name => merge(
      local.settings,
      contains(keys(local.oidc), name) ? {
        WHOLEIMAGE_OIDC_AUDIENCE         = local.oidc[name].audience
        WHOLEIMAGE_OIDC_SERVICE_ACCOUNTS = join(",", local.oidc[name].accounts)
      } : {},
    )
  }

  secret_access = merge([
    for service, spec in local.services : {
      for secret in spec.secrets : "${service}/${secret}" => { service = service, secret = secret }
    }
  ]...)

  # Keys are known at plan time: one binding per caller. check has none: its invoker check is
  # off, and wholeimage admits the scheduler by its ID token.
  invoker_bindings = merge(
    { for member in var.create_invokers : "create/${member}" => { service = "create", member = member } },
    { for member in var.notify_invokers : "notify/${member}" => { service = "notify", member = member } },
  )

  cloud_sql_connection = var.enable_cloud_sql ? google_sql_database_instance.state[0].connection_name : null
}

# The project number, for check's deterministic URL (local.oidc). Read after the APIs are enabled.
# https://registry.terraform.io/providers/hashicorp/google/7.45.0/docs/data-sources/project
data "google_project" "this" {
  project_id = var.project_id

  depends_on = [google_project_service.apis]
}

# https://registry.terraform.io/providers/hashicorp/google/7.45.0/docs/resources/google_project_service
resource "google_project_service" "apis" {
  for_each = var.enable_apis ? toset(local.apis) : toset([])

  service            = each.value
  disable_on_destroy = false
}

# One service account per function, and one for the scheduler: each holds only what it needs.
# https://registry.terraform.io/providers/hashicorp/google/7.45.0/docs/resources/google_service_account
resource "google_service_account" "function" {
  for_each = local.services

  account_id   = "${var.name_prefix}-${each.key}"
  display_name = "wholeimage ${each.key} (Cloud Run runtime)"
}

# https://registry.terraform.io/providers/hashicorp/google/7.45.0/docs/resources/google_service_account
resource "google_service_account" "scheduler" {
  account_id   = "${var.name_prefix}-scheduler"
  display_name = "wholeimage Cloud Scheduler caller of check (OIDC, verified by wholeimage)"
}

# https://registry.terraform.io/providers/hashicorp/google/7.45.0/docs/resources/secret_manager_secret
resource "google_secret_manager_secret" "setting" {
  for_each = local.secrets

  secret_id = "${var.name_prefix}-${each.key}"
  labels    = { app = "wholeimage" }

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

# https://registry.terraform.io/providers/hashicorp/google/7.45.0/docs/resources/secret_manager_secret_iam
resource "google_secret_manager_secret_iam_member" "access" {
  for_each = local.secret_access

  secret_id = google_secret_manager_secret.setting[each.value.secret].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.function[each.value.service].email}"
}

# The API token: generated, kept in Secret Manager, for the callers of create and notify (and of
# check, besides the scheduler). The scheduler sends none: its OIDC ID token is enough.
# https://registry.terraform.io/providers/hashicorp/random/3.9.0/docs/resources/password
resource "random_password" "api_token" {
  length  = 48
  special = false
}

# https://registry.terraform.io/providers/hashicorp/google/7.45.0/docs/resources/secret_manager_secret_version
resource "google_secret_manager_secret_version" "api_token" {
  secret      = google_secret_manager_secret.setting["api-token"].id
  secret_data = random_password.api_token.result
}

# https://registry.terraform.io/providers/hashicorp/google/7.45.0/docs/resources/cloud_run_v2_service
resource "google_cloud_run_v2_service" "function" {
  for_each = local.services

  name                = "${var.name_prefix}-${each.key}"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_ALL" # callers are authenticated by IAM (run.invoker) or by wholeimage itself (local.oidc)
  deletion_protection = var.deletion_protection
  # Off where wholeimage verifies the ID tokens itself: Cloud Run's check would strip their
  # signature (docs/platforms.md §2.3). Those services admit only the API token and the tokens of
  # WHOLEIMAGE_OIDC_SERVICE_ACCOUNTS.
  invoker_iam_disabled = contains(keys(local.oidc), each.key)

  template {
    service_account = google_service_account.function[each.key].email
    timeout         = each.value.timeout

    scaling {
      max_instance_count = each.value.max
    }

    dynamic "volumes" {
      for_each = var.enable_cloud_sql ? [1] : []
      content {
        name = "cloudsql"
        cloud_sql_instance {
          instances = [local.cloud_sql_connection]
        }
      }
    }

    containers {
      # The image's CMD: functions-framework --source functions/main.py --target $FUNCTION_TARGET
      image = var.image

      ports {
        container_port = 8080
      }

      env {
        name  = "FUNCTION_TARGET"
        value = each.key
      }

      dynamic "env" {
        for_each = local.service_settings[each.key]
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "env" {
        for_each = toset(each.value.secrets)
        content {
          name = local.secrets[env.value]
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.setting[env.value].secret_id
              version = "latest"
            }
          }
        }
      }

      resources {
        limits = {
          cpu    = "1"
          memory = "512Mi"
        }
        cpu_idle          = true
        startup_cpu_boost = true
      }

      dynamic "volume_mounts" {
        for_each = var.enable_cloud_sql ? [1] : []
        content {
          name       = "cloudsql"
          mount_path = "/cloudsql"
        }
      }
    }
  }

  depends_on = [
    google_project_service.apis,
    google_secret_manager_secret_iam_member.access,
    google_secret_manager_secret_version.api_token,
    google_secret_manager_secret_version.state_url,
  ]
}

# https://registry.terraform.io/providers/hashicorp/google/7.45.0/docs/resources/cloud_run_v2_service_iam
resource "google_cloud_run_v2_service_iam_member" "invoker" {
  for_each = local.invoker_bindings

  name     = google_cloud_run_v2_service.function[each.value.service].name
  location = var.region
  role     = "roles/run.invoker"
  member   = each.value.member
}

# check every minute: POST with an OIDC ID token for the audience wholeimage expects, and no
# other credential (the API token would sit in the job's configuration and in the state).
# No retries: the next tick comes anyway, and an overlapping retry only finds leased jobs.
# https://registry.terraform.io/providers/hashicorp/google/7.45.0/docs/resources/cloud_scheduler_job
resource "google_cloud_scheduler_job" "check" {
  name             = "${var.name_prefix}-check"
  description      = "wholeimage check: one tick over the due IMS jobs"
  schedule         = var.check_schedule
  time_zone        = var.check_time_zone
  region           = var.region
  attempt_deadline = "180s"

  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = google_cloud_run_v2_service.function["check"].uri
    headers = {
      "Content-Type" = "application/json"
    }
    body = base64encode("{}")

    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = local.oidc["check"].audience
    }
  }
}

# Optional state store: Cloud SQL for PostgreSQL, reached over the Cloud SQL connector's unix
# socket (/cloudsql/<connection name>), never over an open network.
# https://registry.terraform.io/providers/hashicorp/random/3.9.0/docs/resources/password
resource "random_password" "database" {
  count = var.enable_cloud_sql ? 1 : 0

  length  = 32
  special = false # goes into a URL unescaped
}

# https://registry.terraform.io/providers/hashicorp/google/7.45.0/docs/resources/sql_database_instance
resource "google_sql_database_instance" "state" {
  count = var.enable_cloud_sql ? 1 : 0

  # checkov:skip=CKV_GCP_60: the public IP has no authorized networks; Cloud Run reaches it only through the Cloud SQL connector (IAM + TLS). A private IP needs a VPC and Direct VPC egress, beyond this module
  # checkov:skip=CKV2_GCP_13: log_duration logs every statement, and each check tick runs many; slow ones are what matter (set log_min_duration_statement to the ms you care about)
  name                = "${var.name_prefix}-state"
  region              = var.region
  database_version    = var.cloud_sql_version
  deletion_protection = var.deletion_protection

  settings {
    # PostgreSQL 16 and later default to ENTERPRISE_PLUS when edition is unset, and that edition
    # takes only db-perf-optimized-N-* tiers: a shared-core or db-custom-* tier then fails at
    # create time ("Invalid Tier ... for (ENTERPRISE_PLUS) Edition"; sql_database_instance docs,
    # settings.edition). So the edition is always given, and checked against the tier below.
    edition           = var.cloud_sql_edition
    tier              = var.cloud_sql_tier
    availability_type = var.cloud_sql_availability
    disk_autoresize   = true

    ip_configuration {
      ipv4_enabled = true
      # The Cloud SQL connector always presents a client certificate; nothing else may connect.
      ssl_mode = "TRUSTED_CLIENT_CERTIFICATE_REQUIRED"
    }

    backup_configuration {
      enabled                        = true
      point_in_time_recovery_enabled = true
    }

    database_flags {
      name  = "log_checkpoints"
      value = "on"
    }
    database_flags {
      name  = "log_connections"
      value = "on"
    }
    database_flags {
      name  = "log_disconnections"
      value = "on"
    }
    database_flags {
      name  = "log_lock_waits"
      value = "on"
    }
    database_flags {
      name  = "log_min_messages"
      value = "error"
    }
    database_flags {
      name  = "log_temp_files"
      value = "0"
    }
    database_flags {
      name  = "log_min_duration_statement"
      value = "-1"
    }
    database_flags {
      name  = "log_min_error_statement"
      value = "error"
    }
    database_flags {
      name  = "log_hostname"
      value = "on"
    }
    database_flags {
      name  = "log_statement"
      value = "ddl" # the migrations only: the functions run no DDL otherwise
    }
    database_flags {
      name  = "cloudsql.enable_pgaudit"
      value = "on"
    }
  }

  lifecycle {
    precondition {
      condition     = var.cloud_sql_edition == "ENTERPRISE" || !can(regex("^db-(custom-|f1-micro$|g1-small$)", var.cloud_sql_tier))
      error_message = "ENTERPRISE_PLUS takes only db-perf-optimized-N-* tiers: use cloud_sql_edition = \"ENTERPRISE\" with a db-custom-* or shared-core tier."
    }
  }

  depends_on = [google_project_service.apis]
}

# https://registry.terraform.io/providers/hashicorp/google/7.45.0/docs/resources/sql_database
resource "google_sql_database" "wholeimage" {
  count = var.enable_cloud_sql ? 1 : 0

  name     = replace(var.name_prefix, "-", "_")
  instance = google_sql_database_instance.state[0].name
}

# https://registry.terraform.io/providers/hashicorp/google/7.45.0/docs/resources/sql_user
resource "google_sql_user" "wholeimage" {
  count = var.enable_cloud_sql ? 1 : 0

  name     = replace(var.name_prefix, "-", "_")
  instance = google_sql_database_instance.state[0].name
  password = random_password.database[0].result
}

# https://registry.terraform.io/providers/hashicorp/google/7.45.0/docs/resources/secret_manager_secret_version
resource "google_secret_manager_secret_version" "state_url" {
  count = var.enable_cloud_sql ? 1 : 0

  secret = google_secret_manager_secret.setting["state-url"].id
  secret_data = format(
    # checkov:skip=CKV_SECRET_4: a format string with %s placeholders, no credential; the password is generated
    "postgresql://%s:%s@/%s?host=/cloudsql/%s",
    google_sql_user.wholeimage[0].name,
    random_password.database[0].result,
    google_sql_database.wholeimage[0].name,
    local.cloud_sql_connection,
  )
}

# The functions connect to Cloud SQL: client role on the project (Cloud SQL has no per-instance
# IAM binding).
# https://registry.terraform.io/providers/hashicorp/google/7.45.0/docs/resources/google_project_iam
resource "google_project_iam_member" "cloud_sql_client" {
  for_each = toset([for name in keys(local.services) : name if var.enable_cloud_sql])

  project = var.project_id
  role    = "roles/cloudsql.client"
  member  = "serviceAccount:${google_service_account.function[each.key].email}"
}

