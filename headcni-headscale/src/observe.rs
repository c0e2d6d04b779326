//! Per-request observation of the control-plane clients, for metrics by endpoint.

use std::sync::Arc;

/// Called once per HTTP request a client makes, with a low-cardinality endpoint label
/// ([`endpoint_label`]: `"<client> <METHOD> <path template>"`) and whether it succeeded.
/// Must be cheap and must not block (it runs on the request's task).
#[derive(Clone)]
pub struct RequestObserver(Arc<ObserveFn>);

/// The callback behind a [`RequestObserver`]: `(endpoint_label, ok)`.
pub type ObserveFn = dyn Fn(&str, bool) + Send + Sync;

impl RequestObserver {
    /// Wraps a callback `f(endpoint_label, ok)`.
    pub fn new(f: impl Fn(&str, bool) + Send + Sync + 'static) -> Self {
        RequestObserver(Arc::new(f))
    }

    /// Reports one request.
    pub fn observe(&self, endpoint: &str, ok: bool) {
        (self.0)(endpoint, ok)
    }
}

impl std::fmt::Debug for RequestObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestObserver")
    }
}

/// The label of a request: numeric path segments become `{id}` and the query is dropped, so
/// that one label stands for one API operation, e.g.
/// `endpoint_label("headscale", "POST", "api/v1/node/5/approve_routes")` is
/// `"headscale POST /api/v1/node/{id}/approve_routes"`.
pub fn endpoint_label(client: &str, method: &str, path: &str) -> String {
    let path = path.split('?').next().unwrap_or("");
    let templated: Vec<&str> = path
        .trim_start_matches('/')
        .split('/')
        .map(|seg| {
            if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
                "{id}"
            } else {
                seg
            }
        })
        .collect();
    format!("{client} {method} /{}", templated.join("/"))
}

#[cfg(test)]
mod tests {
    use super::endpoint_label;

    #[test]
    fn labels_are_templated() {
        assert_eq!(
            endpoint_label("headscale", "POST", "api/v1/node/5/approve_routes"),
            "headscale POST /api/v1/node/{id}/approve_routes"
        );
        assert_eq!(
            endpoint_label("localapi", "GET", "/localapi/v0/status?peers=false"),
            "localapi GET /localapi/v0/status"
        );
        assert_eq!(
            endpoint_label("headscale", "GET", "api/v1/routes/12/enable"),
            "headscale GET /api/v1/routes/{id}/enable"
        );
    }
}
