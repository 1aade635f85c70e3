output "create_url" {
  description = "URL of the create function: POST the create body, GET ?job_id= to read a job."
  value       = "https://${local.api_domain}/create"
}

output "notify_url" {
  description = "URL of the notify function: POST a job result, GET the outbox counts."
  value       = "https://${local.api_domain}/notify"
}

output "apig_subdomain" {
  description = "The API group's debugging domain (sub-domain) that APIG assigned: the CNAME target of apig_domain, and the domain of the URLs when apig_domain is empty."
  value       = local.apig_subdomain
}

output "function_urns" {
  description = "URN of each function, by target."
  value       = { for name, fn in huaweicloud_fgs_function.wholeimage : name => fn.urn }
}

output "agency_name" {
  description = "Agency the functions run with (pulls the image, joins the VPC, and makes the temporary keys create calls IMS with)."
  value       = local.agency_name
}

output "rds_private_ip" {
  description = "Private address of the RDS for PostgreSQL state store (null without enable_rds)."
  value       = var.enable_rds ? huaweicloud_rds_instance.state[0].private_ips[0] : null
}
