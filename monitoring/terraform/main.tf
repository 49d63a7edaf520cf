# Monitoring stack of task-mcp on Kubernetes: kube-prometheus-stack (Prometheus, Alertmanager,
# Grafana, the Prometheus Operator) and the OpenTelemetry Collector by Helm, the project's rule files
# as PrometheusRule objects, its Alertmanager configuration and templates, and its dashboards as
# ConfigMaps for the Grafana sidecar. Every file is read from monitoring/ (one `..` from here), so
# what is tested in the repository is what is deployed.

terraform {
  required_version = ">= 1.5.0"

  required_providers {
    helm = {
      source  = "hashicorp/helm"
      version = "~> 2.17"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 2.36"
    }
  }
}

provider "kubernetes" {
  config_path    = var.kubeconfig_path
  config_context = var.kube_context
}

provider "helm" {
  kubernetes {
    config_path    = var.kubeconfig_path
    config_context = var.kube_context
  }
}

locals {
  monitoring_dir = "${path.module}/.."
  stack_name     = "task-mcp"

  # Rule files -> PrometheusRule objects named task-mcp-<key> (chart value additionalPrometheusRulesMap).
  rule_files = {
    "slo-alerts"     = "${local.monitoring_dir}/prometheus/rules/slo-alerts.yml"
    "service-alerts" = "${local.monitoring_dir}/prometheus/rules/service-alerts.yml"
  }

  dashboards = fileset("${local.monitoring_dir}/grafana/dashboards", "*.json")

  # Alertmanager: the project's configuration, with templates where the chart mounts templateFiles.
  alertmanager_config = merge(
    yamldecode(file("${local.monitoring_dir}/alertmanager/alertmanager.yml")),
    { templates = ["/etc/alertmanager/config/*.tmpl"] },
  )
  alertmanager_templates = {
    for f in fileset("${local.monitoring_dir}/alertmanager/templates", "*.tmpl") :
    f => file("${local.monitoring_dir}/alertmanager/templates/${f}")
  }

  # The Collector configuration of the telemetry issue when it is present, else the same pipeline here:
  # OTLP in, memory_limiter then batch, the prometheus exporter on :8889.
  collector_config_path = "${local.monitoring_dir}/../otel-collector/config.yaml"
  default_collector_config = {
    extensions = {
      health_check = { endpoint = "$${env:MY_POD_IP}:13133" }
    }
    receivers = {
      otlp = {
        protocols = {
          grpc = { endpoint = "$${env:MY_POD_IP}:4317" }
          http = { endpoint = "$${env:MY_POD_IP}:4318" }
        }
      }
    }
    processors = {
      memory_limiter = {
        check_interval         = "1s"
        limit_percentage       = 80
        spike_limit_percentage = 20
      }
      batch = {
        send_batch_size = 8192
        timeout         = "5s"
      }
    }
    exporters = {
      prometheus = {
        endpoint                         = "$${env:MY_POD_IP}:8889"
        metric_expiration                = "5m"
        enable_open_metrics              = true
        resource_to_telemetry_conversion = { enabled = false }
      }
    }
    service = {
      extensions = ["health_check"]
      pipelines = {
        metrics = {
          receivers  = ["otlp"]
          processors = ["memory_limiter", "batch"]
          exporters  = ["prometheus"]
        }
      }
    }
  }
  collector_config = fileexists(local.collector_config_path) ? yamldecode(file(local.collector_config_path)) : local.default_collector_config

  labels = {
    "app.kubernetes.io/part-of"    = "task-mcp"
    "app.kubernetes.io/managed-by" = "terraform"
  }
}

resource "kubernetes_namespace" "monitoring" {
  metadata {
    name   = var.namespace
    labels = local.labels
  }
}

# Alertmanager reads these through *_file settings; the chart mounts the Secret at
# /etc/alertmanager/secrets/task-mcp-alertmanager/ (alertmanagerSpec.secrets).
resource "kubernetes_secret" "alertmanager" {
  metadata {
    name      = "task-mcp-alertmanager"
    namespace = kubernetes_namespace.monitoring.metadata[0].name
    labels    = local.labels
  }

  data = {
    "slack-webhook-url"     = var.slack_webhook_url
    "pagerduty-routing-key" = var.pagerduty_routing_key
    "smtp-password"         = var.smtp_password
  }
}

