# wholeimage on Huawei Cloud FunctionGraph: three functions from one SWR image (infra/Dockerfile),
# create and notify behind a dedicated API Gateway, check on a timer, state in PostgreSQL.

locals {
  # create and notify are HTTP functions: APIG forwards the HTTP request as it is, which is what
  # functions-framework serves. check is an event function from the same image: the timer's event
  # arrives as an HTTP POST, and check reads and ignores any body.
  functions = {
    create = { runtime = "http", timeout = var.http_timeout, api_path = "/create" }
    notify = { runtime = "http", timeout = var.http_timeout, api_path = "/notify" }
    check  = { runtime = "Custom Image", timeout = var.check_timeout, api_path = null }
  }

  agency_name = var.agency_name != "" ? var.agency_name : huaweicloud_identity_agency.functiongraph[0].name

  state_url = var.enable_rds ? format(
    # checkov:skip=CKV_SECRET_4: a format string with %s placeholders, no credential; the password is generated
    "postgresql://%s:%s@%s:5432/%s?sslmode=%s",
    huaweicloud_rds_pg_account.wholeimage[0].name,
    random_password.database[0].result,
    huaweicloud_rds_instance.state[0].private_ips[0],
    huaweicloud_rds_pg_database.wholeimage[0].name,
    var.rds_sslmode,
  ) : var.state_url

  # Plain settings, the same for all three (see the settings table of the README).
  settings = merge(var.extra_settings, {
    WHOLEIMAGE_CLOUD      = "huaweicloud"
    WHOLEIMAGE_REGION     = var.region
    WHOLEIMAGE_PROJECT_ID = var.project_id
    WHOLEIMAGE_LOG_LEVEL  = var.log_level
    PORT                  = tostring(var.container_port)
  })

  # Secrets go to encrypted_user_data: FunctionGraph stores them encrypted and masks them.
  # Each function gets only the secrets it uses: notify never calls IMS (no AK/SK), create never
  # notifies (no webhook URL). check gets no WHOLEIMAGE_API_TOKEN: only its timer can invoke it
  # (it has no APIG trigger), and a timer sends no Authorization header. An empty value (no
  # webhook_url) is left out.
  secret_names = {
    create = ["HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK", "WHOLEIMAGE_API_TOKEN", "WHOLEIMAGE_STATE_URL"]
    check  = ["HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK", "WHOLEIMAGE_STATE_URL", "WHOLEIMAGE_WEBHOOK_URL"]
    notify = ["WHOLEIMAGE_API_TOKEN", "WHOLEIMAGE_STATE_URL", "WHOLEIMAGE_WEBHOOK_URL"]
  }
  secret_values = {
    HUAWEICLOUD_SDK_AK     = var.access_key
    HUAWEICLOUD_SDK_SK     = var.secret_key
    WHOLEIMAGE_API_TOKEN   = var.api_token
    WHOLEIMAGE_STATE_URL   = local.state_url
    WHOLEIMAGE_WEBHOOK_URL = var.webhook_url
  }
  secrets = {
    for name, names in local.secret_names : name => {
      for key in names : key => local.secret_values[key] if local.secret_values[key] != ""
    }
  }

  api_domain = var.apig_domain != "" ? var.apig_domain : format(
    "%s.apic.%s.huaweicloudapis.com", huaweicloud_apig_group.wholeimage.id, var.region
  )
}

# The agency FunctionGraph works with: pulls the image from SWR and, with enable_rds, attaches
# the functions to the VPC. It grants wholeimage's code nothing (see the README: credentials).
resource "huaweicloud_identity_agency" "functiongraph" {
  count = var.agency_name == "" ? 1 : 0

  name                   = "${var.name_prefix}-functiongraph"
  description            = "FunctionGraph pulls the wholeimage image from SWR and joins the state VPC"
  delegated_service_name = "op_svc_cff"

  project_role {
    project = var.region
    roles   = var.enable_rds ? ["SWR Admin", "VPC Administrator"] : ["SWR Admin"]
  }
}

