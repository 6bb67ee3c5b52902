# One cwo worker: the same VM the gcp provider creates through the Compute API. cwo keeps one
# state per worker (its own directory under cwo's state dir) and runs init/apply/output/destroy.

provider "google" {
  project = var.project
  zone    = var.zone
}

locals {
  # The boot disk bills too, so it carries the worker's identity labels (the billing export
  # attributes its cost by them). Only these: they never change during the worker's life, while
  # cwo-expires-at and the reaper's marks are the VM's, and older google providers replace the
  # whole VM when boot-disk labels change (hashicorp/terraform-provider-google#17044).
  disk_labels = {
    for k, v in var.labels : k => v if contains(["cwo-managed", "cwo-project", "cwo-worker"], k)
  }
}

resource "google_compute_instance" "worker" {
  name         = var.name
  machine_type = var.machine_type
  zone         = var.zone
  labels       = var.labels
  tags         = [var.name]

  boot_disk {
    auto_delete = true
    initialize_params {
      image  = var.image
      size   = var.disk_size_gb
      type   = var.disk_type
      labels = local.disk_labels
    }
  }

  network_interface {
    network = var.network
    access_config {}
  }

  metadata = {
    ssh-keys                = "${var.ssh_user}:${trimspace(var.ssh_public_key)}"
    block-project-ssh-keys  = "TRUE"
    enable-oslogin          = "FALSE"
    enable-guest-attributes = "TRUE"
    startup-script          = var.startup_script
    user-data               = var.startup_script
  }

  scheduling {
    provisioning_model          = var.spot ? "SPOT" : "STANDARD"
    preemptible                 = var.spot
    automatic_restart           = !var.spot
    on_host_maintenance         = var.spot ? "TERMINATE" : "MIGRATE"
    instance_termination_action = (var.spot || var.ttl_seconds > 0) ? "DELETE" : null

    # The VM dies even if cwo, the laptop or CI dies.
    dynamic "max_run_duration" {
      for_each = var.ttl_seconds > 0 ? [var.ttl_seconds] : []
      content {
        seconds = max_run_duration.value
      }
    }
  }

  # No service_account block: the VM holds no credentials at all.
}

# SSH from the controller's address only, to this worker only.
resource "google_compute_firewall" "ssh" {
  name          = "cwo-ssh-${var.name}"
  network       = var.network
  direction     = "INGRESS"
  source_ranges = [var.ssh_source]
  target_tags   = [var.name]

  allow {
    protocol = "tcp"
    ports    = [tostring(var.ssh_port)]
  }
}

# Optional: the cloud's own budget alert, as `cwo budget alert set` makes it (display name
# "cwo: <project>", a monthly amount in the billing account's currency, alerts at 50/90/100 % of
# the actual spend emailed to the billing account's administrators and users). Scope: the
# project and the cwo-managed=true label, the single label a budget filter allows. Off unless
# billing_account is set. cwo itself never sets it: it applies this module once per worker, and a
# budget must not come and go with each worker; it is here for a standalone apply of the module.
# Needs roles/billing.costsManager on the billing account; with user credentials the provider also
# needs a quota project (billing_project and user_project_override), as for any budget.
locals {
  budget_thresholds = [0.5, 0.9, 1.0]
}

data "google_project" "budget" {
  count      = var.billing_account == "" ? 0 : 1
  project_id = var.project
}

resource "google_billing_budget" "cwo" {
  count           = var.billing_account == "" ? 0 : 1
  billing_account = var.billing_account
  display_name    = "cwo: ${var.project}"

  budget_filter {
    # The API stores projects by number.
    projects        = ["projects/${data.google_project.budget[0].number}"]
    labels          = { "cwo-managed" = "true" }
    calendar_period = "MONTH"
  }

  amount {
    specified_amount {
      units = tostring(floor(var.budget_amount))
      nanos = floor((var.budget_amount - floor(var.budget_amount)) * 1000000000 + 0.5)
    }
  }

  dynamic "threshold_rules" {
    for_each = local.budget_thresholds
    content {
      threshold_percent = threshold_rules.value
      spend_basis       = "CURRENT_SPEND"
    }
  }

  all_updates_rule {
    disable_default_iam_recipients = false
  }
}
