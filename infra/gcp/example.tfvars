# An example: copy it to terraform.tfvars and put in your own values.
# (The IaC scan of tests/system/test_infra.py reads this file, so the optional Cloud SQL is scanned too.)
project_id     = "my-project"
region         = "europe-west3"
image          = "europe-west3-docker.pkg.dev/my-project/wholeimage/wholeimage@sha256:0000000000000000000000000000000000000000000000000000000000000000"
cloud          = "otc"
ims_region     = "eu-de"
ims_project_id = "0123456789abcdef0123456789abcdef"

create_invokers = ["serviceAccount:ci@my-project.iam.gserviceaccount.com"]

enable_cloud_sql = true