resource "helm_release" "kube_prometheus_stack" {
  name       = "kube-prometheus-stack"
  namespace  = kubernetes_namespace.monitoring.metadata[0].name
  repository = "https://prometheus-community.github.io/helm-charts"
  chart      = "kube-prometheus-stack"
  version    = var.kube_prometheus_stack_version
  timeout    = 900

  values = [yamlencode({
    fullnameOverride = local.stack_name

    additionalPrometheusRulesMap = {
      for name, path in local.rule_files : name => yamldecode(file(path))
    }

    prometheus = {
      prometheusSpec = {
        retention                               = var.prometheus_retention
        ruleSelectorNilUsesHelmValues           = false
        serviceMonitorSelectorNilUsesHelmValues = false
        podMonitorSelectorNilUsesHelmValues     = false
        resources = {
          requests = var.prometheus_resources
          limits   = { memory = var.prometheus_resources.memory }
        }
        storageSpec = {
          volumeClaimTemplate = {
            spec = {
              storageClassName = var.storage_class_name
              accessModes      = ["ReadWriteOnce"]
              resources        = { requests = { storage = var.prometheus_storage_size } }
            }
          }
        }
      }
      # The Collector's prometheus exporter carries the server's own job/instance (honor_labels);
      # `up` of this target is job="otel-collector", the pipeline's health signal.
      additionalServiceMonitors = [
        {
          name     = "otel-collector"
          selector = { matchLabels = { "app.kubernetes.io/instance" = "otel-collector" } }
          namespaceSelector = {
            matchNames = [kubernetes_namespace.monitoring.metadata[0].name]
          }
          endpoints = [
            {
              port        = "prom-exporter"
              interval    = "15s"
              honorLabels = true
              relabelings = [{ targetLabel = "job", replacement = "otel-collector" }]
            },
            {
              port        = "metrics"
              interval    = "30s"
              relabelings = [{ targetLabel = "job", replacement = "otel-collector-self" }]
            },
          ]
        },
      ]
    }

    alertmanager = {
      config        = local.alertmanager_config
      templateFiles = local.alertmanager_templates
      alertmanagerSpec = {
        secrets = [kubernetes_secret.alertmanager.metadata[0].name]
        resources = {
          requests = var.alertmanager_resources
          limits   = { memory = var.alertmanager_resources.memory }
        }
        storage = {
          volumeClaimTemplate = {
            spec = {
              storageClassName = var.storage_class_name
              accessModes      = ["ReadWriteOnce"]
              resources        = { requests = { storage = "10Gi" } }
            }
          }
        }
      }
    }

    grafana = {
      fullnameOverride = "${local.stack_name}-grafana"
      adminPassword    = var.grafana_admin_password
      resources = {
        requests = var.grafana_resources
        limits   = { memory = var.grafana_resources.memory }
      }
      persistence = {
        enabled          = true
        size             = "10Gi"
        storageClassName = var.storage_class_name
      }
      sidecar = {
        dashboards = {
          enabled          = true
          label            = "grafana_dashboard"
          labelValue       = "1"
          searchNamespace  = kubernetes_namespace.monitoring.metadata[0].name
          folderAnnotation = "grafana_folder"
          provider         = { foldersFromFilesStructure = true }
        }
      }
    }
  })]
}

resource "helm_release" "otel_collector" {
  name       = "otel-collector"
  namespace  = kubernetes_namespace.monitoring.metadata[0].name
  repository = "https://open-telemetry.github.io/opentelemetry-helm-charts"
  chart      = "opentelemetry-collector"
  version    = var.otel_collector_chart_version

  values = [yamlencode({
    mode             = "deployment"
    fullnameOverride = "otel-collector"
    image            = { repository = "otel/opentelemetry-collector-contrib" }
    config           = local.collector_config
    ports = {
      prom-exporter = {
        enabled       = true
        containerPort = 8889
        servicePort   = 8889
        protocol      = "TCP"
      }
      metrics = {
        enabled       = true
        containerPort = 8888
        servicePort   = 8888
        protocol      = "TCP"
      }
    }
    resources = {
      requests = { cpu = "500m", memory = "512Mi" }
      limits   = { memory = "1Gi" }
    }
  })]

  depends_on = [helm_release.kube_prometheus_stack]
}

# One ConfigMap per dashboard; the Grafana sidecar loads every ConfigMap labelled grafana_dashboard=1
# into the folder named by the grafana_folder annotation.
resource "kubernetes_config_map" "dashboards" {
  for_each = local.dashboards

  metadata {
    name      = "task-mcp-dashboard-${trimsuffix(each.value, ".json")}"
    namespace = kubernetes_namespace.monitoring.metadata[0].name
    labels    = merge(local.labels, { grafana_dashboard = "1" })
    annotations = {
      grafana_folder = "Task MCP"
    }
  }

  data = {
    (each.value) = file("${local.monitoring_dir}/grafana/dashboards/${each.value}")
  }
}
