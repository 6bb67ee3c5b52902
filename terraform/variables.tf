# Everything cwo passes for one worker (terraform.tfvars.json in the worker's own directory).

variable "name" {
  description = "The worker's name (also its network tag and its firewall rule's suffix)."
  type        = string
}

variable "project" {
  description = "The GCP project."
  type        = string
}

variable "zone" {
  description = "The zone, e.g. us-central1-a."
  type        = string
}

variable "machine_type" {
  type    = string
  default = "e2-micro"
}

variable "image" {
  type    = string
  default = "projects/debian-cloud/global/images/family/debian-12"
}

variable "disk_size_gb" {
  type    = number
  default = 10
}

variable "disk_type" {
  type    = string
  default = "pd-standard"
}

variable "spot" {
  type    = bool
  default = false
}

variable "ttl_seconds" {
  description = "Hard lifetime enforced by GCE (max_run_duration, then DELETE); 0 = none, on purpose."
  type        = number
  default     = 14400
}

variable "network" {
  type    = string
  default = "global/networks/default"
}

variable "ssh_source" {
  description = "The only address allowed to the SSH port: the controller's, as a /32."
  type        = string
  validation {
    condition     = can(cidrhost(var.ssh_source, 0))
    error_message = "ssh_source must be a CIDR such as 203.0.113.7/32."
  }
}

variable "ssh_user" {
  type    = string
  default = "cwo-admin"
}

variable "ssh_port" {
  type    = number
  default = 22
}

variable "ssh_public_key" {
  description = "The worker's own ed25519 public key (OpenSSH format)."
  type        = string
}

variable "labels" {
  description = "The VM's labels (cwo-managed, cwo-project, cwo-worker, cwo-machine, ...); the boot disk gets cwo-managed, cwo-project and cwo-worker."
  type        = map(string)
}

variable "startup_script" {
  description = "cwo's native bootstrap (startup-script and user-data), so boot and setup overlap."
  type        = string
}

variable "billing_account" {
  description = "Cloud Billing account ID for the optional budget alert (\"\" = no budget). cwo leaves it empty: it applies the module per worker."
  type        = string
  default     = ""
}

variable "budget_amount" {
  description = "The budget alert's monthly amount, in the billing account's currency."
  type        = number
  default     = 5
  validation {
    condition     = var.budget_amount > 0
    error_message = "budget_amount must be more than 0."
  }
}
