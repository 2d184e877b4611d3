//! An MCP (Model Context Protocol) server at `/api/mcp`, Streamable HTTP (`rmcp`), so
//! assistants query traces the way they query Tempo 3: Tempo's tools with Tempo's names and
//! arguments (`traceql-search`, `traceql-metrics-instant`, `traceql-metrics-range`, `get-trace`,
//! `get-attribute-names`, `get-attribute-values`, `docs-traceql`) and Spindle's own (`sql`,
//! `service-graph`, `critical-path`, `trace-errors`).
//!
//! Each tool calls the querier's own HTTP API in process with the caller's tenants (the API-key
//! middleware has already replaced `X-Scope-OrgID` with them), so tools obey the same
//! validation, limits and tenant slots as the HTTP API; answers are the API's JSON (or a summary
//! of it), cut to a size a model can read with a note saying so. Stateless: no session is kept
//! between requests.

mod analysis;
mod tools;

use std::sync::Arc;

use axum::http::request::Parts;
use axum::Router;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, InitializeResult, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, ServerHandler};

/// Largest MCP request body.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// The MCP server: tools over the querier's HTTP API.
#[derive(Clone)]
pub struct SpindleMcp {
    /// The querier's routes (behind its tenant slots), called in process.
    api: Router,
}

impl ServerHandler for SpindleMcp {
    fn get_info(&self) -> ServerConfig {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("spindle", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Spindle stores OpenTelemetry traces. Find traces with traceql-search (docs-traceql explains \
                 TraceQL), chart them with traceql-metrics-range, read one with get-trace, critical-path or \
                 trace-errors, discover attributes with get-attribute-names and get-attribute-values, see which \
                 services call which with service-graph, and ask anything else in SQL over the table `spans`.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools::list()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let tenant = context
            .extensions
            .get::<Parts>()
            .and_then(|parts| parts.headers.get(spindle_auth::http::TENANT_HEADER))
            .cloned();
        let arguments = request.arguments.unwrap_or_default();
        Ok(tools::call(&self.api, tenant, &request.name, &arguments).await.into())
    }
}

/// The `/api/mcp` service over `api`. `any_host`: accept any `Host` (the server listens beyond
/// loopback, behind API keys); otherwise only loopback names, against DNS rebinding.
pub fn service(api: Router, any_host: bool) -> StreamableHttpService<SpindleMcp, LocalSessionManager> {
    let mut config = StreamableHttpServerConfig::default();
    config.legacy_session_mode = false;
    config.json_response = true;
    config.max_request_body_bytes = MAX_REQUEST_BYTES;
    if any_host {
        config = config.disable_allowed_hosts();
    }
    let handler = SpindleMcp { api };
    StreamableHttpService::new(move || Ok(handler.clone()), Arc::new(LocalSessionManager::default()), config)
}
