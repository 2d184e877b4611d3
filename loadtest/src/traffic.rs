//! Deterministic, realistic trace traffic: requests that cross several services, with
//! semantic-convention attributes, log-normal latencies, errors, exception events and links.

use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};

/// A small, fast, seedable PRNG (SplitMix64): the same seed gives the same traffic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-normal with median `median` and shape `sigma`.
    pub fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        let (u1, u2) = (self.unit().max(1e-12), self.unit());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        median * (sigma * z).exp()
    }
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn s(v: impl Into<String>) -> Value {
    Value::StringValue(v.into())
}

/// One simulated service.
#[derive(Debug, Clone)]
pub struct Service {
    name: String,
    resource: Resource,
    scope: InstrumentationScope,
}

const ROUTES: [&str; 8] = [
    "/api/cart",
    "/api/checkout",
    "/api/products/{id}",
    "/api/users/{id}",
    "/api/search",
    "/api/orders",
    "/health",
    "/api/recommendations",
];
const TABLES: [&str; 5] = ["orders", "users", "products", "payments", "inventory"];

impl Service {
    /// Service number `i` of the fleet.
    pub fn new(i: usize) -> Self {
        let name = format!("svc-{i:03}");
        let resource = Resource {
            attributes: vec![
                kv("service.name", s(&name)),
                kv("service.namespace", s(format!("team-{}", i % 12))),
                kv("service.version", s(format!("1.{}.{}", i % 7, i % 13))),
                kv("deployment.environment", s("production")),
                kv("k8s.cluster.name", s("prod-eu-1")),
                kv("k8s.namespace.name", s(format!("ns-{}", i % 12))),
                kv("k8s.deployment.name", s(&name)),
                kv("k8s.pod.name", s(format!("{name}-7d9f8b-{:05x}", i * 7919 % 65536))),
                kv("host.name", s(format!("node-{}", i % 40))),
                kv("telemetry.sdk.language", s(["go", "java", "python", "nodejs"][i % 4])),
                kv("telemetry.sdk.name", s("opentelemetry")),
            ],
            ..Default::default()
        };
        let scope = InstrumentationScope {
            name: "io.opentelemetry.auto".into(),
            version: "2.9.0".into(),
            ..Default::default()
        };
        Self { name, resource, scope }
    }
}

/// Generates traces over a fleet of services.
pub struct Traffic {
    services: Vec<Service>,
    rng: Rng,
    error_ratio: f64,
    now_ns: u64,
}

impl Traffic {
    /// A generator over `services` services.
    pub fn new(services: usize, seed: u64, error_ratio: f64) -> Self {
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self { services: (0..services.max(1)).map(Service::new).collect(), rng: Rng::new(seed), error_ratio, now_ns }
    }

