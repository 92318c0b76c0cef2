//! How a `conduit_response_total` series is read, the same way by the
//! node agent's `stat` and `top` and by the benchmarks' and tests' reports.

/// Whether a response series counts failures: by its `classification`
/// label (`failure`: a 5xx, or a gRPC status other than OK, which travels
/// in an HTTP 200), or for a series without that label (a proxy from
/// before it), by its status class (`5xx`, or `error` for a proxy error
/// in the oldest proxies). `None` is a label the series does not carry.
pub fn failed(classification: Option<&str>, status_class: Option<&str>) -> bool {
    match classification {
        Some(c) => c == "failure",
        None => matches!(status_class, Some("5xx" | "error")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_by_classification_else_status_class() {
        // (classification, status class, failed)
        let cases = [
            (Some("success"), Some("2xx"), false),
            // A gRPC error travels in an HTTP 200.
            (Some("failure"), Some("2xx"), true),
            (Some("failure"), Some("5xx"), true),
            (Some("success"), Some("4xx"), false),
            (Some("success"), Some("5xx"), false),
            (None, Some("5xx"), true),
            (None, Some("error"), true),
            (None, Some("2xx"), false),
            (None, None, false),
        ];
        for (class, status, want) in cases {
            assert_eq!(failed(class, status), want, "{class:?} {status:?}");
        }
    }
}
