output "create_url" {
  description = "URL of the create service: POST the create body, GET ?job_id= to read a job."
  value       = google_cloud_run_v2_service.function["create"].uri
}

output "check_url" {
  description = "URL of the check service (Cloud Scheduler calls it)."
  value       = google_cloud_run_v2_service.function["check"].uri
}

output "notify_url" {
  description = "URL of the notify service: POST a job result, GET the outbox counts."
  value       = google_cloud_run_v2_service.function["notify"].uri
}

output "service_accounts" {
  description = "Runtime service account of each service, and the scheduler's."
  value = merge(
    { for name, account in google_service_account.function : name => account.email },
    { scheduler = google_service_account.scheduler.email },
  )
}

output "secret_ids" {
  description = "Secret Manager secret of each secret setting; add values to hwc-ak, hwc-sk, webhook-url (and state-url without Cloud SQL) with gcloud."
  value       = { for name, secret in google_secret_manager_secret.setting : local.secrets[name] => secret.secret_id }
}

output "scheduler_job" {
  description = "Name of the Cloud Scheduler job that calls check."
  value       = google_cloud_scheduler_job.check.name
}

output "cloud_sql_connection_name" {
  description = "Connection name of the Cloud SQL instance (null without enable_cloud_sql)."
  value       = local.cloud_sql_connection
}
