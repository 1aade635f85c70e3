# wholeimage on Huawei Cloud FunctionGraph: three functions from one SWR image (infra/Dockerfile),
# create and notify behind a dedicated API Gateway, check on a timer, state in PostgreSQL.

# Every argument below is one the pinned provider documents (versions.tf); the page of each
# resource is named above it. tests/system/test_infra.py checks them against those pages, frozen
# in tests/data/infra/provider-docs.json (no provider can be downloaded where the tests run).

locals {
  # All three are functions from the SWR image: runtime "Custom Image", code type
  # "Custom-Image-Swr", handler "-" (fgs_function docs, "Create function using SWR image").
  # create and notify sit behind the API Gateway; check has only its timer, whose event arrives
  # as an HTTP POST that check reads and ignores. concurrency_num applies to "http" and
  # "Custom Image" functions of FunctionGraph v2 (fgs_function docs); check runs one tick at once.
  # auth_in_header: FunctionGraph hands each request the agency's temporary AK/SK and security
  # token in X-CFF-* headers ("Include Keys", enable_auth_in_header), which sign its IMS calls
  # (docs/platform-credentials.md). create has them; notify never calls IMS; check only with
  # check_auth_in_header, since no documentation says a timer delivers them (README).
  functions = {
    create = { timeout = var.http_timeout, concurrency = var.concurrency, api_path = "/create", auth_in_header = true }
    notify = { timeout = var.http_timeout, concurrency = var.concurrency, api_path = "/notify", auth_in_header = false }
    check  = { timeout = var.check_timeout, concurrency = 1, api_path = null, auth_in_header = var.check_auth_in_header }
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
    # FunctionGraph sends a container image's requests to port 8000, and only there ("The port of
    # a custom container image must be 8000", FunctionGraph user guide, Creating a Function with
    # an Image); functions-framework listens on PORT.
    PORT = "8000"
  })

  # Secrets go to encrypted_user_data: FunctionGraph stores them encrypted and masks them.
  # Each function gets only the secrets it uses: create signs its IMS calls with the agency's
  # temporary keys from the request headers (no AK/SK: a static credential would override them),
  # notify never calls IMS, create never notifies (no webhook URL). check gets the AK/SK unless
  # check_auth_in_header, and no WHOLEIMAGE_API_TOKEN: only its timer can invoke it (it has no
  # APIG trigger), and a timer sends no Authorization header. An empty value (no webhook_url, no
  # AK/SK) is left out.
  secret_names = {
    create = ["WHOLEIMAGE_API_TOKEN", "WHOLEIMAGE_STATE_URL"]
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

  # The group's debugging domain (sub-domain), as APIG assigned it; the trigger's sl_domain is
  # always this one (the provider's own APIG trigger code sends the group's sub-domain there).
  apig_subdomain = data.huaweicloud_apig_groups.wholeimage.groups[0].sl_domain
  # What callers use: the bound domain when apig_domain names one, else the debugging domain
  # (which the group then enables: domain_access_enabled).
  api_domain = var.apig_domain != "" ? var.apig_domain : local.apig_subdomain
}

# The agency FunctionGraph works with: pulls the image from SWR, with enable_rds attaches the
# functions to the VPC, and makes the temporary keys create (and check with
# check_auth_in_header) sign their IMS calls with, so it holds the image permissions in the
# region's project too (agency_image_roles; README: credentials).
# The delegated party is the FunctionGraph service, op_svc_cff, given as the documented
# delegated_domain_name (the API's trust_domain_name).
# https://registry.terraform.io/providers/huaweicloud/huaweicloud/1.97.1/docs/resources/identity_agency
resource "huaweicloud_identity_agency" "functiongraph" {
  count = var.agency_name == "" ? 1 : 0

  name                  = "${var.name_prefix}-functiongraph"
  description           = "FunctionGraph pulls the wholeimage image from SWR and joins the state VPC"
  delegated_domain_name = "op_svc_cff"

  project_role {
    project = var.region
    roles   = concat(["SWR Admin"], var.agency_image_roles, var.enable_rds ? ["VPC Administrator"] : [])
  }

  lifecycle {
    # The provider reads an op_svc_* trust domain back into its internal, undocumented
    # delegated_service_name (resource_huaweicloud_identity_agency.go, resourceV3AgencyRead):
    # without this every plan would propose to clear it.
    ignore_changes = [delegated_service_name]
  }
}

# https://registry.terraform.io/providers/huaweicloud/huaweicloud/1.97.1/docs/resources/fgs_function
resource "huaweicloud_fgs_function" "wholeimage" {
  for_each = local.functions

  name                  = "${var.name_prefix}-${each.key}"
  app                   = var.app
  description           = "wholeimage ${each.key} (functions-framework --target ${each.key})"
  functiongraph_version = "v2"
  agency                = local.agency_name
  runtime               = "Custom Image"
  code_type             = "Custom-Image-Swr"
  handler               = "-"
  memory_size           = var.memory_size
  timeout               = each.value.timeout
  max_instance_num      = tostring(var.max_instances)
  concurrency_num       = each.value.concurrency
  enable_auth_in_header = each.value.auth_in_header

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
    # check polls IMS with the AK/SK, or with the headers alone: a static credential given
    # beside the headers would override them (docs/platform-credentials.md §1).
    precondition {
      condition     = each.key != "check" || (var.check_auth_in_header ? var.access_key == "" && var.secret_key == "" : var.access_key != "" && var.secret_key != "")
      error_message = "check needs access_key and secret_key, or check_auth_in_header = true with neither."
    }
  }
}

