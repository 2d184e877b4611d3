//! Prometheus remote write 1.0: the collected samples as one `WriteRequest` (protobuf, snappy),
//! with exemplars carrying the trace id as `traceID`.

use std::time::Duration;

use prost::Message;
use spindle_proto::prometheus::{Exemplar, Label, Sample as PromSample, TimeSeries, WriteRequest};

use crate::series::MetricFamily;
use crate::settings::RemoteWriteTarget;
use crate::GeneratorError;

/// Builds the request body (before compression) for `families` sampled at `timestamp_ms`.
pub fn write_request(families: &[MetricFamily], timestamp_ms: i64) -> WriteRequest {
    let mut timeseries = Vec::new();
    for f in families {
        for s in &f.samples {
            let mut labels: Vec<Label> = Vec::with_capacity(s.labels.len() + 1);
            labels.push(Label { name: "__name__".into(), value: s.name.clone() });
            // An empty label is no label in Prometheus; sending one confuses its exemplar lookup.
            labels.extend(
                s.labels
                    .iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| Label { name: k.clone(), value: v.clone() }),
            );
            labels.sort_by(|a, b| a.name.cmp(&b.name));
            let exemplars = s
                .exemplar
                .iter()
                .map(|e| Exemplar {
                    labels: vec![Label { name: "traceID".into(), value: hex::encode(e.trace_id) }],
                    value: e.value,
                    timestamp: e.timestamp_ms,
                })
                .collect();
            timeseries.push(TimeSeries {
                labels,
                samples: vec![PromSample { value: s.value, timestamp: timestamp_ms }],
                exemplars,
            });
        }
    }
    WriteRequest { timeseries }
}

/// Sends remote-write requests.
#[derive(Clone)]
pub struct RemoteWriter {
    client: reqwest::Client,
}

impl RemoteWriter {
    /// A writer whose requests give up after `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, GeneratorError> {
        let client = reqwest::Client::builder().timeout(timeout).build().map_err(GeneratorError::RemoteWrite)?;
        Ok(Self { client })
    }

    /// Posts `request` to `target` for `tenant`; returns the number of samples sent.
    pub async fn send(
        &self,
        target: &RemoteWriteTarget,
        tenant: &str,
        request: &WriteRequest,
    ) -> Result<u64, GeneratorError> {
        let body = snap::raw::Encoder::new().compress_vec(&request.encode_to_vec()).map_err(GeneratorError::Snappy)?;
        let mut post = self
            .client
            .post(&target.url)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("User-Agent", "spindle-generator")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0");
        for (k, v) in &target.headers {
            post = post.header(k, v);
        }
        if target.send_tenant_header {
            post = post.header("X-Scope-OrgID", tenant);
        }
        let response = post.body(body).send().await.map_err(GeneratorError::RemoteWrite)?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(GeneratorError::RemoteWriteRefused {
                url: target.url.clone(),
                status: status.as_u16(),
                body: text.chars().take(300).collect(),
            });
        }
        Ok(request.timeseries.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::{Exemplar as Ex, MetricKind};

    #[test]
    fn labels_sorted_with_name_and_exemplar_trace_id() {
        let mut f = MetricFamily::new("traces_spanmetrics_calls_total", MetricKind::Counter, "");
        f.push(
            vec![("service".into(), "a".into()), ("span_name".into(), "b".into()), ("http_method".into(), "".into())],
            3.0,
            Some(Ex { trace_id: [0xab; 16], value: 1.0, timestamp_ms: 7 }),
        );
        let r = write_request(&[f], 1000);
        let ts = &r.timeseries[0];
        let names: Vec<_> = ts.labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["__name__", "service", "span_name"]);
        assert_eq!(ts.samples[0], PromSample { value: 3.0, timestamp: 1000 });
        assert_eq!(ts.exemplars[0].labels[0].value, "ab".repeat(16));
        let body = snap::raw::Encoder::new().compress_vec(&r.encode_to_vec()).unwrap();
        let back = WriteRequest::decode(&snap::raw::Decoder::new().decompress_vec(&body).unwrap()[..]).unwrap();
        assert_eq!(back, r);
    }
}
