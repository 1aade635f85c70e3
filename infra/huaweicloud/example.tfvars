# An example: copy it to terraform.tfvars and put in your own values. Give the secrets through
# the environment instead (TF_VAR_access_key, TF_VAR_secret_key, TF_VAR_api_token, TF_VAR_webhook_url).
# (The IaC scan of tests/system/test_infra.py reads this file, so the optional RDS is scanned too.)
region           = "ap-southeast-3"
project_id       = "0123456789abcdef0123456789abcdef"
image_url        = "swr.ap-southeast-3.myhuaweicloud.com/my-org/wholeimage:0.1.0"
apig_instance_id = "00000000000000000000000000000000"

enable_rds        = true
vpc_id            = "00000000-0000-0000-0000-000000000000"
subnet_id         = "00000000-0000-0000-0000-000000000000"
security_group_id = "00000000-0000-0000-0000-000000000000"
availability_zone = "ap-southeast-3a"
