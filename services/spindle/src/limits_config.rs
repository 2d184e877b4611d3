//! The config file's `limits:` section (and `tenants.<id>.limits:` overrides), resolved into
//! the per-tenant limits every role applies. Re-read with the rest of the file when it changes.

use std::collections::HashMap;

use anyhow::Context;
use serde::Deserialize;
use spindle_limits::{LimitsPolicy, TenantLimits};

use crate::config::parse_size;

/// `limits:` in the config file. Every key is optional; a tenant's section overrides only the
/// keys it names.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Ingest bytes per second per tenant, e.g. `20MiB`; 0 for no limit [0].
    ingest_rate: Option<String>,
    /// Bytes a tenant may send at once above its rate [64MiB].
    ingest_burst: Option<String>,
    /// Longest attribute key or string value, span name or status message; longer ones are cut [64KiB].
    max_attribute_value_size: Option<String>,
    /// Most attributes per span, resource, scope, event or link (more are dropped and counted) [512].
    max_attributes_per_span: Option<usize>,
    /// Most events per span [1024].
    max_events_per_span: Option<usize>,
    /// Most links per span [1024].
    max_links_per_span: Option<usize>,
    /// Queries a tenant may run at once (more get 429) [16].
    max_concurrent_queries: Option<usize>,
    /// Most tenants a query naming this tenant may name (`a|b|...`; more get 400) [16].
    max_tenants_per_query: Option<usize>,
}

impl LimitsFile {
    /// `base` with the keys this section names replaced.
    fn over(&self, base: &TenantLimits, what: &str) -> anyhow::Result<TenantLimits> {
        let size = |key: &str, v: &Option<String>, current: u64| -> anyhow::Result<u64> {
            match v.as_deref().map(str::trim) {
                // 0 is "no limit" for the rate.
                Some("0") => Ok(0),
                Some(text) => Ok(parse_size(text).with_context(|| format!("invalid {key} {text:?} in {what}"))? as u64),
                None => Ok(current),
            }
        };
        Ok(TenantLimits {
            ingest_rate_bytes: size("ingest_rate", &self.ingest_rate, base.ingest_rate_bytes)?,
            ingest_burst_bytes: size("ingest_burst", &self.ingest_burst, base.ingest_burst_bytes)?,
            max_attribute_value_bytes: size(
                "max_attribute_value_size",
                &self.max_attribute_value_size,
                base.max_attribute_value_bytes as u64,
            )? as usize,
            max_attributes_per_span: self.max_attributes_per_span.unwrap_or(base.max_attributes_per_span),
            max_events_per_span: self.max_events_per_span.unwrap_or(base.max_events_per_span),
            max_links_per_span: self.max_links_per_span.unwrap_or(base.max_links_per_span),
            max_concurrent_queries: self.max_concurrent_queries.unwrap_or(base.max_concurrent_queries),
            max_tenants_per_query: self.max_tenants_per_query.unwrap_or(base.max_tenants_per_query),
        })
    }
}

/// The limits: the file's `limits:` over the built-in defaults, and each tenant's
/// `tenants.<id>.limits:` over those.
pub fn limits_policy<'a>(
    default: Option<&LimitsFile>,
    tenants: impl Iterator<Item = (&'a String, Option<&'a LimitsFile>)>,
) -> anyhow::Result<LimitsPolicy> {
    let default = match default {
        Some(f) => f.over(&TenantLimits::default(), "limits")?,
        None => TenantLimits::default(),
    };
    let mut overrides = HashMap::new();
    for (tenant, file) in tenants {
        if let Some(file) = file {
            overrides.insert(tenant.clone(), file.over(&default, &format!("the limits of tenant {tenant}"))?);
        }
    }
    Ok(LimitsPolicy { default, tenants: overrides })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_sections_override_only_what_they_name() {
        let default: LimitsFile = serde_yaml::from_str("ingest_rate: 1MiB\nmax_concurrent_queries: 4\n").unwrap();
        let tenant: LimitsFile = serde_yaml::from_str("ingest_rate: 2KiB\n").unwrap();
        let name = "t".to_string();
        let p = limits_policy(Some(&default), [(&name, Some(&tenant))].into_iter()).unwrap();
        assert_eq!(p.default.ingest_rate_bytes, 1024 * 1024);
        assert_eq!(p.tenants["t"].ingest_rate_bytes, 2048);
        assert_eq!(p.tenants["t"].max_concurrent_queries, 4, "inherited from limits:");
        let off: LimitsFile = serde_yaml::from_str("ingest_rate: 0\n").unwrap();
        assert_eq!(limits_policy(Some(&off), std::iter::empty()).unwrap().default.ingest_rate_bytes, 0);
        let bad: LimitsFile = serde_yaml::from_str("ingest_rate: lots\n").unwrap();
        assert!(limits_policy(Some(&bad), std::iter::empty()).unwrap_err().to_string().contains("ingest_rate"));
        assert!(serde_yaml::from_str::<LimitsFile>("unknown: 1\n").is_err());
    }
}
