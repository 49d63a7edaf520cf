output "namespace" {
  description = "Namespace of the monitoring stack."
  value       = kubernetes_namespace.monitoring.metadata[0].name
}

output "otlp_grpc_endpoint" {
  description = "OTLP/gRPC endpoint for the server's OTEL_EXPORTER_OTLP_ENDPOINT."
  value       = "http://${helm_release.otel_collector.name}.${kubernetes_namespace.monitoring.metadata[0].name}.svc:4317"
}

output "prometheus_url" {
  description = "In-cluster URL of Prometheus."
  value       = "http://${local.stack_name}-prometheus.${kubernetes_namespace.monitoring.metadata[0].name}.svc:9090"
}

output "alertmanager_url" {
  description = "In-cluster URL of Alertmanager."
  value       = "http://${local.stack_name}-alertmanager.${kubernetes_namespace.monitoring.metadata[0].name}.svc:9093"
}

output "grafana_url" {
  description = "In-cluster URL of Grafana."
  value       = "http://${local.stack_name}-grafana.${kubernetes_namespace.monitoring.metadata[0].name}.svc:80"
}

output "prometheus_rules" {
  description = "PrometheusRule objects created from monitoring/prometheus/rules."
  value       = [for name in keys(local.rule_files) : "${local.stack_name}-${name}"]
}

output "dashboard_config_maps" {
  description = "ConfigMaps holding the Grafana dashboards, labelled for the Grafana sidecar."
  value       = [for cm in kubernetes_config_map.dashboards : cm.metadata[0].name]
}
