variable "kubeconfig_path" {
  description = "Path of the kubeconfig used by the kubernetes and helm providers."
  type        = string
  default     = "~/.kube/config"
}

variable "kube_context" {
  description = "kubeconfig context to use; null for the current context."
  type        = string
  default     = null
}

variable "namespace" {
  description = "Namespace of the monitoring stack (Prometheus, Alertmanager, Grafana, the Collector)."
  type        = string
  default     = "task-mcp-monitoring"
}

variable "kube_prometheus_stack_version" {
  description = "Version of the prometheus-community/kube-prometheus-stack chart."
  type        = string
  default     = "92.17.1"
}

variable "otel_collector_chart_version" {
  description = "Version of the open-telemetry/opentelemetry-collector chart."
  type        = string
  default     = "0.182.0"
}

variable "prometheus_retention" {
  description = "How long Prometheus keeps samples; must exceed the longest SLO window (30d)."
  type        = string
  default     = "30d"
}

variable "prometheus_storage_size" {
  description = "Size of the Prometheus volume."
  type        = string
  default     = "50Gi"
}

variable "storage_class_name" {
  description = "StorageClass of the Prometheus, Alertmanager and Grafana volumes; null for the cluster default."
  type        = string
  default     = null
}

variable "prometheus_resources" {
  description = "Resource requests and limits of Prometheus."
  type = object({
    cpu    = string
    memory = string
  })
  default = {
    cpu    = "2"
    memory = "4Gi"
  }
}

variable "grafana_resources" {
  description = "Resource requests and limits of Grafana."
  type = object({
    cpu    = string
    memory = string
  })
  default = {
    cpu    = "1"
    memory = "2Gi"
  }
}

variable "alertmanager_resources" {
  description = "Resource requests and limits of Alertmanager."
  type = object({
    cpu    = string
    memory = string
  })
  default = {
    cpu    = "500m"
    memory = "1Gi"
  }
}

variable "grafana_admin_password" {
  description = "Password of Grafana's admin user."
  type        = string
  sensitive   = true
}

variable "slack_webhook_url" {
  description = "Slack incoming-webhook URL; stored in a Secret and read by Alertmanager from a file."
  type        = string
  sensitive   = true
}

variable "pagerduty_routing_key" {
  description = "PagerDuty Events API v2 routing key of the task-mcp service; stored in a Secret."
  type        = string
  sensitive   = true
}

variable "smtp_password" {
  description = "Password of the SMTP account Alertmanager sends e-mail with; stored in a Secret."
  type        = string
  sensitive   = true
}