resource "huaweicloud_fgs_function" "wholeimage" {
  for_each = local.functions

  name                  = "${var.name_prefix}-${each.key}"
  app                   = var.app
  description           = "wholeimage ${each.key} (functions-framework --target ${each.key})"
  functiongraph_version = "v2"
  agency                = local.agency_name
  runtime               = each.value.runtime
  handler               = "-"
  memory_size           = var.memory_size
  timeout               = each.value.timeout
  max_instance_num      = tostring(var.max_instances)
  concurrency_num       = each.value.runtime == "http" ? var.concurrency : 1

  # The image's own CMD runs: functions-framework --source functions/main.py --target $FUNCTION_TARGET
  custom_image {
    url = var.image_url
  }

  user_data           = jsonencode(merge(local.settings, { FUNCTION_TARGET = each.key }))
  encrypted_user_data = jsonencode(local.secrets[each.key])

  vpc_id     = var.enable_rds ? var.vpc_id : null
  network_id = var.enable_rds ? var.subnet_id : null

  tags = {
    app    = "wholeimage"
    target = each.key
  }

  lifecycle {
    precondition {
      condition     = var.enable_rds || startswith(var.state_url, "postgresql://")
      error_message = "Set enable_rds, or state_url to a postgresql:// URL: FunctionGraph instances share no disk for SQLite."
    }
  }
}

resource "huaweicloud_apig_group" "wholeimage" {
  instance_id = var.apig_instance_id
  name        = "${var.name_prefix}-api"
  description = "wholeimage create and notify"
}

# APIG authentication is NONE on purpose: the functions check WHOLEIMAGE_API_TOKEN themselves
# (Authorization: Bearer, or X-Api-Token), the same way on every platform.
resource "huaweicloud_fgs_function_trigger" "api" {
  for_each = { for name, fn in local.functions : name => fn if fn.api_path != null }

  function_urn = huaweicloud_fgs_function.wholeimage[each.key].urn
  type         = "DEDICATEDGATEWAY"
  status       = "ACTIVE"

  event_data = jsonencode({
    instance_id = var.apig_instance_id
    group_id    = huaweicloud_apig_group.wholeimage.id
    name        = "${replace(var.name_prefix, "-", "_")}_${each.key}"
    env_id      = "DEFAULT_ENVIRONMENT_RELEASE_ID"
    env_name    = "RELEASE"
    auth        = "NONE"
    type        = 1
    protocol    = "HTTPS"
    req_method  = "ANY"
    path        = each.value.api_path
    match_mode  = "SWA"
    sl_domain   = local.api_domain
    func_info   = { timeout = each.value.timeout * 1000 }
  })
}

resource "huaweicloud_fgs_function_trigger" "check_timer" {
  function_urn = huaweicloud_fgs_function.wholeimage["check"].urn
  type         = "TIMER"
  status       = "ACTIVE"

  event_data = jsonencode({
    name          = "${replace(var.name_prefix, "-", "_")}_check"
    schedule_type = "Rate"
    schedule      = var.check_schedule
    user_event    = "wholeimage check tick"
  })
}

# Optional state store: RDS for PostgreSQL in the given VPC, a database and an owner account.
resource "random_password" "database" {
  count = var.enable_rds ? 1 : 0

  length      = 32
  special     = false # goes into a URL unescaped
  min_upper   = 2
  min_lower   = 2
  min_numeric = 2
}

resource "random_password" "rds_root" {
  count = var.enable_rds ? 1 : 0

  length           = 32
  override_special = "~!@#%^*-_=+?"
  min_upper        = 2
  min_lower        = 2
  min_numeric      = 2
  min_special      = 2
}

resource "huaweicloud_rds_instance" "state" {
  count = var.enable_rds ? 1 : 0

  name              = "${var.name_prefix}-state"
  flavor            = var.rds_flavor
  vpc_id            = var.vpc_id
  subnet_id         = var.subnet_id
  security_group_id = var.security_group_id
  availability_zone = [var.availability_zone]

  db {
    type     = "PostgreSQL"
    version  = var.rds_version
    password = random_password.rds_root[0].result
  }

  volume {
    type = "CLOUDSSD"
    size = var.rds_volume_size
  }

  backup_strategy {
    start_time = "02:00-03:00"
    keep_days  = var.rds_backup_keep_days
  }

  tags = {
    app = "wholeimage"
  }
}

resource "huaweicloud_rds_pg_account" "wholeimage" {
  count = var.enable_rds ? 1 : 0

  instance_id = huaweicloud_rds_instance.state[0].id
  name        = replace(var.name_prefix, "-", "_")
  password    = random_password.database[0].result
}

resource "huaweicloud_rds_pg_database" "wholeimage" {
  count = var.enable_rds ? 1 : 0

  instance_id = huaweicloud_rds_instance.state[0].id
  name        = replace(var.name_prefix, "-", "_")
  owner       = huaweicloud_rds_pg_account.wholeimage[0].name
}