# The create call always sends domain_access_enabled (false when unset, since provider 1.63):
# it must be true exactly when callers use the debugging domain, i.e. when no domain is bound.
# https://registry.terraform.io/providers/huaweicloud/huaweicloud/1.97.1/docs/resources/apig_group
resource "huaweicloud_apig_group" "wholeimage" {
  instance_id           = var.apig_instance_id
  name                  = "${var.name_prefix}-api"
  description           = "wholeimage create and notify"
  domain_access_enabled = var.apig_domain == ""
}

# The group's sub-domain (sl_domain): the resource does not export it, the data source does.
# https://registry.terraform.io/providers/huaweicloud/huaweicloud/1.97.1/docs/data-sources/apig_groups
data "huaweicloud_apig_groups" "wholeimage" {
  instance_id = var.apig_instance_id
  group_id    = huaweicloud_apig_group.wholeimage.id
}

# The ID of the RELEASE environment the triggers publish their APIs in, looked up by name as the
# provider's own APIG trigger code does.
# https://registry.terraform.io/providers/huaweicloud/huaweicloud/1.97.1/docs/data-sources/apig_environments
data "huaweicloud_apig_environments" "release" {
  instance_id = var.apig_instance_id
  name        = "RELEASE"
}

# The caller-facing domain, bound to the group when apig_domain names one. Its DNS must point
# (CNAME) at the group's sub-domain (output apig_subdomain), and HTTPS on it needs an SSL
# certificate bound in APIG (README).
# https://registry.terraform.io/providers/huaweicloud/huaweicloud/1.97.1/docs/resources/apig_group_domain_associate
resource "huaweicloud_apig_group_domain_associate" "wholeimage" {
  count = var.apig_domain != "" ? 1 : 0

  instance_id     = var.apig_instance_id
  group_id        = huaweicloud_apig_group.wholeimage.id
  url_domain      = var.apig_domain
  min_ssl_version = "TLSv1.2"
}

# APIG authentication is NONE on purpose: the functions check WHOLEIMAGE_API_TOKEN themselves
# (Authorization: Bearer, or X-Api-Token), the same way on every platform. event_data is the
# FunctionGraph API's trigger body (fgs_function_trigger docs link its table).
# https://registry.terraform.io/providers/huaweicloud/huaweicloud/1.97.1/docs/resources/fgs_function_trigger
resource "huaweicloud_fgs_function_trigger" "api" {
  for_each = { for name, fn in local.functions : name => fn if fn.api_path != null }

  function_urn = huaweicloud_fgs_function.wholeimage[each.key].urn
  type         = "DEDICATEDGATEWAY"
  status       = "ACTIVE"

  event_data = jsonencode({
    instance_id = var.apig_instance_id
    group_id    = huaweicloud_apig_group.wholeimage.id
    name        = "${replace(var.name_prefix, "-", "_")}_${each.key}"
    env_id      = data.huaweicloud_apig_environments.release.environments[0].id
    env_name    = data.huaweicloud_apig_environments.release.environments[0].name
    auth        = "NONE"
    type        = 1
    protocol    = "HTTPS"
    req_method  = "ANY"
    path        = each.value.api_path
    match_mode  = "SWA"
    sl_domain   = local.apig_subdomain
    func_info   = { timeout = each.value.timeout * 1000 }
  })
}

# https://registry.terraform.io/providers/huaweicloud/huaweicloud/1.97.1/docs/resources/fgs_function_trigger
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
# The account password: 8 to 32 characters of at least three kinds (rds_pg_account docs).
# https://registry.terraform.io/providers/hashicorp/random/3.9.0/docs/resources/password
resource "random_password" "database" {
  count = var.enable_rds ? 1 : 0

  length      = 32
  special     = false # goes into a URL unescaped
  min_upper   = 2
  min_lower   = 2
  min_numeric = 2
}

# The root password: 8 to 32 characters, the specials ~!@#%^*-_=+? only (rds_instance docs, db).
# https://registry.terraform.io/providers/hashicorp/random/3.9.0/docs/resources/password
resource "random_password" "rds_root" {
  count = var.enable_rds ? 1 : 0

  length           = 32
  override_special = "~!@#%^*-_=+?"
  min_upper        = 2
  min_lower        = 2
  min_numeric      = 2
  min_special      = 2
}

# https://registry.terraform.io/providers/huaweicloud/huaweicloud/1.97.1/docs/resources/rds_instance
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

# https://registry.terraform.io/providers/huaweicloud/huaweicloud/1.97.1/docs/resources/rds_pg_account
resource "huaweicloud_rds_pg_account" "wholeimage" {
  count = var.enable_rds ? 1 : 0

  instance_id = huaweicloud_rds_instance.state[0].id
  name        = replace(var.name_prefix, "-", "_")
  password    = random_password.database[0].result
}

# https://registry.terraform.io/providers/huaweicloud/huaweicloud/1.97.1/docs/resources/rds_pg_database
resource "huaweicloud_rds_pg_database" "wholeimage" {
  count = var.enable_rds ? 1 : 0

  instance_id = huaweicloud_rds_instance.state[0].id
  name        = replace(var.name_prefix, "-", "_")
  owner       = huaweicloud_rds_pg_account.wholeimage[0].name
}
