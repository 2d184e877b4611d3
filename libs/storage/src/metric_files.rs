//! Where generated metric samples are stored: `<tenant>/metrics/<first>-<last>-<writer>.parquet`
//! (first and last sample times in unix ms), so retention can drop whole files by name.

use object_store::path::Path;

use crate::TenantId;

/// The folder of a tenant's metric sample files.
pub fn metrics_dir(tenant: &TenantId) -> Path {
    Path::from(format!("{}/metrics", tenant.as_str()))
}

/// The file holding samples from `first_ms` to `last_ms` written by `writer`.
pub fn metrics_file_path(tenant: &TenantId, first_ms: i64, last_ms: i64, writer: &str) -> Path {
    Path::from(format!("{}/{first_ms:020}-{last_ms:020}-{writer}.parquet", metrics_dir(tenant)))
}

/// The time of the newest sample in a metric file, from its name.
pub fn metrics_file_last_ms(file_name: &str) -> Option<i64> {
    let stem = file_name.strip_suffix(".parquet")?;
    let mut parts = stem.splitn(3, '-');
    let _first = parts.next()?.parse::<i64>().ok()?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let t = TenantId::new("acme").unwrap();
        let p = metrics_file_path(&t, 5, 1_700_000_000_000, "w1");
        assert_eq!(p.as_ref(), "acme/metrics/00000000000000000005-00000001700000000000-w1.parquet");
        assert_eq!(metrics_file_last_ms(p.filename().unwrap()), Some(1_700_000_000_000));
        assert_eq!(metrics_file_last_ms("x.parquet"), None);
    }
}
