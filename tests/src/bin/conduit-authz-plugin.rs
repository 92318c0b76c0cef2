//! An example authorization plugin (`conduit.authz.v1.AuthorizationPlugin`,
//! docs/plugins.md): allows a request that carries a header with a given
//! value, or any request inside a daily time window (UTC), and then adds a
//! header for the application; refuses the rest with a status and a body.
//!
//!     conduit-authz-plugin --listen 0.0.0.0:9191 --allow-header x-allow=yes \
//!         --window 08:00-18:00 --add-header x-authorized-by=example-plugin

use anyhow::{Context, Result, bail};
use clap::Parser;
use conduit_controller_api::authz::v1 as pb;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "conduit-authz-plugin",
    about = "Example conduit authorization plugin"
)]
struct Args {
    /// gRPC address to serve on.
    #[arg(long, default_value = "127.0.0.1:9191")]
    listen: SocketAddr,
    /// `name=value`: requests with this header are allowed.
    #[arg(long, value_parser = header_pair)]
    allow_header: Option<(String, String)>,
    /// `HH:MM-HH:MM` (UTC): requests in this daily window are allowed
    /// (equal bounds: all day).
    #[arg(long, value_parser = window)]
    window: Option<(u32, u32)>,
    /// `name=value` added to allowed requests.
    #[arg(long, value_parser = header_pair)]
    add_header: Option<(String, String)>,
    /// HTTP status of refusals.
    #[arg(long, default_value_t = 403)]
    deny_status: u32,
    /// Print nothing per request (benchmarks).
    #[arg(long)]
    quiet: bool,
    /// Wait this long before answering (to try a proxy's timeout).
    #[arg(long, value_parser = millis, default_value = "0")]
    delay_ms: Duration,
}

fn header_pair(s: &str) -> Result<(String, String), String> {
    let (n, v) = s.split_once('=').ok_or("expected name=value")?;
    if n.is_empty() {
        return Err("empty header name".into());
    }
    Ok((n.to_ascii_lowercase(), v.to_owned()))
}

fn minute(s: &str) -> Result<u32, String> {
    let (h, m) = s.split_once(':').ok_or("expected HH:MM")?;
    let (h, m): (u32, u32) = (
        h.parse().map_err(|_| "bad hour")?,
        m.parse().map_err(|_| "bad minute")?,
    );
    if h > 23 || m > 59 {
        return Err(format!("{s} is not a time of day"));
    }
    Ok(h * 60 + m)
}

fn window(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s.split_once('-').ok_or("expected HH:MM-HH:MM")?;
    Ok((minute(a)?, minute(b)?))
}

fn millis(s: &str) -> Result<Duration, String> {
    s.parse()
        .map(Duration::from_millis)
        .map_err(|_| format!("{s:?} is not a number of milliseconds"))
}

/// Whether `now` (minute of the UTC day) is inside `[from, to)`, across
/// midnight too; equal bounds are the whole day.
fn in_window((from, to): (u32, u32), now: u32) -> bool {
    if from == to {
        true
    } else if from < to {
        (from..to).contains(&now)
    } else {
        now >= from || now < to
    }
}

/// The decision for one request: pure, so it is tested below.
fn decide(args: &Args, r: &pb::CheckRequest, now_minute: u32) -> pb::check_response::Decision {
    let by_header = args
        .allow_header
        .as_ref()
        .is_some_and(|(n, v)| r.headers.get(n) == Some(v));
    let by_time = args.window.is_some_and(|w| in_window(w, now_minute));
    if by_header || by_time {
        let add_headers = args
            .add_header
            .iter()
            .map(|(n, v)| pb::Header {
                name: n.clone(),
                value: v.clone(),
            })
            .collect();
        return pb::check_response::Decision::Allow(pb::Allow {
            add_headers,
            remove_headers: vec![],
        });
    }
    pb::check_response::Decision::Deny(pb::Deny {
        status: args.deny_status,
        body: format!(
            "denied by conduit-authz-plugin: {} {} from {}\n",
            r.method,
            r.path,
            if r.peer_identity.is_empty() {
                "an unauthenticated client"
            } else {
                &r.peer_identity
            }
        ),
        headers: vec![],
    })
}

struct Plugin(Args);

#[tonic::async_trait]
impl pb::authorization_plugin_server::AuthorizationPlugin for Plugin {
    async fn check(
        &self,
        req: tonic::Request<pb::CheckRequest>,
    ) -> Result<tonic::Response<pb::CheckResponse>, tonic::Status> {
        if !self.0.delay_ms.is_zero() {
            tokio::time::sleep(self.0.delay_ms).await;
        }
        let r = req.into_inner();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| ((d.as_secs() / 60) % (24 * 60)) as u32)
            .unwrap_or(0);
        let decision = decide(&self.0, &r, now);
        let verdict = match &decision {
            pb::check_response::Decision::Allow(_) => "allow",
            pb::check_response::Decision::Deny(_) => "deny",
        };
        println!(
            "{verdict} {} {} peer={:?}",
            r.method, r.path, r.peer_identity
        );
        Ok(tonic::Response::new(pb::CheckResponse {
            decision: Some(decision),
        }))
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.allow_header.is_none() && args.window.is_none() {
        bail!("give --allow-header and/or --window: otherwise every request is refused");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("listening on {}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(pb::authorization_plugin_server::AuthorizationPluginServer::new(Plugin(args)))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
        .context("serving")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let args = Args::parse_from([
            "p",
            "--allow-header",
            "X-Allow=yes",
            "--window",
            "22:00-02:00",
            "--add-header",
            "x-by=plugin",
        ]);
        let req = |h: &[(&str, &str)]| pb::CheckRequest {
            method: "GET".into(),
            path: "/api".into(),
            headers: h
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let allowed = |d: pb::check_response::Decision| matches!(d, pb::check_response::Decision::Allow(a) if a.add_headers[0].name == "x-by");
        assert!(allowed(decide(&args, &req(&[("x-allow", "yes")]), 12 * 60)));
        assert!(!allowed(decide(&args, &req(&[("x-allow", "no")]), 12 * 60)));
        assert!(allowed(decide(&args, &req(&[]), 23 * 60)));
        assert!(allowed(decide(&args, &req(&[]), 60)));
        assert!(!allowed(decide(&args, &req(&[]), 2 * 60)));
        assert!(in_window((0, 0), 23 * 60 + 59));
        assert!(window("25:00-01:00").is_err());
        assert!(header_pair("=x").is_err());
    }
}
