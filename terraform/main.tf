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
