//! The fake API server's HTTP side: routes, list (with pagination and
//! selectors), get, watch (chunked JSON lines) and TokenReview create.

use super::state::{CollKey, Filter, State, WATCH_QUEUE, Watch, object_key, status, watch_line};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub(super) type Body = BoxBody<Bytes, Infallible>;
type Shared = Arc<Mutex<State>>;

/// Largest request body accepted (TokenReview).
const MAX_BODY: usize = 1 << 20;
/// Default page size when a list asks for none (no limit).
const DEFAULT_WATCH_TIMEOUT: u64 = 1800;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn error(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &status(code, reason, message),
    )
}

/// What a request path names.
struct Route {
    coll: CollKey,
    namespace: Option<String>,
    name: Option<String>,
}

fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        _ => return None,
    };
    Some(Route {
        coll: CollKey {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
        },
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
    })
}

pub(super) async fn handle(
    state: Shared,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let query: HashMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let Some(r) = route(&path) else {
        return Ok(error(
            404,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        ));
    };
    let failure = lock(&state).failures.get(&r.coll.plural).copied();
    if let Some(code) = failure.filter(|_| req.method() == Method::GET && r.name.is_none()) {
        let reason = match code {
            403 => "Forbidden",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            _ => "Failure",
        };
        let mut st = lock(&state);
        *st.stats.refused.entry(r.coll.plural.clone()).or_default() += 1;
        return Ok(error(
            code,
            reason,
            &format!("{} is failing on purpose (fake API server)", r.coll.plural),
        ));
    }
    let resp = match (req.method().clone(), r.name.is_some()) {
        (Method::POST, false) if r.coll.plural == "tokenreviews" => {
            match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(body) => token_review(&state, &body.to_bytes()),
                Err(e) => error(400, "BadRequest", &format!("reading body: {e}")),
            }
        }
        (Method::GET, true) => get(&state, &r),
        (Method::GET, false) if query.get("watch").map(String::as_str) == Some("true") => {
            watch(&state, &r, &query)
        }
        (Method::GET, false) => list(&state, &r, &query),
        (m, _) => error(
            405,
            "MethodNotAllowed",
            &format!("{m} {path} is not supported by the fake API server"),
        ),
    };
    Ok(resp)
}

fn filter(r: &Route, q: &HashMap<String, String>) -> Result<Filter, Box<Response<Body>>> {
    Filter::parse(
        r.namespace.clone(),
        q.get("fieldSelector").map(String::as_str),
        q.get("labelSelector").map(String::as_str),
    )
    .map_err(|e| Box::new(error(400, "BadRequest", &e)))
}

fn get(state: &Shared, r: &Route) -> Response<Body> {
    let mut st = lock(state);
    st.stats.gets += 1;
    let key = (
        r.namespace.clone().unwrap_or_default(),
        r.name.clone().unwrap_or_default(),
    );
    match st.colls.get(&r.coll).and_then(|c| c.objects.get(&key)) {
        Some(obj) => json_response(StatusCode::OK, obj),
        None => error(
            404,
            "NotFound",
            &format!("{} \"{}\" not found", r.coll.plural, key.1),
        ),
    }
}

fn list(state: &Shared, r: &Route, q: &HashMap<String, String>) -> Response<Body> {
    let f = match filter(r, q) {
        Ok(f) => f,
        Err(resp) => return *resp,
    };
    let limit: usize = match q.get("limit").map(|l| l.parse()) {
        None => usize::MAX,
        Some(Ok(0)) => usize::MAX,
        Some(Ok(n)) => n,
        Some(Err(_)) => return error(400, "BadRequest", "limit must be a number"),
    };
    let mut st = lock(state);
    *st.stats.lists.entry(r.coll.plural.clone()).or_default() += 1;
    // A continue token is "<list resourceVersion>:<namespace>/<name>" of
    // the last item returned.
    let (list_rv, after) = match q.get("continue").filter(|c| !c.is_empty()) {
        None => (st.rv, None),
        Some(token) => {
            let parsed = token
                .split_once(':')
                .and_then(|(rv, key)| Some((rv.parse::<u64>().ok()?, key.split_once('/')?)));
            match parsed {
                Some((rv, _)) if rv < st.compacted => {
                    return error(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    );
                }
                Some((rv, (ns, name))) => (rv, Some((ns.to_string(), name.to_string()))),
                None => return error(400, "BadRequest", "malformed continue token"),
            }
        }
    };
    let (kind, items, more) = match st.colls.get(&r.coll) {
        Some(c) => {
            let mut matching = c
                .objects
                .iter()
                .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
                .filter(|(_, o)| f.matches(o))
                .map(|(_, o)| o);
            let items: Vec<Value> = matching
                .by_ref()
                .take(limit)
                .map(|o| {
                    // List items carry no apiVersion/kind on the wire.
                    let mut o = o.clone();
                    if let Some(m) = o.as_object_mut() {
                        m.remove("apiVersion");
                        m.remove("kind");
                    }
                    o
                })
                .collect();
            let more = matching.next().is_some();
            (c.kind.clone(), items, more)
        }
        None => (String::new(), Vec::new(), false),
    };
    let mut metadata = json!({ "resourceVersion": list_rv.to_string() });
    if more && let Some(last) = items.last() {
        let (ns, name) = object_key(last);
        metadata["continue"] = json!(format!("{list_rv}:{ns}/{name}"));
    }
    json_response(
        StatusCode::OK,
        &json!({
            "apiVersion": r.coll.api_version(),
            "kind": format!("{kind}List"),
            "metadata": metadata,
            "items": items,
        }),
    )
}

