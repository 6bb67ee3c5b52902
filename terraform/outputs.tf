# What cwo reads with `terraform output -json` and hands to the loop.

output "name" {
  value = google_compute_instance.worker.name
}

output "zone" {
  value = google_compute_instance.worker.zone
}

output "ip" {
  value = google_compute_instance.worker.network_interface[0].access_config[0].nat_ip
}

output "ssh_port" {
  value = var.ssh_port
}