    /// One export request of about `spans` spans (whole traces), grouped by service.
    pub fn request(&mut self, spans: usize) -> Vec<ResourceSpans> {
        let mut by_service: Vec<Vec<Span>> = vec![Vec::new(); self.services.len()];
        let mut n = 0;
        while n < spans {
            n += self.trace(&mut by_service);
        }
        by_service
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(i, spans)| ResourceSpans {
                resource: Some(self.services[i].resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(self.services[i].scope.clone()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect()
    }

    /// Adds one trace; returns its span count.
    fn trace(&mut self, out: &mut [Vec<Span>]) -> usize {
        let r = &mut self.rng;
        let trace_id = [r.next_u64().to_be_bytes(), r.next_u64().to_be_bytes()].concat();
        let start = self.now_ns + r.below(1_000_000_000);
        self.now_ns += 20_000;
        let error = r.unit() < self.error_ratio;
        let user = format!("user-{}", r.below(1_000_000));
        let order = format!("order-{:08x}", r.below(1 << 32));
        let entry = r.below(self.services.len() as u64) as usize;
        let route = ROUTES[r.below(ROUTES.len() as u64) as usize];
        // Log-normal latencies, with one request in a hundred ten times slower.
        let slow = if r.unit() < 0.01 { 10.0 } else { 1.0 };
        let total = ((r.lognormal(40e6, 0.8) * slow) as u64).max(2_000_000);
        let mut count = 0;
        let root_id = r.next_u64().to_be_bytes().to_vec();
        let status_code = if error { 500 } else { 200 };
        let mut root = self.span(&trace_id, root_id.clone(), vec![], format!("GET {route}"), 2, start, total, error);
        root.attributes.extend([
            kv("http.request.method", s("GET")),
            kv("http.route", s(route)),
            kv("url.full", s(format!("https://shop.example.com{route}?q={}", self.rng.below(1000)))),
            kv("http.response.status_code", Value::IntValue(status_code)),
            kv("user.id", s(&user)),
            kv("order.id", s(&order)),
            kv(
                "client.address",
                s(format!("10.{}.{}.{}", self.rng.below(255), self.rng.below(255), self.rng.below(255))),
            ),
        ]);
        out[entry].push(root);
        count += 1;
        // Downstream calls: 2-6 hops through other services, each a client span plus a server span.
        let hops = 2 + self.rng.below(5) as usize;
        let mut t = start + total / 20;
        for h in 0..hops {
            let callee = self.rng.below(self.services.len() as u64) as usize;
            let d = (total / (hops as u64 + 2)).max(1_000_000);
            let client_id = self.rng.next_u64().to_be_bytes().to_vec();
            let server_id = self.rng.next_u64().to_be_bytes().to_vec();
            let method = ["GetCart", "Charge", "Reserve", "Lookup", "Score"][h % 5];
            let svc_name = self.services[callee].name.clone();
            let mut client = self.span(
                &trace_id,
                client_id.clone(),
                root_id.clone(),
                format!("{svc_name}/{method}"),
                3,
                t,
                d,
                false,
            );
            client.attributes.extend([
                kv("rpc.system", s("grpc")),
                kv("rpc.service", s(&svc_name)),
                kv("rpc.method", s(method)),
                kv("peer.service", s(&svc_name)),
            ]);
            out[entry].push(client);
            let fail_here = error && h == hops - 1;
            let mut server = self.span(
                &trace_id,
                server_id.clone(),
                client_id,
                format!("{svc_name}/{method}"),
                2,
                t + 200_000,
                d - 400_000,
                fail_here,
            );
            server.attributes.extend([
                kv("rpc.system", s("grpc")),
                kv("rpc.method", s(method)),
                kv("rpc.grpc.status_code", Value::IntValue(if fail_here { 13 } else { 0 })),
            ]);
            if fail_here {
                server.events.push(span::Event {
                    time_unix_nano: t + d / 2,
                    name: "exception".into(),
                    attributes: vec![
                        kv("exception.type", s("PaymentDeclined")),
                        kv("exception.message", s(format!("card declined for {order}"))),
                    ],
                    dropped_attributes_count: 0,
                });
            }
            out[callee].push(server);
            count += 2;
            if self.rng.unit() < 0.5 {
                let internal_id = self.rng.next_u64().to_be_bytes().to_vec();
                let mut internal = self.span(
                    &trace_id,
                    internal_id,
                    server_id.clone(),
                    format!("{method} validate"),
                    1,
                    t + 250_000,
                    d / 10,
                    false,
                );
                internal.attributes.push(kv("code.function", s(format!("validate_{}", method.to_lowercase()))));
                out[callee].push(internal);
                count += 1;
            }
            // Most servers hit a database or a queue.
            let dep_id = self.rng.next_u64().to_be_bytes().to_vec();
            if self.rng.unit() < 0.7 {
                let table = TABLES[self.rng.below(TABLES.len() as u64) as usize];
                let db_d = (self.rng.lognormal(3e6, 1.0) as u64).clamp(100_000, d / 2);
                let mut db =
                    self.span(&trace_id, dep_id, server_id, format!("SELECT {table}"), 3, t + 300_000, db_d, false);
                db.attributes.extend([
                    kv("db.system", s("postgresql")),
                    kv("db.name", s("shop")),
                    kv("db.operation", s("SELECT")),
                    kv("db.statement", s(format!("SELECT * FROM {table} WHERE id = $1"))),
                ]);
                out[callee].push(db);
            } else {
                let dep_id_for_consumer = dep_id.clone();
                let mut produce =
                    self.span(&trace_id, dep_id, server_id, "orders publish".into(), 4, t + 300_000, 500_000, false);
                produce
                    .attributes
                    .extend([kv("messaging.system", s("kafka")), kv("messaging.destination.name", s("orders"))]);
                if self.rng.unit() < 0.3 {
                    let linked = [self.rng.next_u64().to_be_bytes(), self.rng.next_u64().to_be_bytes()].concat();
                    produce.links.push(span::Link {
                        trace_id: linked,
                        span_id: self.rng.next_u64().to_be_bytes().to_vec(),
                        ..Default::default()
                    });
                }
                out[callee].push(produce);
                // Another service consumes the message later, as a child of the producer span.
                let consumer_svc = self.rng.below(self.services.len() as u64) as usize;
                let consumer_id = self.rng.next_u64().to_be_bytes().to_vec();
                let lag = (self.rng.lognormal(5e6, 0.7) as u64).max(100_000);
                let mut consume = self.span(
                    &trace_id,
                    consumer_id,
                    dep_id_for_consumer,
                    "orders process".into(),
                    5,
                    t + 800_000 + lag,
                    2_000_000,
                    false,
                );
                consume.attributes.extend([
                    kv("messaging.system", s("kafka")),
                    kv("messaging.operation", s("process")),
                    kv("messaging.destination.name", s("orders")),
                    kv("messaging.kafka.partition", Value::IntValue(self.rng.below(12) as i64)),
                ]);
                out[consumer_svc].push(consume);
                count += 1;
            }
            count += 1;
            t += d;
        }
        count
    }

    #[allow(clippy::too_many_arguments)]
    fn span(
        &mut self,
        trace_id: &[u8],
        id: Vec<u8>,
        parent: Vec<u8>,
        name: String,
        kind: i32,
        start: u64,
        duration: u64,
        error: bool,
    ) -> Span {
        Span {
            trace_id: trace_id.to_vec(),
            span_id: id,
            parent_span_id: parent,
            flags: 0x301,
            name,
            kind,
            start_time_unix_nano: start,
            end_time_unix_nano: start + duration,
            status: Some(if error { Status { message: "internal error".into(), code: 2 } } else { Status::default() }),
            ..Default::default()
        }
    }
}