fn watch(state: &Shared, r: &Route, q: &HashMap<String, String>) -> Response<Body> {
    let f = match filter(r, q) {
        Ok(f) => f,
        Err(resp) => return *resp,
    };
    let timeout = match q.get("timeoutSeconds").map(|t| t.parse::<u64>()) {
        None => DEFAULT_WATCH_TIMEOUT,
        Some(Ok(t)) => t,
        Some(Err(_)) => return error(400, "BadRequest", "timeoutSeconds must be a number"),
    };
    let from = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let from: Option<u64> = match from {
        "" | "0" => None,
        v => match v.parse() {
            Ok(v) => Some(v),
            Err(_) => return error(400, "BadRequest", &format!("invalid resourceVersion {v:?}")),
        },
    };
    let (tx, rx) = mpsc::channel::<Bytes>(WATCH_QUEUE);
    {
        let mut st = lock(state);
        *st.stats.watches.entry(r.coll.plural.clone()).or_default() += 1;
        let asked = q.get("resourceVersion").cloned().unwrap_or_default();
        st.stats.watch_from.push((r.coll.plural.clone(), asked));
        match from {
            Some(rv) if rv < st.compacted => {
                // The real server answers 200 and sends the error as an event.
                let gone = status(
                    410,
                    "Expired",
                    &format!("too old resource version: {rv} ({})", st.compacted),
                );
                let _ = tx.try_send(watch_line("ERROR", &gone));
                drop(tx);
                return stream_response(rx, timeout);
            }
            Some(rv) => {
                for ev in st.history.iter().filter(|e| e.rv > rv && e.coll == r.coll) {
                    if f.matches(&ev.object) {
                        let _ = tx.try_send(watch_line(ev.kind, &ev.object));
                    }
                }
            }
            None => {
                let kind = st
                    .colls
                    .get(&r.coll)
                    .map(|c| c.kind.clone())
                    .unwrap_or_default();
                if let Some(c) = st.colls.get(&r.coll) {
                    for o in c.objects.values().filter(|o| f.matches(o)) {
                        let _ = tx.try_send(watch_line("ADDED", o));
                    }
                }
                // Streaming lists: a bookmark marks the end of the initial state.
                if q.get("sendInitialEvents").map(String::as_str) == Some("true") {
                    let end = json!({
                        "kind": kind,
                        "apiVersion": r.coll.api_version(),
                        "metadata": {
                            "resourceVersion": st.rv.to_string(),
                            "annotations": { "k8s.io/initial-events-end": "true" },
                        },
                    });
                    let _ = tx.try_send(watch_line("BOOKMARK", &end));
                }
            }
        }
        st.watches.push(Watch {
            coll: r.coll.clone(),
            filter: f,
            bookmarks: q.get("allowWatchBookmarks").map(String::as_str) == Some("true"),
            tx,
        });
    }
    stream_response(rx, timeout)
}

fn stream_response(rx: mpsc::Receiver<Bytes>, timeout_secs: u64) -> Response<Body> {
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
        .take_until(tokio::time::sleep(Duration::from_secs(timeout_secs)))
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn token_review(state: &Shared, body: &[u8]) -> Response<Body> {
    use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus, UserInfo};
    let mut review: TokenReview = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return error(400, "BadRequest", &format!("TokenReview: {e}")),
    };
    let token = review.spec.token.clone();
    let wanted = review.spec.audiences.clone().unwrap_or_default();
    let mut st = lock(state);
    st.stats.token_reviews.push(super::TokenReviewSeen {
        token: token.clone(),
        audiences: wanted.clone(),
    });
    let status = match st.tokens.get(&token) {
        None => TokenReviewStatus {
            authenticated: Some(false),
            error: Some("invalid bearer token, token lookup failed".into()),
            ..Default::default()
        },
        Some(entry) if entry.audience_unaware => TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(Vec::new()),
            user: Some(UserInfo {
                username: Some(entry.username.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        Some(entry) => {
            let common: Vec<String> = if wanted.is_empty() {
                entry.audiences.clone()
            } else {
                wanted
                    .iter()
                    .filter(|a| entry.audiences.contains(a))
                    .cloned()
                    .collect()
            };
            if common.is_empty() {
                TokenReviewStatus {
                    authenticated: Some(false),
                    error: Some(format!(
                        "[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}]",
                        entry.audiences, wanted
                    )),
                    ..Default::default()
                }
            } else {
                TokenReviewStatus {
                    authenticated: Some(true),
                    audiences: Some(common),
                    user: Some(UserInfo {
                        username: Some(entry.username.clone()),
                        groups: Some(vec![
                            "system:serviceaccounts".into(),
                            "system:authenticated".into(),
                        ]),
                        extra: entry.pod.as_ref().map(|(name, uid)| {
                            [
                                (
                                    "authentication.kubernetes.io/pod-name".to_string(),
                                    vec![name.clone()],
                                ),
                                (
                                    "authentication.kubernetes.io/pod-uid".to_string(),
                                    vec![uid.clone()],
                                ),
                            ]
                            .into()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            }
        }
    };
    review.status = Some(status);
    match serde_json::to_value(&review) {
        Ok(v) => json_response(StatusCode::CREATED, &v),
        Err(e) => error(500, "InternalError", &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = route("/api/v1/namespaces/default/pods/web-0").unwrap();
        assert_eq!(r.coll.plural, "pods");
        assert_eq!(r.namespace.as_deref(), Some("default"));
        assert_eq!(r.name.as_deref(), Some("web-0"));
        let r = route("/apis/discovery.k8s.io/v1/endpointslices").unwrap();
        assert_eq!(r.coll.group, "discovery.k8s.io");
        assert!(r.namespace.is_none() && r.name.is_none());
        assert!(route("/healthz").is_none());
    }
}
