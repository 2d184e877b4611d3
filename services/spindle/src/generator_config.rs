//! The config file's `generator:` section (and `tenants.<id>.generator:` overrides), resolved
//! into the generator's settings.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use spindle_generator::{GeneratorSettings, RemoteWriteTarget, TenantSettings};

use crate::config::parse_size;
use spindle_types::parse_std_duration;

/// `generator:` in the config file. Every key is optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorFile {
    /// How often series are collected (remote write, SQL rows) [15s].
    collection_interval: Option<String>,
    /// How often series become rows of the SQL table `metrics` [1m]. Top level only.
    sql_interval: Option<String>,
    /// How often collected samples are written for SQL [5m]. Top level only.
    sql_flush_interval: Option<String>,
    /// Series idle this long are dropped [15m]. Top level only.
    stale_after: Option<String>,
    /// Span bytes waiting for the generator before spans are dropped [64MiB]. Top level only.
    max_queue_size: Option<String>,
    /// Most active series per tenant [500000].
    max_active_series: Option<usize>,
    /// Record samples for the SQL table `metrics` [true].
    sql: Option<bool>,
    /// Span metrics.
    span_metrics: Option<SpanMetricsFile>,
    /// Service graphs.
    service_graphs: Option<ServiceGraphsFile>,
    /// Prometheus remote-write endpoints (replace, not add to, the defaults in a tenant section).
    remote_write: Option<Vec<RemoteWriteFile>>,
}

/// `generator.span_metrics`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpanMetricsFile {
    enabled: Option<bool>,
    dimensions: Option<Vec<String>>,
}

/// `generator.service_graphs`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceGraphsFile {
    enabled: Option<bool>,
    wait: Option<String>,
    max_items: Option<usize>,
}

/// One `generator.remote_write` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoteWriteFile {
    url: String,
    #[serde(default)]
    headers: HashMap<String, String>,
    #[serde(default)]
    send_tenant_header: bool,
}

fn apply(base: &TenantSettings, file: &GeneratorFile, what: &str) -> anyhow::Result<TenantSettings> {
    let mut s = base.clone();
    if let Some(t) = &file.collection_interval {
        s.collection_interval =
            parse_std_duration(t).with_context(|| format!("invalid {what}.collection_interval {t:?}"))?;
        if s.collection_interval.is_zero() {
            bail!("{what}.collection_interval must be positive");
        }
    }
    if let Some(n) = file.max_active_series {
        s.max_active_series = n;
    }
    if let Some(b) = file.sql {
        s.sql = b;
    }
    if let Some(m) = &file.span_metrics {
        if let Some(b) = m.enabled {
            s.span_metrics = b;
        }
        if let Some(d) = &m.dimensions {
            s.dimensions = d.clone();
        }
    }
    if let Some(g) = &file.service_graphs {
        if let Some(b) = g.enabled {
            s.service_graphs = b;
        }
        if let Some(w) = &g.wait {
            s.wait = parse_std_duration(w).with_context(|| format!("invalid {what}.service_graphs.wait {w:?}"))?;
        }
        if let Some(n) = g.max_items {
            s.max_items = n;
        }
    }
    if let Some(targets) = &file.remote_write {
        s.remote_write = Vec::new();
        for t in targets {
            if !(t.url.starts_with("http://") || t.url.starts_with("https://")) {
                bail!("{what}.remote_write url {:?} must start with http:// or https://", t.url);
            }
            let mut headers: Vec<(String, String)> = t.headers.clone().into_iter().collect();
            headers.sort();
            s.remote_write.push(RemoteWriteTarget {
                url: t.url.clone(),
                headers,
                send_tenant_header: t.send_tenant_header,
            });
        }
    }
    Ok(s)
}

/// The generator's settings from the top-level section and the tenants' sections.
pub fn generator_settings(
    top: Option<&GeneratorFile>,
    tenants: impl Iterator<Item = (String, Option<GeneratorFile>)>,
) -> anyhow::Result<GeneratorSettings> {
    let mut settings = GeneratorSettings::default();
    let empty = GeneratorFile::default();
    let top = top.unwrap_or(&empty);
    let duration = |name: &str, v: &Option<String>, default| -> anyhow::Result<_> {
        match v {
            Some(t) => parse_std_duration(t).with_context(|| format!("invalid generator.{name} {t:?}")),
            None => Ok(default),
        }
    };
    settings.sql_interval = duration("sql_interval", &top.sql_interval, settings.sql_interval)?;
    settings.sql_flush_interval = duration("sql_flush_interval", &top.sql_flush_interval, settings.sql_flush_interval)?;
    settings.stale_after = duration("stale_after", &top.stale_after, settings.stale_after)?;
    if let Some(q) = &top.max_queue_size {
        settings.max_queue_bytes = parse_size(q).with_context(|| format!("invalid generator.max_queue_size {q:?}"))?;
    }
    settings.default = apply(&settings.default, top, "generator")?;
    for (tenant, file) in tenants {
        let Some(file) = file else { continue };
        let what = format!("tenants.{tenant}.generator");
        if file.sql_flush_interval.is_some()
            || file.sql_interval.is_some()
            || file.stale_after.is_some()
            || file.max_queue_size.is_some()
        {
            bail!("{what}: sql_interval, sql_flush_interval, stale_after and max_queue_size are process-wide; set them in the top-level generator section");
        }
        let tenant_settings = apply(&settings.default, &file, &what)?;
        settings.tenants.insert(tenant, tenant_settings);
    }
    // The collection loop ticks as often as the most frequent tenant needs.
    settings.collection_interval = settings
        .tenants
        .values()
        .map(|t| t.collection_interval)
        .fold(settings.default.collection_interval, Duration::min);
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_sections_override_the_top_level() {
        let top: GeneratorFile = serde_yaml::from_str(
            "collection_interval: 1s\nspan_metrics: { dimensions: [http.method] }\nremote_write: [{ url: 'http://p:9090/api/v1/write' }]",
        )
        .unwrap();
        let acme: GeneratorFile = serde_yaml::from_str("service_graphs: { enabled: false }\nremote_write: []").unwrap();
        let s = generator_settings(Some(&top), [("acme".to_string(), Some(acme))].into_iter()).unwrap();
        assert_eq!(s.collection_interval.as_secs(), 1);
        assert_eq!(s.for_tenant("acme").collection_interval.as_secs(), 1);
        assert_eq!(s.default.dimensions, ["http.method"]);
        assert_eq!(s.default.remote_write.len(), 1);
        let a = s.for_tenant("acme");
        assert!(!a.service_graphs && a.span_metrics && a.remote_write.is_empty());
        assert_eq!(a.dimensions, ["http.method"]);
        let bad: GeneratorFile = serde_yaml::from_str("sql_flush_interval: 1s").unwrap();
        assert!(generator_settings(None, [("x".to_string(), Some(bad))].into_iter()).is_err());
    }
}
